"""Prometheus metrics of DESIGN §6, shared by every process of a node through one scrape endpoint.

Multi-process mode: each process writes its samples to mmap files in the run's metrics directory
(`PROMETHEUS_MULTIPROC_DIR`); `render_metrics()` merges them for the API's `/metrics`.

Import-order trap: prometheus_client picks single- or multi-process storage from the environment
when it is *imported*, and a metric keeps the storage it was created with. So this module never
imports prometheus_client at import time and creates no metric until `get_metrics()`;
`init_metrics_dir()` sets the variable and re-selects the storage if prometheus_client was
already imported by someone else, and refuses (MetricsError) once our metrics exist in the wrong mode.

Usage in a process: `init_metrics_dir(run.metrics_dir)` first thing, then `m = get_metrics()`.
Without `init_metrics_dir` (library use, benchmarks) metrics are plain in-process ones.

Labels: `stream` is the operator-chosen stream name (validated), never a URL.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.settings import check_stream_name

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Dense from 5 ms to 2 s (DESIGN §6): stage and end-to-end latencies of a video-rate pipeline.
LATENCY_BUCKETS = (
    0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
)  # fmt: skip
# A batch's side or main path: from about a millisecond (tiny/compiled) up to seconds (CPU).
BATCH_WALL_BUCKETS = (0.001, 0.0025) + LATENCY_BUCKETS
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# The main path's idle time before a batch: ~0.1 ms when the GPU is kept fed, seconds when idle.
IDLE_BUCKETS = (0.0005, 0.001, 0.0025) + LATENCY_BUCKETS

STAGES = ("ingest", "flow", "gpu", "egress")  # label `stage` of frames_total
LATENCY_STAGES = ("ingest", "queue", "side", "main", "egress")  # label `stage` of stage_latency_seconds
STREAM_STATES = ("idle", "starting", "running", "reconnecting", "failed", "stopped")
_OUTCOME_RE = re.compile(r"processed|error|dropped_[a-z0-9_]{1,32}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_.:-]{1,96}")


# Sample files of a dead process that can be folded into an archive without changing what is rendered.
_FOLDABLE = ("counter", "histogram", "gauge_mostrecent")


class MetricsError(RuntimeError):
    """Metrics used in an order or with labels that would give wrong numbers."""


class StyleCastMetrics:
    """Every StyleCast metric, created once per process by `get_metrics()`."""

    def __init__(self, multiprocess: bool) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = multiprocess
        # A private registry: single-process rendering, and no clash with anything in REGISTRY.
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.frames = Counter(
            "stylecast_frames", "Frames by stream, pipeline stage and outcome (processed, dropped_<reason>, error).",
            ["stream", "stage", "outcome"], registry=reg,
        )
        self.stage_latency = Histogram(
            "stylecast_stage_latency_seconds",
            "Latency of one stage for one frame: ingest (capture->ingest), queue (ingest->batch start), "
            "side (batch start->side done), main (side done->main done), egress (main done->written).",
            ["stream", "stage"], buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.end_to_end_latency = Histogram(
            "stylecast_end_to_end_latency_seconds", "Capture to written output, per frame.",
            ["stream"], buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.batch_size = Histogram(
            "stylecast_gpu_batch_size", "Frames per dispatched GPU batch.",
            ["device"], buckets=BATCH_SIZE_BUCKETS, registry=reg,
        )
        self.batch_wall = Histogram(
            "stylecast_gpu_batch_wall_seconds", "Wall time of a batch's side path (VAE encode + text encoder) and main path (U-Net + decode).",
            ["device", "path"], buckets=BATCH_WALL_BUCKETS, registry=reg,
        )
        self.main_idle = Histogram(
            "stylecast_gpu_main_idle_seconds",
            "Time the GPU's main path stood idle before a batch (previous batch's main end to this one's main start).",
            ["device"], buckets=IDLE_BUCKETS, registry=reg,
        )
        self.dispatch_wait = Counter(
            "stylecast_gpu_dispatch_wait_seconds",
            "Seconds the GPU worker spent not dispatching, by reason: no_frames, filling (waiting for a fuller "
            "batch), in_flight (the pipeline is full), output_full (egress has no room).",
            ["device", "reason"], registry=reg,
        )
        # livesum: a queue's depth is only meaningful while its owner lives; several owners add up.
        self.queue_depth = Gauge(
            "stylecast_queue_depth", "Frames waiting in a bounded queue.",
            ["stream", "queue"], multiprocess_mode="livesum", registry=reg,
        )
        # mostrecent: the state is set by whoever saw the change last (ingest, supervisor) and must
        # survive the death of the process that set it (a crashed ingest's stream is not 'running').
        self.stream_state = Gauge(
            "stylecast_stream_state", "1 for the stream's current state, 0 for the others.",
            ["stream", "state"], multiprocess_mode="mostrecent", registry=reg,
        )
        self.prompt_version = Gauge(
            "stylecast_prompt_version", "Version of the prompt the text encoder is encoding for the stream (1, then +1 per change).",
            ["stream"], multiprocess_mode="mostrecent", registry=reg,
        )
        self.cond_refreshes = Counter(
            "stylecast_cond_refreshes", "LLLite conditioning rebuilds by reason (scheduled, scene_cut, motion, start, prompt).",
            ["stream", "reason"], registry=reg,
        )
        self.text_encoder_cache = Counter(
            "stylecast_text_encoder_cache_lookups", "Text-encoder cache lookups by cache (prefix, embedding) and result (hit, miss).",
            ["cache", "result"], registry=reg,
        )
        self.process_restarts = Counter(
            "stylecast_process_restarts", "Restarts of a process by the supervisor.", ["process"], registry=reg,
        )
        # livesum: memory held by a dead process is freed; several processes on one device add up.
        self.gpu_memory = Gauge(
            "stylecast_gpu_memory_bytes", "GPU memory held by StyleCast processes (allocated, reserved).",
            ["device", "kind"], multiprocess_mode="livesum", registry=reg,
        )
        self.bus_rejected = Counter(
            "stylecast_bus_rejected_messages", "Bus messages rejected by the decoder, by receiving process and reason.",
            ["process", "reason"], registry=reg,
        )

    # ---- helpers that validate labels (a URL must never become a label) ---------------------------

    def count_frames(self, stream: str, stage: str, outcome: str, n: int = 1) -> None:
        """Add `n` frames of `stream` at `stage` with `outcome` (processed, error, dropped_<reason>)."""
        check_stream_name(stream)
        if stage not in STAGES:
            raise MetricsError(f"stage {stage!r} is not one of {STAGES}")
        if not _OUTCOME_RE.fullmatch(outcome):
            raise MetricsError(f"outcome {outcome!r} is not processed, error or dropped_<reason>")
        self.frames.labels(stream, stage, outcome).inc(n)

    def observe_latencies(
        self, stream: str, *, t_capture: float, t_ingest: float, t_batch_start: float,
        t_side_done: float, t_main_done: float, t_egress_done: float,
    ) -> None:
        """Record every stage latency and the end-to-end latency of one written frame."""
        check_stream_name(stream)
        marks = (t_capture, t_ingest, t_batch_start, t_side_done, t_main_done, t_egress_done)
        for stage, start, end in zip(LATENCY_STAGES, marks, marks[1:]):
            self.stage_latency.labels(stream, stage).observe(max(0.0, end - start))
        self.end_to_end_latency.labels(stream).observe(max(0.0, t_egress_done - t_capture))

    def set_stream_state(self, stream: str, state: str) -> None:
        """Mark `state` as the stream's current state (1) and every other state 0."""
        check_stream_name(stream)
        state = getattr(state, "value", state)
        if state not in STREAM_STATES:
            raise MetricsError(f"stream state {state!r} is not one of {STREAM_STATES}")
        for name in STREAM_STATES:
            self.stream_state.labels(stream, name).set(1.0 if name == state else 0.0)

    def count_rejected(self, process: str, reason: str) -> None:
        """One bus message rejected by `process` for `reason` (a ProtocolError reason)."""
        if not _LABEL_RE.fullmatch(process) or not _LABEL_RE.fullmatch(reason):
            raise MetricsError(f"bad label value in ({process!r}, {reason!r})")
        self.bus_rejected.labels(process, reason).inc()


# --------------------------------------------------------------------------------------------------
# Process-wide state
# --------------------------------------------------------------------------------------------------

_lock = threading.RLock()
_metrics: StyleCastMetrics | None = None


def _sync_value_class() -> None:
    """Make an already-imported prometheus_client pick its storage from the current environment."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()


def _multiproc_dir() -> Path | None:
    raw = os.environ.get(MULTIPROC_ENV)
    return Path(raw) if raw else None


def init_metrics_dir(path: str | os.PathLike[str], *, fresh: bool = False) -> Path:
    """Put this process's metrics in multi-process mode, writing to `path` (created 0700 if missing).

    Must run before `get_metrics()`; safe to repeat with the same path. `fresh=True` deletes old
    sample files (only the run's owner should, at start). Children started with this process's
    environment inherit the setting, but should call it too.
    """
    from shared.runtime import ensure_private_dir

    path = Path(path).absolute()
    with _lock:
        if _metrics is not None:
            current = _multiproc_dir()
            if _metrics.multiprocess and current == path:
                return path
            mode = f"multi-process mode in {current}" if _metrics.multiprocess else "single-process mode"
            raise MetricsError(
                f"init_metrics_dir({str(path)!r}) called after metrics were created in {mode}; "
                "call it first thing in the process"
            )
        ensure_private_dir(path)
        if fresh:
            for f in glob.glob(str(path / "*.db")):
                os.remove(f)
        os.environ[MULTIPROC_ENV] = str(path)
        _sync_value_class()
    return path


def get_metrics() -> StyleCastMetrics:
    """This process's metrics, created on first use (multi-process if `init_metrics_dir` ran)."""
    global _metrics
    with _lock:
        if _metrics is None:
            directory = _multiproc_dir()
            if directory is not None and not directory.is_dir():
                raise MetricsError(f"{MULTIPROC_ENV}={directory} is not a directory; call init_metrics_dir() first")
            _sync_value_class()
            _metrics = StyleCastMetrics(multiprocess=directory is not None)
        return _metrics


def metrics_dir() -> Path | None:
    """The multi-process directory in use, or None in single-process mode."""
    return _multiproc_dir()


@contextmanager
def _dir_lock(path: Path, exclusive: bool) -> Iterator[None]:
    # Rendering (shared) must not see a dead process's samples both in its own file and in the
    # archive it is being merged into (exclusive).
    with open(path / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def render_metrics(path: str | os.PathLike[str] | None = None) -> bytes:
    """Prometheus text exposition of every process of the run (`CONTENT_TYPE`).

    `path` is the run's metrics directory; default: this process's multi-process directory, or,
    in single-process mode, this process's own metrics.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = Path(path) if path is not None else _multiproc_dir()
    if directory is None:
        return generate_latest(get_metrics().registry)
    if not directory.is_dir():
        raise MetricsError(f"metrics directory {directory} does not exist")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    with _dir_lock(directory, exclusive=False):
        return generate_latest(registry)


def cleanup_dead_process(pid: int, path: str | os.PathLike[str] | None = None) -> list[str]:
    """After process `pid` died: drop its live gauges and fold its other samples into archive files.

    Counters and histograms keep their totals (folded into `<type>_archive.db`), so files do not pile
    up with restarts. Returns the files removed. Call it from one process (the supervisor).
    """
    from prometheus_client.mmap_dict import MmapedDict
    from prometheus_client.multiprocess import mark_process_dead

    directory = Path(path) if path is not None else _multiproc_dir()
    if directory is None:
        return []
    removed: list[str] = []
    with _dir_lock(directory, exclusive=True):
        live = sorted(glob.glob(str(directory / f"gauge_live*_{pid}.db")))
        mark_process_dead(pid, str(directory))
        removed += [os.path.basename(f) for f in live]
        for dead in sorted(glob.glob(str(directory / f"*_{pid}.db"))):
            prefix = os.path.basename(dead)[: -len(f"_{pid}.db")]
            if prefix not in _FOLDABLE:
                continue  # gauge modes StyleCast does not use: left as they are
            _fold_into_archive(MmapedDict, Path(dead), directory / f"{prefix}_archive.db", newest_wins=prefix == "gauge_mostrecent")
            os.remove(dead)
            removed.append(os.path.basename(dead))
    return removed


def _fold_into_archive(mmaped_dict: Any, dead: Path, archive: Path, *, newest_wins: bool) -> None:
    """Add a dead process's samples to the archive of the same type (for mostrecent gauges: keep the newest)."""
    values = mmaped_dict.read_all_values_from_file(str(dead))
    target = mmaped_dict(str(archive))
    try:
        for key, value, timestamp, _pos in values:
            old_value, old_timestamp = target.read_value(key)
            if newest_wins:
                if timestamp >= old_timestamp:
                    target.write_value(key, value, timestamp)
            else:
                target.write_value(key, old_value + value, 0.0)
    finally:
        target.close()
