"""Metrics: names and labels of DESIGN §6; one render sums every process; import order is safe."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.metrics import (
    LATENCY_BUCKETS,
    MetricsError,
    cleanup_dead_process,
    get_metrics,
    init_metrics_dir,
    render_metrics,
)

REPO = Path(__file__).resolve().parents[1]


def parse(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_latency_buckets_are_dense_from_5ms_to_2s() -> None:
    assert LATENCY_BUCKETS[0] == 0.005 and LATENCY_BUCKETS[-1] == 2.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS)) and len(LATENCY_BUCKETS) >= 20
    ratios = [b / a for a, b in zip(LATENCY_BUCKETS, LATENCY_BUCKETS[1:])]
    assert max(ratios) <= 1.6  # no wide gaps anywhere in the range


def test_names_units_and_labels() -> None:
    m = get_metrics()  # single-process mode in the test runner
    m.count_frames("namecheck", "gpu", "processed", 3)
    m.count_frames("namecheck", "ingest", "dropped_queue_full")
    m.observe_latencies("namecheck", t_capture=0.0, t_ingest=0.01, t_batch_start=0.02, t_side_done=0.055, t_main_done=0.08, t_egress_done=0.1)
    m.batch_size.labels("0").observe(8)
    m.batch_wall.labels("0", "side").observe(0.02)
    m.main_idle.labels("0").observe(0.0001)
    m.dispatch_wait.labels("0", "in_flight").inc(1.5)
    m.queue_depth.labels("namecheck", "gpu_input").set(4)
    m.set_stream_state("namecheck", "reconnecting")
    m.cond_refreshes.labels("namecheck", "scheduled").inc()
    m.text_encoder_cache.labels("prefix", "hit").inc()
    m.process_restarts.labels("ingest-namecheck").inc()
    m.gpu_memory.labels("0", "allocated").set(2**30)
    m.count_rejected("gpu", "malformed")
    s = parse(render_metrics())
    assert sample(s, "stylecast_frames_total", stream="namecheck", stage="gpu", outcome="processed") == 3
    assert sample(s, "stylecast_frames_total", stream="namecheck", stage="ingest", outcome="dropped_queue_full") == 1
    assert sample(s, "stylecast_stage_latency_seconds_count", stream="namecheck", stage="side") == 1
    assert sample(s, "stylecast_stage_latency_seconds_bucket", stream="namecheck", stage="side", le="0.04") == 1  # 35 ms
    assert sample(s, "stylecast_stage_latency_seconds_bucket", stream="namecheck", stage="side", le="0.03") == 0
    assert sample(s, "stylecast_end_to_end_latency_seconds_sum", stream="namecheck") == pytest.approx(0.1)
    assert sample(s, "stylecast_gpu_batch_size_count", device="0") == 1
    assert sample(s, "stylecast_gpu_batch_wall_seconds_count", device="0", path="side") == 1
    assert sample(s, "stylecast_gpu_main_idle_seconds_bucket", device="0", le="0.0005") == 1  # a GPU kept fed
    assert sample(s, "stylecast_gpu_dispatch_wait_seconds_total", device="0", reason="in_flight") == 1.5
    assert sample(s, "stylecast_queue_depth", stream="namecheck", queue="gpu_input") == 4
    assert sample(s, "stylecast_stream_state", stream="namecheck", state="reconnecting") == 1
    assert sample(s, "stylecast_stream_state", stream="namecheck", state="running") == 0
    assert sample(s, "stylecast_cond_refreshes_total", stream="namecheck", reason="scheduled") == 1
    assert sample(s, "stylecast_text_encoder_cache_lookups_total", cache="prefix", result="hit") == 1
    assert sample(s, "stylecast_process_restarts_total", process="ingest-namecheck") == 1
    assert sample(s, "stylecast_gpu_memory_bytes", device="0", kind="allocated") == 2**30
    assert sample(s, "stylecast_bus_rejected_messages_total", process="gpu", reason="malformed") >= 1


def test_labels_are_checked() -> None:
    m = get_metrics()
    with pytest.raises(ValueError, match="is not a valid stream name"):
        m.count_frames("rtsp://u:p@cam/x", "gpu", "processed")
    with pytest.raises(MetricsError, match="outcome 'dropped' is not processed, error or dropped_<reason>"):
        m.count_frames("cam", "gpu", "dropped")
    with pytest.raises(MetricsError, match="stage 'decode' is not one of"):
        m.count_frames("cam", "decode", "processed")
    with pytest.raises(MetricsError, match="stream state 'sleepy'"):
        m.set_stream_state("cam", "sleepy")


def test_init_after_metrics_exist_is_refused(tmp_path: Path) -> None:
    get_metrics()
    with pytest.raises(MetricsError, match="called after metrics were created in single-process mode"):
        init_metrics_dir(tmp_path / "m")
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with pytest.raises(MetricsError, match="does not exist"):
        render_metrics(tmp_path / "missing")


IMPORT_ORDER = """
import os, sys
sys.path.insert(0, {repo!r})
import prometheus_client                      # imported first, e.g. by a library: single-process storage
from prometheus_client import values
assert values.ValueClass is values.MutexValue
from shared.metrics import init_metrics_dir, get_metrics
init_metrics_dir({path!r})
get_metrics().count_frames("cam", "egress", "processed", 5)
assert any(f.startswith("counter_") for f in os.listdir({path!r})), os.listdir({path!r})
"""


def test_import_order_trap_is_handled(tmp_path: Path) -> None:
    path = tmp_path / "metrics"
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ORDER.format(repo=str(REPO), path=str(path))],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    s = parse(render_metrics(path))
    assert sample(s, "stylecast_frames_total", stream="cam", stage="egress", outcome="processed") == 5


# ---- two processes, one render ---------------------------------------------------------------------------


def _worker(path: str, frames: int, depth: int, state: str, ready: mp.Queue, go: mp.Event) -> None:
    init_metrics_dir(path)
    m = get_metrics()
    assert m.multiprocess
    m.count_frames("cam", "gpu", "processed", frames)
    for i in range(frames):
        m.observe_latencies("cam", t_capture=0, t_ingest=0.001, t_batch_start=0.01, t_side_done=0.02, t_main_done=0.03, t_egress_done=0.04 + i * 0.1)
    m.queue_depth.labels("cam", "gpu_input").set(depth)
    m.set_stream_state("cam", state)
    ready.put(os.getpid())
    go.wait(30)  # stay alive until the parent has rendered the live gauges


def test_two_processes_one_render(tmp_path: Path) -> None:
    path = tmp_path / "metrics"
    init_path = str(path)
    os.makedirs(path, mode=0o700)
    ctx = mp.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    a = ctx.Process(target=_worker, args=(init_path, 3, 2, "starting", ready, go))
    a.start()
    first = ready.get(timeout=30)
    b = ctx.Process(target=_worker, args=(init_path, 4, 5, "running", ready, go))  # sets its state later
    b.start()
    pids = {first, ready.get(timeout=30)}
    try:
        s = parse(render_metrics(path))
        assert sample(s, "stylecast_frames_total", stream="cam", stage="gpu", outcome="processed") == 7
        assert sample(s, "stylecast_end_to_end_latency_seconds_count", stream="cam") == 7
        assert sample(s, "stylecast_stage_latency_seconds_count", stream="cam", stage="queue") == 7
        assert sample(s, "stylecast_queue_depth", stream="cam", queue="gpu_input") == 7  # livesum
        assert sample(s, "stylecast_stream_state", stream="cam", state="running") == 1  # most recent wins
        assert sample(s, "stylecast_stream_state", stream="cam", state="starting") == 0
    finally:
        go.set()
        a.join(30)
        b.join(30)
    assert a.exitcode == 0 and b.exitcode == 0

    removed = [f for pid in sorted(pids) for f in cleanup_dead_process(pid, path)]
    assert any(f.startswith("gauge_livesum_") for f in removed) and any(f.startswith("counter_") for f in removed)
    assert not [f for f in os.listdir(path) if any(f.endswith(f"_{pid}.db") for pid in pids)]
    s = parse(render_metrics(path))
    assert sample(s, "stylecast_frames_total", stream="cam", stage="gpu", outcome="processed") == 7  # totals kept
    assert sample(s, "stylecast_end_to_end_latency_seconds_count", stream="cam") == 7
    assert sample(s, "stylecast_end_to_end_latency_seconds_bucket", stream="cam", le="0.05") == 2
    assert sample(s, "stylecast_queue_depth", stream="cam", queue="gpu_input") is None  # dead processes hold no queue
    assert sample(s, "stylecast_stream_state", stream="cam", state="running") == 1
