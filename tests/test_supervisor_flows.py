"""The supervisor starts a GPU worker's flow process only when the worker says its flows run on host cores."""

from __future__ import annotations

import pytest

from services.supervisor import Child, Supervisor, SupervisorError
from shared.settings import load_settings


@pytest.fixture
def supervisor(monkeypatch):
    sup = Supervisor(load_settings(None, env={}, overrides={"model.device": "cpu"}))
    sup.spawned = []

    def spawn(child: Child) -> None:  # bookkeeping only: no process
        sup.spawned.append(child.name)
        sup.children[child.name] = child

    monkeypatch.setattr(sup, "_spawn", spawn)
    return sup


def worker_says(sup: Supervisor, detail: str, worker: int = 0) -> None:
    sup._note_flow_backend(Child("gpu" if worker == 0 else f"gpu-{worker}", "services.gpu", [], worker=worker, detail=detail))


def test_flows_on_the_device_start_no_flow_process(supervisor):
    worker_says(supervisor, "flows=torch")
    assert supervisor.spawned == [] and not supervisor.host_flows(0) and supervisor.flows_ready


def test_host_flows_start_one_flow_process_and_wait_for_it(supervisor):
    worker_says(supervisor, "flows=opencv")
    worker_says(supervisor, "device=cpu flows=opencv")  # the READY heartbeat says it again: no second process
    assert supervisor.spawned == ["flow"] and supervisor.host_flows(0)
    assert not supervisor.flows_ready  # started, not yet up
    supervisor.children["flow"].state = "ready"
    assert supervisor.flows_ready


def test_a_worker_that_has_not_said_is_assumed_to_need_host_flows(supervisor):
    worker_says(supervisor, "device=cpu")  # no flows= yet: nothing decided, nothing started
    assert supervisor.spawned == [] and supervisor.host_flows(0) and supervisor.flows_ready


def test_a_flow_process_that_never_comes_up_is_named(supervisor, monkeypatch):
    worker_says(supervisor, "flows=opencv")
    supervisor.ready_workers.add(0)
    monkeypatch.setattr(supervisor, "step", lambda timeout: None)
    with pytest.raises(SupervisorError, match=r"the flow process was not ready after 0 s \(see .*flow\.log\)"):
        supervisor.wait_ready(timeout_s=0.01)


def test_a_crash_loop_message_quotes_the_last_exception_of_the_child_log(tmp_path):
    from services.supervisor import last_error

    log = tmp_path / "gpu.log"
    log.write_text("2026 gpu INFO models loaded\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "    raise TypeError(\nTypeError: cannot assign 'X' as child module 'unet_fn'\n")
    assert last_error(log) == "TypeError: cannot assign 'X' as child module 'unet_fn'; "
    (tmp_path / "clean.log").write_text("2026 gpu INFO models loaded\n")
    assert last_error(tmp_path / "clean.log") == "" and last_error(tmp_path / "missing.log") == ""
