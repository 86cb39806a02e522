"""Bus: private runtime dir, endpoints, message round trips; bad input is counted, never fatal."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from shared.bus import ENDPOINTS, Bus, BusError, endpoint, ensure_runtime_dir, wait_readable
from shared.metrics import get_metrics
from shared.protocol import Ack, Frame, Heartbeat, SetPrompt, Stop, encode, now
from shared.runtime import Run, RuntimeDirError, finish_run, start_run
from shared.settings import ServiceSettings


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short, under /tmp: Unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="sc-"))
    yield path / "rt"
    shutil.rmtree(path)


@pytest.fixture
def run(runtime_dir: Path) -> Iterator[Run]:
    r = start_run(runtime_dir)
    yield r
    finish_run(r)


def service(runtime_dir: Path, **kw: object) -> ServiceSettings:
    return ServiceSettings(runtime_dir=runtime_dir, bus_linger_ms=0, **kw)


@pytest.fixture
def buses(run: Run) -> Iterator[list[Bus]]:
    made: list[Bus] = []
    yield made
    for bus in made:
        bus.close(linger_ms=0)


def make_bus(buses: list[Bus], run: Run, process: str, **kw: object) -> Bus:
    bus = Bus(service(run.runtime_dir, **kw), run, process=process)
    buses.append(bus)
    return bus


def frame(seq: int, stream: str = "cam") -> Frame:
    return Frame(stream=stream, seq=seq, slot=seq % 4, generation=2, t_capture=now(), t_ingest=now())


# ---- runtime dir --------------------------------------------------------------------------------------


def test_runtime_dir_is_created_private_and_verified(runtime_dir: Path) -> None:
    path = ensure_runtime_dir(runtime_dir / "deeper")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert ensure_runtime_dir(path) == path  # idempotent

    loose = runtime_dir / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(RuntimeDirError, match=r"has mode 0755; it must be private: chmod 700"):
        ensure_runtime_dir(loose)
    link = runtime_dir / "link"
    link.symlink_to(path)
    with pytest.raises(RuntimeDirError, match="is a symlink"):
        ensure_runtime_dir(link)
    (runtime_dir / "file").write_text("")
    with pytest.raises(RuntimeDirError, match="is not a directory"):
        ensure_runtime_dir(runtime_dir / "file")


# ---- endpoints ----------------------------------------------------------------------------------------


def test_endpoint_names(run: Run) -> None:
    ipc = endpoint("frames", service(run.runtime_dir), run)
    assert ipc == f"ipc://{run.dir}/frames.sock"
    tcp = service(run.runtime_dir, bus_transport="tcp", bus_tcp_base_port=40000)
    assert endpoint("control", tcp, run) == "tcp://127.0.0.1:40000"
    assert endpoint("frames", tcp, run) == f"tcp://127.0.0.1:{40000 + ENDPOINTS.index('frames')}"
    with pytest.raises(BusError, match="unknown bus endpoint 'pixels'"):
        endpoint("pixels", tcp, run)
    deep = Run(run.run_id, Path("/tmp/" + "x" * 100))
    with pytest.raises(BusError, match="longer than 107 bytes; choose a shorter service.runtime_dir"):
        endpoint("frames", service(deep.runtime_dir), deep)


def test_socket_options_come_from_settings(buses: list[Bus], run: Run) -> None:
    bus = make_bus(buses, run, "t", max_message_bytes=4096, bus_high_water_mark=7)
    chan = bus.socket("PULL", "frames", bind=True)
    assert chan.sock.getsockopt(zmq.MAXMSGSIZE) == 4096
    assert chan.sock.getsockopt(zmq.RCVHWM) == 7 and chan.sock.getsockopt(zmq.SNDHWM) == 7
    assert chan.sock.getsockopt(zmq.LINGER) == 0
    assert stat.S_IMODE(os.stat(run.dir / "frames.sock").st_mode) == 0o600
    with pytest.raises(BusError, match="unknown socket kind 'REQ'"):
        bus.socket("REQ", "control", bind=True)


# ---- in-process round trips ------------------------------------------------------------------------------


def test_push_pull_round_trip_and_timeouts(buses: list[Bus], run: Run) -> None:
    bus = make_bus(buses, run, "gpu")
    pull = bus.socket("PULL", "frames", bind=True)
    assert pull.recv(timeout_s=0.05) is None
    push = make_bus(buses, run, "ingest-cam").socket("PUSH", "frames", bind=False)
    for seq in range(3):
        assert push.send(frame(seq))
    assert [pull.recv(timeout_s=2).seq for _ in range(3)] == [0, 1, 2]
    assert wait_readable([pull], 0.01) == []


def test_send_without_peer_times_out(buses: list[Bus], run: Run) -> None:
    push = make_bus(buses, run, "ingest-cam").socket("PUSH", "frames", bind=False)
    start = time.monotonic()
    assert push.send(frame(0), timeout_s=0.05) is False
    assert time.monotonic() - start < 1.0


def test_pub_sub_topics(buses: list[Bus], run: Run) -> None:
    pub = make_bus(buses, run, "gpu").socket("PUB", "styled", bind=True)
    sub = make_bus(buses, run, "egress-a").socket("SUB", "styled", bind=False, subscribe=["a"])
    deadline = time.monotonic() + 5
    got = None
    while got is None and time.monotonic() < deadline:  # PUB drops until the subscription arrives
        pub.send(frame(1, "b"), topic="b")
        pub.send(frame(1, "a"), topic="a")
        got = sub.recv_from(timeout_s=0.05)
    assert got is not None and got[0] == b"a" and got[1].stream == "a"


def test_router_dealer_with_acks(buses: list[Bus], run: Run) -> None:
    router = make_bus(buses, run, "supervisor").socket("ROUTER", "control", bind=True)
    dealer = make_bus(buses, run, "api").socket("DEALER", "control", bind=False, identity=b"api")
    assert dealer.send(SetPrompt(request_id="r1", stream="cam", prompt="ink"))
    peer, msg = router.recv_from(timeout_s=2)
    assert peer == b"api" and isinstance(msg, SetPrompt)
    assert router.send(Ack(request_id=msg.request_id, ok=True), to=peer)
    assert dealer.recv(timeout_s=2, expect=(Ack,)) == Ack(request_id="r1", ok=True)
    assert router.send(Stop(), to=b"nobody", timeout_s=0.05) is False  # unknown peer is reported
    with pytest.raises(ValueError, match="needs the peer id"):
        router.send(Stop())


def rejected_total(process: str, reason: str) -> float:
    value = get_metrics().registry.get_sample_value(
        "stylecast_bus_rejected_messages_total", {"process": process, "reason": reason}
    )
    return value or 0.0


def test_bad_messages_are_counted_and_skipped(buses: list[Bus], run: Run) -> None:
    pull = make_bus(buses, run, "gpu-inproc", max_message_bytes=2048).socket("PULL", "frames", bind=True)
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(pull.address)
    try:
        before = rejected_total("gpu-inproc", "malformed")
        raw.send(b"\xc1 definitely not msgpack")
        raw.send(msgpack.packb({"v": 1, "t": "frame", "b": {"seq": "x"}}))
        raw.send(msgpack.packb({"v": 9, "t": "frame", "b": {}}))
        raw.send_multipart([b"two", b"parts"])
        raw.send(encode(frame(7)))
        msg = pull.recv(timeout_s=2)
        assert isinstance(msg, Frame) and msg.seq == 7  # the receiver survived and kept going
        assert pull.rejected == {"malformed": 1, "invalid_body": 1, "bad_version": 1, "bad_frames": 1}
        assert rejected_total("gpu-inproc", "malformed") == before + 1
        assert rejected_total("gpu-inproc", "bad_frames") >= 1
        assert pull.recv(timeout_s=0.05) is None
    finally:
        raw.close()


def test_oversized_frames_are_dropped_by_zmq_without_hurting_the_receiver(buses: list[Bus], run: Run) -> None:
    pull = make_bus(buses, run, "gpu", max_message_bytes=2048).socket("PULL", "frames", bind=True)
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(pull.address)
    try:
        raw.send(b"\x00" * 100_000)  # over MAXMSGSIZE: zmq drops the connection, not the receiver
        assert pull.recv(timeout_s=0.1) is None
        push = make_bus(buses, run, "ingest").socket("PUSH", "frames", bind=False)
        assert push.send(frame(5))
        assert pull.recv(timeout_s=2).seq == 5
    finally:
        raw.close()


def test_expect_filters_unexpected_types(buses: list[Bus], run: Run) -> None:
    pull = make_bus(buses, run, "supervisor").socket("PULL", "heartbeat", bind=True)
    push = make_bus(buses, run, "gpu").socket("PUSH", "heartbeat", bind=False)
    push.send(frame(1))
    push.send(Heartbeat(process="gpu", pid=os.getpid(), time=now(), state="ready"))
    msg = pull.recv(timeout_s=2, expect=(Heartbeat,))
    assert isinstance(msg, Heartbeat) and pull.rejected["unexpected_type"] == 1


def test_tcp_transport_on_loopback(buses: list[Bus], run: Run) -> None:
    with socket.socket() as s:  # find a free port range start
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
    if base > 65000:
        base = 50000
    pull = make_bus(buses, run, "gpu", bus_transport="tcp", bus_tcp_base_port=base).socket("PULL", "control", bind=True)
    push = make_bus(buses, run, "x", bus_transport="tcp", bus_tcp_base_port=base).socket("PUSH", "control", bind=False)
    assert pull.address == f"tcp://127.0.0.1:{base}"
    with pytest.raises(BusError, match=f"cannot bind PULL socket to tcp://127.0.0.1:{base}: Address already in use"):
        make_bus(buses, run, "y", bus_transport="tcp", bus_tcp_base_port=base).socket("PULL", "control", bind=True)
    push.send(frame(3))
    assert pull.recv(timeout_s=2).seq == 3


# ---- two processes ---------------------------------------------------------------------------------------


def _echo_worker(runtime_dir: str, run_id: str, report: mp.Queue) -> None:
    """Receive frames on 'frames'; answer each with a heartbeat; report rejects; stop on Stop."""
    svc = ServiceSettings(runtime_dir=Path(runtime_dir), bus_linger_ms=1000, max_message_bytes=4096)
    with Bus(svc, Run(run_id, Path(runtime_dir)), process="worker") as bus:
        inbox = bus.socket("PULL", "frames", bind=True)
        outbox = bus.socket("PUSH", "heartbeat", bind=False)
        report.put("ready")
        seqs = []
        while True:
            msg = inbox.recv(timeout_s=10)
            if msg is None or isinstance(msg, Stop):
                break
            seqs.append(msg.seq)
            outbox.send(Heartbeat(process="worker", pid=os.getpid(), time=now(), state="ready", detail=str(msg.seq)))
        report.put((seqs, dict(inbox.rejected)))


def test_round_trip_between_processes_survives_garbage(buses: list[Bus], run: Run) -> None:
    ctx = mp.get_context("spawn")
    report = ctx.Queue()
    worker = ctx.Process(target=_echo_worker, args=(str(run.runtime_dir), run.run_id, report))
    worker.start()
    try:
        assert report.get(timeout=30) == "ready"
        bus = make_bus(buses, run, "main", max_message_bytes=4096)
        replies = bus.socket("PULL", "heartbeat", bind=True)
        out = bus.socket("PUSH", "frames", bind=False)
        garbage = zmq.Context.instance().socket(zmq.PUSH)
        garbage.setsockopt(zmq.LINGER, 1000)
        garbage.connect(out.address)
        garbage.send(b"\x00garbage")  # malformed: counted by the worker, which keeps going
        garbage.send(msgpack.packb({"v": 1, "t": "nope", "b": {}}))
        garbage.close()
        for seq in range(5):
            assert out.send(frame(seq), timeout_s=5)
        details = [replies.recv(timeout_s=10).detail for _ in range(5)]
        assert details == ["0", "1", "2", "3", "4"]
        assert out.send(Stop(), timeout_s=5)
        seqs, rejected = report.get(timeout=10)
        assert seqs == [0, 1, 2, 3, 4]
        assert rejected == {"malformed": 1, "unknown_type": 1}
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join()
