"""Runtime: run records, liveness that survives pid reuse, and cleanup after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared.ring import Ring
from shared.runtime import (
    Run,
    RuntimeDirError,
    alive_run_ids,
    check_run_id,
    cleanup_stale,
    finish_run,
    new_run_id,
    process_alive,
    process_start_ticks,
    start_run,
)

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sc-"))
    yield path / "rt"
    shutil.rmtree(path)


def test_run_ids() -> None:
    a, b = new_run_id(), new_run_id()
    assert a != b and check_run_id(a) == a and len(a) == 12
    with pytest.raises(ValueError, match="is not a run id"):
        check_run_id("../etc")


def test_start_run_layout_and_env(runtime_dir: Path) -> None:
    run = start_run(runtime_dir)
    for d in (runtime_dir, runtime_dir / "runs", run.dir, run.metrics_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    record = json.loads((run.dir / "run.json").read_text())
    assert record["pid"] == os.getpid() and record["start_ticks"] == process_start_ticks(os.getpid())
    env = run.env()
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(run.metrics_dir)
    assert Run.from_env(env) == run
    assert alive_run_ids(runtime_dir) == {run.run_id}
    with pytest.raises(RuntimeDirError, match="already exists"):
        start_run(runtime_dir, run.run_id)
    with pytest.raises(RuntimeDirError, match="STYLECAST_RUN_ID, STYLECAST_RUNTIME_DIR unset"):
        Run.from_env({})
    finish_run(run)
    assert not run.dir.exists() and alive_run_ids(runtime_dir) == set()


def test_liveness_checks_start_time() -> None:
    me = os.getpid()
    assert process_alive(me) and process_alive(me, process_start_ticks(me))
    assert not process_alive(me, process_start_ticks(me) + 1)  # same pid, another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid) and process_start_ticks(child.pid) is None
    assert not process_alive(0)


CRASHING_SUPERVISOR = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import numpy as np
from multiprocessing import resource_tracker
from shared.runtime import start_run
from shared.ring import Ring
run = start_run({runtime_dir!r})
ring = Ring.create(run.run_id, "cam", "in", slots=2, shape=(4, 4, 3), dtype=np.uint8)
resource_tracker.unregister("/" + ring.name, "shared_memory")  # its tracker dies with it under kill -9 of the group
print(run.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_cleanup_after_kill_9(runtime_dir: Path) -> None:
    live = start_run(runtime_dir)
    live_ring = Ring.create(live.run_id, "cam", "in", slots=2, shape=(4,), dtype=np.uint8)
    try:
        done = subprocess.run(
            [sys.executable, "-c", CRASHING_SUPERVISOR.format(repo=str(REPO), runtime_dir=str(runtime_dir))],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == -9, done.stderr
        dead_id = done.stdout.strip()
        segment = SHM / f"stylecast-{dead_id}-cam-in"
        assert (runtime_dir / "runs" / dead_id).is_dir()

        report = cleanup_stale(runtime_dir)
        assert report.runs == [dead_id]
        # Another test session's cleanup may remove a dead segment first: either way it must be gone.
        assert segment.name in report.segments or not segment.exists()
        assert not segment.exists()
        assert not (runtime_dir / "runs" / dead_id).exists()
        # The live run is untouched.
        assert (SHM / live_ring.name).exists() and live.dir.is_dir()
        assert cleanup_stale(runtime_dir).runs == []
    finally:
        live_ring.unlink()
        finish_run(live)
