"""Faults the service must survive (issue: reliability): kill -9 of every process type, a camera that goes
away and comes back (or never does), a GPU slower than its sources, SIGTERM mid-run, a crashed
supervisor. Each test asserts bounded recovery and records what it measured for RELIABILITY.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.rtsp_server import RtspServer, gstreamer_missing_reason
from tests.support.service import (
    REPO, Service, decode_video, frames_written, leftover_segments, metric_value, processes_using, service_env,
    trim_clip, wait_for,
)

FRAMES = 120


@pytest.fixture(scope="module")
def clip(tmp_path_factory, bikes_path):
    return trim_clip(Path(bikes_path), tmp_path_factory.mktemp("clips") / "bikes120.mp4", FRAMES)


def _paced(name: str, clip: Path, out: Path) -> dict:
    return {"name": name, "source": str(clip), "prompt": "make it an oil painting", "pace": True,
            "sinks": [{"type": "mp4", "target": str(out)}]}


def _frames_in(path: Path) -> int:
    return len(decode_video(path)[0]) if path.exists() else 0


@pytest.mark.parametrize("victim", ["ingest-a", "egress-a", "gpu", "flow"])
def test_kill_9_of_a_process_is_survived(tmp_path, clip, victim, reliability):
    svc = Service(tmp_path, [_paced("a", clip, tmp_path / "a.mp4"), _paced("b", clip, tmp_path / "b.mp4")],
                  engine={"cond_refresh": 1})  # a refresh every batch: the flow process is always busy
    try:
        svc.wait_ready()
        wait_for(lambda: svc.frames_out("a") > 12 and svc.frames_out("b") > 12, 60, "both streams flowing")
        before_b = svc.frames_out("b")
        os.kill(svc.pid_of(victim), signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: svc.restarts(victim) == 1, 30, f"{victim} restarted")
        # Recovered once frames flow again after the restart (what was already in flight does not count).
        at_restart = svc.frames_out("a")
        wait_for(lambda: svc.frames_out("a") >= min(at_restart + 8, FRAMES), 60, f"stream a to resume after killing {victim}")
        recovery = time.monotonic() - killed
        if victim.endswith("-a"):  # the neighbour never noticed
            assert svc.frames_out("b") > before_b
        assert metric_value(svc.metrics(), "stylecast_process_restarts_total", process=victim) == 1
        wait_for(lambda: all(svc.stream(n)["state"] == "stopped" for n in "ab"), 120, "both streams to finish")
        # The count carries on across a restart (a restarted egress counts its predecessors' frames too).
        assert svc.frames_out("a") == FRAMES and svc.frames_out("b") == FRAMES
        assert svc.stop() == 0
    finally:
        svc.kill()
    lost_a = FRAMES - _frames_in(tmp_path / "a.mp4")
    lost_b = FRAMES - _frames_in(tmp_path / "b.mp4")
    reliability.record("fault", f"kill -9 {victim} mid-stream", "restarted, stream resumed", recovery_s=recovery,
                       frames_lost=lost_a + lost_b, detail=f"stream a lost {lost_a}, neighbour b lost {lost_b}")
    assert recovery < 20
    assert lost_b == 0 or victim in ("gpu", "flow")
    assert lost_a == 0 and lost_b == 0, (lost_a, lost_b)  # egress included: its MP4 segments survive a kill
    assert not processes_using(svc.runtime) and not leftover_segments(svc.runtime)


def test_a_hung_process_is_found_by_its_silence_and_replaced(tmp_path, clip, reliability):
    """SIGSTOP: the process lives but does nothing. Its missing heartbeats give it away."""
    lossless = {**_paced("a", clip, tmp_path / "a.mp4"), "live": False}  # a live source would drop while egress hangs
    svc = Service(tmp_path, [lossless], service={"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 2.0})
    try:
        svc.wait_ready()
        wait_for(lambda: svc.frames_out("a") > 12, 60, "stream flowing")
        os.kill(svc.pid_of("egress-a"), signal.SIGSTOP)
        hung = time.monotonic()
        wait_for(lambda: svc.restarts("egress-a") == 1, 30, "the hung egress replaced")
        detected = time.monotonic() - hung
        at_restart = svc.frames_out("a")
        wait_for(lambda: svc.frames_out("a") >= at_restart + 8, 60, "stream a to resume")
        recovery = time.monotonic() - hung
        wait_for(lambda: svc.stream("a")["state"] == "stopped", 120, "the stream to finish")
        assert svc.stop() == 0
    finally:
        svc.kill()
    lost = FRAMES - _frames_in(tmp_path / "a.mp4")
    reliability.record("fault", "egress hung (SIGSTOP) mid-stream", "silence detected, killed and restarted",
                       recovery_s=recovery, frames_lost=lost, detail=f"detected after {detected:.1f} s (timeout 2 s)")
    assert 2.0 <= detected < 10
    assert lost == 0


def test_a_starting_process_gets_the_start_up_limit_not_the_heartbeat_timeout():
    from services.supervisor import Child, silent_too_long
    from shared.settings import load_settings

    svc = load_settings(None, env={}, overrides={"service.heartbeat_timeout_s": 5, "service.startup_timeout_s": 600}).service
    starting = Child("gpu", "services.gpu", [], started=0.0, last_heartbeat=0.0, state="starting")
    ready = Child("gpu", "services.gpu", [], started=0.0, last_heartbeat=0.0, state="ready")
    assert not silent_too_long(starting, 60.0, svc)  # compiling for a minute without a beat: fine
    assert silent_too_long(starting, 601.0, svc)
    assert silent_too_long(ready, 6.0, svc) and not silent_too_long(ready, 4.0, svc)


def test_supervisor_crash_leaves_nothing_the_next_start_does_not_clean(tmp_path, clip, reliability):
    svc = Service(tmp_path, [_paced("a", clip, tmp_path / "a.mp4")])
    svc.wait_ready()
    wait_for(lambda: svc.frames_out("a") > 4, 60, "frames out")
    children = processes_using(svc.runtime)
    assert len(children) >= 4
    svc.kill()  # kill -9 of the supervisor: the children must not outlive it
    crashed = time.monotonic()
    wait_for(lambda: not processes_using(svc.runtime), 30, "the orphaned children to exit")
    orphan_exit = time.monotonic() - crashed
    # Python's resource tracker may already have unlinked the segments; the run directory (sockets,
    # metrics files, settings) is certainly left, and the next start must remove it.
    stale_runs = [p.name for p in (svc.runtime / "runs").iterdir()]
    stale_segments = leftover_segments(svc.runtime)
    assert stale_runs
    again = Service(tmp_path, [_paced("a", clip, tmp_path / "a2.mp4")])
    try:
        again.wait_ready()
        assert not any((svc.runtime / "runs" / r).exists() for r in stale_runs)
        assert not any(Path("/dev/shm", s).exists() for s in stale_segments)
        wait_for(lambda: again.frames_out("a") > 4, 60, "frames out after the restart")
        assert again.stop() == 0
    finally:
        again.kill()
    reliability.record("fault", "kill -9 supervisor, then start again", "children exited, leftovers removed",
                       recovery_s=orphan_exit, detail=f"{len(stale_runs)} run dir(s), {len(stale_segments)} segment(s) "
                       "left by the crash, removed at the next start")
    assert not processes_using(again.runtime) and not leftover_segments(again.runtime)


@pytest.mark.skipif(gstreamer_missing_reason() is not None, reason=str(gstreamer_missing_reason()))
def test_camera_that_goes_away_reconnects_and_one_that_never_returns_fails(tmp_path, clip, reliability):
    camera = RtspServer().start()
    lost = RtspServer().start()
    svc = Service(tmp_path, [
        {"name": "cam", "source": camera.url, "prompt": "oil", "sinks": [{"type": "mp4", "target": str(tmp_path / "cam.mp4")}]},
        {"name": "gone", "source": lost.url, "prompt": "oil"},
        _paced("file", clip, tmp_path / "file.mp4"),
    ], ingest={"reconnect_backoff_initial_s": 0.2, "reconnect_backoff_max_s": 1.0, "reconnect_max_attempts": 3,
               "read_timeout_s": 2.0, "connect_timeout_s": 2.0})
    try:
        svc.wait_ready()
        wait_for(lambda: svc.frames_out("cam") > 8 and svc.frames_out("gone") > 4, 60, "cameras flowing")
        port = camera.port
        camera.stop()
        lost.stop()
        wait_for(lambda: svc.stream("cam")["state"] == "reconnecting", 30, "cam reconnecting")
        assert metric_value(svc.metrics(), "stylecast_stream_state", stream="cam", state="reconnecting") == 1
        before = svc.frames_out("cam")
        camera = RtspServer(port=port).start()
        back = time.monotonic()
        wait_for(lambda: svc.frames_out("cam") > before + 4, 60, "cam frames after the camera came back")
        recovery = time.monotonic() - back
        failed_at = time.monotonic()
        wait_for(lambda: svc.stream("gone")["state"] == "failed", 60, "the lost camera to end as failed")
        give_up = time.monotonic() - failed_at
        assert "attempt" in svc.stream("gone")["reason"]
        assert svc.stream("file")["state"] in ("running", "stopped") and svc.frames_out("file") > 0
        assert svc.stop() == 0
    finally:
        svc.kill()
        camera.stop()
        lost.stop()
    reliability.record("fault", "RTSP server stopped and started again", "reconnected with backoff",
                       recovery_s=recovery, detail="state 'reconnecting' in the API and metrics meanwhile")
    reliability.record("fault", "RTSP server gone for good", "failed after 3 attempts", recovery_s=give_up,
                       detail="the file stream beside it kept running")
    assert recovery < 15


def test_gpu_slower_than_the_sources(tmp_path, clip, reliability):
    live = _paced("live", clip, tmp_path / "live.mp4") | {"live": True}
    short = trim_clip(clip, tmp_path / "short.mp4", 40)
    svc = Service(tmp_path, [live, {"name": "file", "source": str(short), "prompt": "oil",
                                    "sinks": [{"type": "mp4", "target": str(tmp_path / "file.mp4")}]}],
                  env={"STYLECAST_FAULT_GPU_DELAY_MS": "250"})  # injected fault: every batch 250 ms slower
    try:
        svc.wait_ready()
        rss = []
        def sample():
            rss.append(_rss_kib(svc.pid_of("gpu")))
            return svc.stream("file")["state"] == "stopped" and svc.stream("live")["state"] == "stopped"
        wait_for(sample, 120, "both streams to finish", poll=1.0)
        live_info = svc.stream("live")
        assert svc.stream("file")["state"] == "stopped"
        text = svc.metrics()
        assert svc.stop() == 0
    finally:
        svc.kill()
    dropped = sum(live_info["counters"]["dropped"].values())
    assert dropped > 0  # the live stream shed load ...
    assert metric_value(text, "stylecast_frames_total", stream="live", stage="gpu", outcome="dropped_behind") == \
        live_info["counters"]["dropped"].get("behind", 0)
    assert _frames_in(tmp_path / "file.mp4") == 40  # ... the file lost nothing
    assert live_info["latency_ms"]["p95"] < 5000  # and latency stayed bounded (the queue is capped)
    growth = (max(rss) - rss[0]) / 1024
    assert growth < 200, f"GPU worker memory grew by {growth:.0f} MiB"
    reliability.record("load", "GPU 250 ms/batch slower than a 25 fps live source + a file", "live drops oldest, file lossless",
                       frames_lost=dropped, detail=f"live dropped {dropped} (counted), file lost 0; live e2e p95 "
                       f"{live_info['latency_ms']['p95']:.0f} ms; GPU worker RSS growth {growth:.0f} MiB")


def test_a_live_queue_limit_trades_frames_for_latency(tmp_path, clip, reliability):
    """The overload above with `engine.live_max_queue_ms`: frames older than the limit go as 'late', so the live
    stream's latency stays near the limit plus the batch time instead of growing to two batches of frames."""
    svc = Service(tmp_path, [_paced("live", clip, tmp_path / "live.mp4") | {"live": True}],
                  engine={"live_max_queue_ms": 300}, env={"STYLECAST_FAULT_GPU_DELAY_MS": "250"})
    try:
        svc.wait_ready()
        wait_for(lambda: svc.stream("live")["state"] == "stopped", 120, "the live stream to finish", poll=1.0)
        info = svc.stream("live")
        text = svc.metrics()
        assert svc.stop() == 0
    finally:
        svc.kill()
    late = info["counters"]["dropped"].get("late", 0)
    assert late > 0
    assert metric_value(text, "stylecast_frames_total", stream="live", stage="gpu", outcome="dropped_late") == late
    # At most 300 ms in the queue, then the worker's 250 ms pause after its batch's submission; 650 ms measured on a
    # 2-core VM (without the limit, the test above measures ≈ 1.7 s at p95).
    assert info["latency_ms"]["p95"] < 300 + 250 + 650
    reliability.record("load", "GPU 250 ms/batch slower than a 25 fps live source, engine.live_max_queue_ms = 300",
                       "live drops frames past 300 ms",
                       frames_lost=sum(info["counters"]["dropped"].values()),
                       detail=f"late {late}, behind {info['counters']['dropped'].get('behind', 0)}; live e2e p95 "
                       f"{info['latency_ms']['p95']:.0f} ms")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_sigterm_mid_run_drains_and_finalises(tmp_path, bikes_path, reliability):
    out = tmp_path / "out.mp4"
    runtime = tmp_path / "rt"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(bikes_path), "-o", str(out), "--prompt", "x",
                             "--pace", "--profile", "synthetic-tiny", "--size", "64", "--batch", "4", "--no-progress"],
                            env=service_env(runtime), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: frames_written(runtime) > 12, 120, "frames written")
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        stdout, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    written = _frames_in(out)
    assert 0 < written < 250 and f"out {written}" in stdout
    dropped = int(stdout.split("dropped ")[1].split()[0])
    reads = int(stdout.split("frames in ")[1].split(",")[0])
    assert reads == written + dropped, stdout  # every accepted frame written or counted
    reliability.record("fault", "SIGTERM during `stylecast run`", "drained, file finalised", recovery_s=took,
                       frames_lost=0, detail=f"{written} written, {dropped} counted as dropped, exit {proc.returncode}")
    assert took < 30 and not processes_using(runtime) and not leftover_segments(runtime)
