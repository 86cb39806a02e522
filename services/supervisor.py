"""The supervisor: owns a run's shared memory and child processes, watches them and restarts the dead.

    python -m services.supervisor --config FILE      (or through `stylecast run` / `stylecast serve`)

Start: clean what a crashed run left, create the run directory and metrics directory, write the
settings the children read, start the GPU worker (and, once it says its refresh flows run on host
cores, the flow process), and once the worker has its models loaded add every configured stream:
probe the source, create the stream's rings, tell the worker, start egress (the stream's consumer)
and then ingest (its producer).

Watch: children send heartbeats; one that exits or goes silent past the timeout is restarted with
backoff, up to `service.max_restarts`; an exit code of EXIT_FAILED_STREAM means the stream's input
or output is unusable for good, so the stream is marked failed and the others keep running.

Stop: ingest first (no new frames), then the worker drains what it accepted and ends every stream,
egress finalises its files, then the rest go; every ring is unlinked and the run directory removed.
All socket work happens on the supervisor's own thread; other threads (the HTTP API) hand it calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from shared import sharding
from shared.bus import Bus, wait_readable
from shared.metrics import get_metrics, init_metrics_dir
from shared.process import EXIT_FAILED_STREAM, parse_detail, write_run_settings
from shared.protocol import (
    Ack,
    AddStream,
    Error,
    FrameDropped,
    Heartbeat,
    ProcessState,
    RemoveStream,
    SetPrompt,
    Stop,
    StreamState,
    StreamStatus,
)
from shared.ring import Ring
from shared.runtime import Run, cleanup_stale, finish_run, start_run
from shared.settings import Settings, StreamSettings, load_settings, redact_url

log = logging.getLogger("stylecast.supervisor")

READY_TIMEOUT_S = 1800.0  # model load + compile + graph capture of synthetic-full on a cold cache
CHILD_EXIT_TIMEOUT_S = 10.0


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (even by kill -9), so nothing is orphaned."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SupervisorError(RuntimeError):
    """The service cannot start or a request cannot be served; the message says why."""


@dataclasses.dataclass
class Child:
    name: str
    module: str
    args: list[str]
    stream: str | None = None
    worker: int = 0  # the GPU worker this process belongs to or feeds
    popen: subprocess.Popen | None = None
    log_path: Path | None = None
    restarts: int = 0
    last_heartbeat: float = 0.0
    state: str = "starting"
    detail: str = ""
    started: float = 0.0
    finished: bool = False  # exited on purpose (end of stream, stop): not restarted
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


def last_error(log_path: Path | None, tail_bytes: int = 16384) -> str:
    """The last exception line of a child's log ("ValueError: …; "), so a crash loop says why without a shell."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except (OSError, TypeError):
        return ""
    for line in reversed(lines):
        if line and not line[0].isspace() and ("Error" in line or "Exception" in line) and ":" in line:
            return f"{line.strip()[:300]}; "
    return ""


def silent_too_long(child: Child, now: float, svc) -> bool:
    """Whether a running child's silence means it hangs. One still starting (a GPU worker compiling and
    capturing) may starve its heartbeat thread for seconds at a time: it gets the start-up limit."""
    limit = svc.startup_timeout_s if child.state == ProcessState.STARTING else svc.heartbeat_timeout_s
    return now - child.last_heartbeat > limit and now - child.started > limit


@dataclasses.dataclass
class StreamRecord:
    cfg: StreamSettings
    fps: float
    frame_count: int | None
    state: StreamStatus = StreamStatus.STARTING
    reason: str = ""
    prompt_version: int = 1  # the API's count: 1 for the first prompt
    worker: int = 0  # the GPU worker serving it
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    rings: list[Ring] = dataclasses.field(default_factory=list)
    started_at: float = dataclasses.field(default_factory=time.time)


class Supervisor:
    def __init__(self, settings: Settings, *, exit_when_done: bool = False):
        self.settings = settings
        self.exit_when_done = exit_when_done
        self.children: dict[str, Child] = {}
        self.streams: dict[str, StreamRecord] = {}
        self.stop_requested = threading.Event()
        self.failure: str | None = None
        self.workers = gpu_workers(settings)
        self.ready_workers: set[int] = set()
        self.flow_backends: dict[int, str] = {}  # GPU worker → where its refresh flows run ("opencv": a flow process)
        self._calls: queue.Queue = queue.Queue()
        self._request_ids = itertools.count()
        self._acks: dict[str, Ack] = {}
        self._thread_id: int | None = None
        self._in_call = False  # calls run one at a time: a call waiting for an ack must not start another
        self.run: Run | None = None
        self.log_dir: Path | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        svc = self.settings.service
        report = cleanup_stale(svc.runtime_dir)
        if report.runs or report.segments:
            log.info("removed leftovers of crashed runs: %d run dir(s), %d segment(s)", len(report.runs), len(report.segments))
        self.run = start_run(svc.runtime_dir)
        self.log_dir = Path(svc.runtime_dir) / "logs" / self.run.run_id
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        init_metrics_dir(self.run.metrics_dir)
        self.metrics = get_metrics()
        self._streams_cfg = list(self.settings.streams)
        self.settings = self.settings.model_copy(update={"streams": []})  # streams join one by one
        write_run_settings(self.run, self.settings)
        self.bus = Bus(svc, self.run, process="supervisor")
        self.control = self.bus.socket("ROUTER", "control", bind=True)
        self.heartbeats = self.bus.socket("PULL", "heartbeat", bind=True)
        self.events = self.bus.socket("PULL", "drops", bind=True)
        self._thread_id = threading.get_ident()
        for k in range(self.workers):
            self._spawn(Child(_indexed("gpu", k), "services.gpu", ["--worker", str(k)], worker=k))
        log.info("%d GPU worker(s)", self.workers)

    @property
    def gpu_ready(self) -> bool:
        """Every GPU worker has its models loaded."""
        return len(self.ready_workers) == self.workers

    def host_flows(self, worker: int) -> bool:
        """Whether GPU worker `worker` has its refresh flows computed by a flow process (OpenCV on host cores);
        until the worker has said, assume so."""
        return self.flow_backends.get(worker, "opencv") == "opencv"

    @property
    def flows_ready(self) -> bool:
        """Every flow process a GPU worker relies on is up."""
        flows = [self.children.get(_indexed("flow", k)) for k in self.flow_backends if self.host_flows(k)]
        return all(child is not None and child.state == ProcessState.READY for child in flows)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block (serving the loop) until the GPU worker has its models (and its flow process, if it has one,
        is up); raises if it cannot start."""
        deadline = time.monotonic() + timeout_s
        while not (self.gpu_ready and self.flows_ready):
            if self.failure:
                raise SupervisorError(self.failure)
            if self.stop_requested.is_set():
                raise SupervisorError("stopped before the GPU worker was ready")
            if time.monotonic() > deadline:
                which, log_name = ("flow process", "flow.log") if self.gpu_ready else ("GPU worker", "gpu.log")
                raise SupervisorError(f"the {which} was not ready after {timeout_s:.0f} s (see {self.log_dir}/{log_name})")
            self.step(0.1)

    def add_configured_streams(self) -> None:
        """Add the streams of the settings file this replica owns; one that cannot start is marked failed,
        the others go on."""
        from services.ingest.errors import SourceError

        shard = self.shard()
        for cfg in self._streams_cfg:
            if not shard.owns(cfg.name):
                log.info("stream %s belongs to replica %d of %d", cfg.name, sharding.owner(cfg.name, shard.replicas),
                         shard.replicas)
                continue
            try:
                self.add_stream(cfg)
            except (SourceError, SupervisorError) as exc:
                log.error("stream %s cannot start: %s", cfg.name, exc)
                self.streams[cfg.name] = StreamRecord(cfg, 0.0, None, state=StreamStatus.FAILED, reason=str(exc))

    def shard(self) -> "sharding.Shard":
        """This replica's share of the configured streams (sharding settings, else the pod name)."""
        cfg = self.settings.sharding
        if cfg.ordinal is not None or cfg.replicas > 1:
            ordinal = cfg.ordinal if cfg.ordinal is not None else sharding.shard_from_env({
                "STYLECAST_POD_NAME": os.environ.get("STYLECAST_POD_NAME", "stylecast-0"),
                "STYLECAST_REPLICAS": str(cfg.replicas)}).ordinal
            return sharding.Shard(ordinal=ordinal, replicas=cfg.replicas)
        return sharding.shard_from_env()

    # ---- children ----------------------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, **self.run.env(), "PYTHONUNBUFFERED": "1", "STYLECAST_GPU_WORKERS": str(self.workers)}
        child.log_path = self.log_dir / f"{child.name}.log"
        logf = open(child.log_path, "ab")
        # Own session: a Ctrl-C in the terminal reaches the supervisor only, which then drains in order.
        child.popen = subprocess.Popen([sys.executable, "-m", child.module, *child.args], env=env, stdout=logf,
                                       stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        logf.close()
        child.started = child.last_heartbeat = time.monotonic()
        child.state, child.finished, child.restart_at = "starting", False, None
        self.children[child.name] = child
        log.info("started %s (pid %d)", child.name, child.popen.pid)

    def _stop_child(self, child: Child, timeout_s: float = CHILD_EXIT_TIMEOUT_S) -> None:
        child.finished = True
        if not child.alive():
            return
        child.popen.send_signal(signal.SIGTERM)
        try:
            child.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s: killing it", child.name, timeout_s)
            child.popen.kill()
            child.popen.wait()

    def _wait_child_state(self, name: str, state: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            child = self.children.get(name)
            if child and child.state == state:
                return
            if child is None or (child.popen and child.popen.poll() is not None and child.finished):
                raise SupervisorError(f"{name} exited before it was {state} (see {child.log_path if child else ''})")
            if time.monotonic() > deadline:
                raise SupervisorError(f"{name} was not {state} after {timeout_s:.0f} s")
            self.step(0.02)

    def _check_children(self) -> None:
        now_ = time.monotonic()
        svc = self.settings.service
        for child in list(self.children.values()):
            if child.finished:
                continue
            code = child.popen.poll() if child.popen else None
            if code is None and silent_too_long(child, now_, svc):
                log.error("%s sent no heartbeat for %.1f s%s: killing it", child.name, now_ - child.last_heartbeat,
                          " while starting" if child.state == ProcessState.STARTING else "")
                child.popen.kill()
                child.popen.wait()
                code = child.popen.returncode
            if code is None:
                continue
            if code == 0 and child.stream is not None:
                child.finished = True
                self._child_done(child)
                continue
            if code == EXIT_FAILED_STREAM:
                child.finished = True
                self._child_failed(child, f"{child.name} gave up (see {child.log_path})")
                continue
            if child.restart_at is None:
                if child.restarts >= self.settings.service.max_restarts:
                    child.finished = True
                    self._child_failed(child, f"{child.name} died {child.restarts + 1} times (last exit code {code}; "
                                              f"{last_error(child.log_path)}see {child.log_path})")
                    continue
                delay = min(0.5 * 2**child.restarts, 10.0)
                child.restart_at = now_ + delay
                log.warning("%s exited with code %s; restarting in %.1f s", child.name, code, delay)
            elif now_ >= child.restart_at:
                child.restarts += 1
                self.metrics.process_restarts.labels(child.name).inc()
                self._spawn(child)
                if child.module == "services.gpu":
                    self.ready_workers.discard(child.worker)

    def _child_done(self, child: Child) -> None:
        rec = self.streams.get(child.stream)
        if rec is None:
            return
        if child.module == "services.egress" and rec.state != StreamStatus.FAILED:
            rec.state = StreamStatus.STOPPED
            log.info("stream %s finished: %s", child.stream, rec.reason or "done")

    def _child_failed(self, child: Child, reason: str) -> None:
        if child.stream is None:
            self.failure = reason
            log.error("%s", reason)
            return
        rec = self.streams.get(child.stream)
        if rec is not None:
            rec.state, rec.reason = StreamStatus.FAILED, rec.reason or reason
            self.metrics.set_stream_state(child.stream, StreamStatus.FAILED)
            # The stream is over: its other process must not wait for frames that will never come.
            partner = "egress" if child.module == "services.ingest" else "ingest"
            other = self.children.get(f"{partner}-{child.stream}")
            if other is not None and partner == "ingest":
                self._stop_child(other)

    # ---- messages ----------------------------------------------------------------------------------------

    def step(self, timeout_s: float) -> None:
        """One turn of the loop: handle messages and calls, check children."""
        for channel in wait_readable([self.control, self.heartbeats, self.events], timeout_s):
            while (got := channel.recv_from(timeout_s=0)) is not None:
                sender, msg = got
                self._handle(msg)
        while not self._in_call:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                break
            self._in_call = True
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
            finally:
                self._in_call = False
        self._check_children()

    def _handle(self, msg) -> None:
        if isinstance(msg, Heartbeat):
            child = self.children.get(msg.process)
            if child is not None and child.pid == msg.pid:
                child.last_heartbeat = time.monotonic()
                child.state, child.detail = str(msg.state), msg.detail
                if child.module == "services.gpu":
                    self._note_flow_backend(child)
                    if msg.state == ProcessState.READY and child.worker not in self.ready_workers:
                        self._gpu_became_ready(child.worker)
        elif isinstance(msg, Ack):
            if msg.request_id:
                self._acks[msg.request_id] = msg
        elif isinstance(msg, StreamState):
            rec = self.streams.get(msg.stream)
            if rec is not None and rec.state != StreamStatus.FAILED:
                rec.state, rec.reason = msg.state, msg.reason
        elif isinstance(msg, FrameDropped):
            rec = self.streams.get(msg.stream)
            if rec is not None:
                rec.dropped[msg.reason] = rec.dropped.get(msg.reason, 0) + 1
        elif isinstance(msg, Error):
            log.error("%s: %s: %s", msg.process, msg.code, msg.message)
            rec = self.streams.get(msg.stream) if msg.stream else None
            if rec is not None:
                rec.reason = msg.message

    def _note_flow_backend(self, child: Child) -> None:
        """A GPU worker says where its refresh flows run before it loads its models: start its flow process
        then if they run on host cores (with flows on its device it needs none, nor flow rings)."""
        backend = parse_detail(child.detail).get("flows")
        if backend is None:
            return
        self.flow_backends[child.worker] = backend
        name = _indexed("flow", child.worker)
        if backend == "opencv" and name not in self.children:
            self._spawn(Child(name, "services.flow", ["--worker", str(child.worker)], worker=child.worker))

    def _gpu_became_ready(self, worker: int) -> None:
        self.ready_workers.add(worker)
        # A restarted worker knows no streams: tell it about its live ones again.
        for rec in self.streams.values():
            if rec.worker == worker and rec.state not in (StreamStatus.FAILED, StreamStatus.STOPPED):
                self._request(_indexed("gpu", worker), AddStream(request_id=self._rid(), stream=rec.cfg), wait=False)

    def _pick_worker(self) -> int:
        """The GPU worker with the fewest active streams (ties: the lowest index)."""
        load = [0] * self.workers
        for rec in self.streams.values():
            if rec.state not in (StreamStatus.FAILED, StreamStatus.STOPPED):
                load[rec.worker] += 1
        return min(range(self.workers), key=lambda k: (load[k], k))

    def _rid(self) -> str:
        return f"r{next(self._request_ids)}"

    def _request(self, process: str, msg, wait: bool = True, timeout_s: float = 30.0) -> Ack | None:
        if not self.control.send(msg, to=process.encode(), timeout_s=1.0):
            raise SupervisorError(f"{process} is not connected to the control socket")
        if not wait:
            return None
        deadline = time.monotonic() + timeout_s
        while msg.request_id not in self._acks:
            if time.monotonic() > deadline:
                raise SupervisorError(f"{process} did not answer {type(msg).__name__} in {timeout_s:.0f} s")
            self.step(0.01)
        ack = self._acks.pop(msg.request_id)
        if not ack.ok:
            raise SupervisorError(f"{process} refused {type(msg).__name__}: {ack.error}")
        return ack

    def call(self, fn, timeout_s: float = 120.0):
        """Run `fn` on the supervisor's thread (sockets are single-threaded) and return its result."""
        if threading.get_ident() == self._thread_id:
            return fn()
        future: Future = Future()
        self._calls.put((fn, future))
        return future.result(timeout_s)

    # ---- streams -----------------------------------------------------------------------------------------

    def probe(self, cfg: StreamSettings) -> tuple[float, int | None]:
        """Open the source once (any thread): a missing file, a non-video or an unreachable URL fails here."""
        from services.egress.h264 import MAX_FPS
        from services.ingest.errors import UnsupportedSource
        from services.ingest.sources import open_source

        ingest = self.settings.ingest
        with open_source(cfg.source.reveal(), size=self.settings.engine.size, live=cfg.live, pace=False,
                         connect_timeout_s=ingest.connect_timeout_s, read_timeout_s=ingest.read_timeout_s) as source:
            fps = float(source.fps or 30.0)
            if not 0 < fps <= MAX_FPS:  # the output is written at the source's rate: refuse it here, not in the egress
                raise UnsupportedSource(f"{source.name}: {fps:g} fps; streams are written at up to {MAX_FPS} fps")
            return fps, source.frame_count

    def add_stream(self, cfg: StreamSettings, probed: tuple[float, int | None] | None = None,
                   start: bool = True) -> StreamRecord:
        """Probe, create the rings, tell the GPU worker, start egress and (if `start`) ingest.

        `start=False` leaves the source closed until `start_stream`, so several streams can begin together."""
        if cfg.name in self.streams and self.streams[cfg.name].state not in (StreamStatus.STOPPED, StreamStatus.FAILED):
            raise SupervisorError(f"stream {cfg.name!r} already exists")
        if cfg.name in self.streams:
            self._drop_stream(cfg.name)
        fps, count = probed or self.probe(cfg)
        s = self.settings.engine.size
        slots = self.settings.stream_ring_slots()
        run = self.run.run_id
        rec = StreamRecord(cfg, fps, count, worker=self._pick_worker())
        gpu = _indexed("gpu", rec.worker)
        rec.rings = [
            Ring.create(run, cfg.name, "in", slots=slots, shape=(s, s, 3), dtype="u1"),
            Ring.create(run, cfg.name, "out", slots=slots, shape=(s, s, 3), dtype="u1"),
        ]
        if self.host_flows(rec.worker):  # where the flow process hands the refresh flows to the worker
            rec.rings.append(Ring.create(run, cfg.name, "flow", slots=2 * self.settings.engine.batch, shape=(s, s, 2), dtype="f4"))
        self.streams[cfg.name] = rec
        self.settings = self.settings.model_copy(update={"streams": [r.cfg for r in self.streams.values()]})
        write_run_settings(self.run, self.settings)
        try:
            self._request(gpu, AddStream(request_id=self._rid(), stream=cfg))
            worker_arg = ["--worker", str(rec.worker)]
            egress = Child(f"egress-{cfg.name}", "services.egress", ["--stream", cfg.name, "--fps", f"{fps:.6f}", *worker_arg],
                           stream=cfg.name, worker=rec.worker)
            self._spawn(egress)
            self._wait_child_state(egress.name, "ready", 60)
            if start:
                self.start_stream(cfg.name)
        except SupervisorError:
            self._drop_stream(cfg.name)
            raise
        rec.state = StreamStatus.STARTING
        log.info("stream %s added: %s, %.3g fps, on %s", cfg.name, redact_url(cfg.source.reveal()), fps, gpu)
        return rec

    def start_stream(self, name: str) -> None:
        """Start the stream's ingest: its frames begin to flow."""
        rec = self.streams[name]
        self._spawn(Child(f"ingest-{name}", "services.ingest", ["--stream", name, "--worker", str(rec.worker)],
                          stream=name, worker=rec.worker))

    def remove_stream(self, name: str) -> None:
        if name not in self.streams:
            raise KeyError(name)
        for prefix in ("ingest", "egress"):
            child = self.children.get(f"{prefix}-{name}")
            if child is not None:
                self._stop_child(child)
        worker = self.streams[name].worker
        if worker in self.ready_workers:
            try:
                self._request(_indexed("gpu", worker), RemoveStream(request_id=self._rid(), stream=name))
            except SupervisorError as exc:  # the worker forgets it anyway when it restarts
                log.warning("%s", exc)
        self._drop_stream(name)

    def _drop_stream(self, name: str) -> None:
        rec = self.streams.pop(name, None)
        for prefix in ("ingest", "egress"):
            self.children.pop(f"{prefix}-{name}", None)
        if rec is not None:
            for ring in rec.rings:
                ring.unlink()

    def set_prompt(self, name: str, prompt: str) -> StreamRecord:
        rec = self.streams[name]
        self._request(_indexed("gpu", rec.worker), SetPrompt(request_id=self._rid(), stream=name, prompt=prompt))
        rec.cfg = rec.cfg.model_copy(update={"prompt": prompt})
        rec.prompt_version += 1
        return rec

    def all_streams_done(self) -> bool:
        return bool(self.streams) and all(r.state in (StreamStatus.STOPPED, StreamStatus.FAILED) and
                                          not self._stream_children_alive(n) for n, r in self.streams.items())

    def _stream_children_alive(self, name: str) -> bool:
        return any(c.alive() for c in self.children.values() if c.stream == name)

    # ---- shutdown ----------------------------------------------------------------------------------------

    def shutdown(self, drain_timeout_s: float | None = None, on_drained=None) -> None:
        """Ingest stops, the worker drains, egress finalises; then everything else stops and is cleaned.

        `on_drained(run_dir)` runs once the children are gone, before the run directory is removed.
        """
        drain_timeout_s = drain_timeout_s if drain_timeout_s is not None else self.settings.service.drain_timeout_s
        try:
            for child in [c for c in self.children.values() if c.module == "services.ingest"]:
                self._stop_child(child)
            draining = False
            for k in sorted(self.ready_workers):
                gpu = self.children.get(_indexed("gpu", k))
                if gpu is None or not gpu.alive():
                    continue
                try:
                    self._request(gpu.name, Stop(request_id=self._rid(), drain=True, reason="shutdown"), timeout_s=10)
                    draining = True
                except SupervisorError as exc:
                    log.warning("drain request: %s", exc)
            if draining:
                deadline = time.monotonic() + drain_timeout_s
                while any(c.alive() for c in self.children.values() if c.module == "services.egress"):
                    if time.monotonic() > deadline:
                        log.warning("drain took longer than %.0f s", drain_timeout_s)
                        break
                    self.step(0.05)
            for child in list(self.children.values()):
                self._stop_child(child)
            if on_drained is not None and self.run is not None:
                on_drained(self.run.dir)
        finally:
            for name in list(self.streams):
                for ring in self.streams[name].rings:
                    ring.unlink()
                self.streams[name].rings = []
            if getattr(self, "bus", None) is not None:
                self.bus.close(linger_ms=0)
                self.bus = None
            if self.run is not None:
                finish_run(self.run)

    def summary_streams(self) -> dict[str, dict]:
        return {name: {"state": str(r.state), "reason": r.reason, "dropped": dict(r.dropped), "fps": r.fps,
                       "frame_count": r.frame_count, "prompt_version": r.prompt_version, "gpu_worker": r.worker}
                for name, r in self.streams.items()}


def _indexed(name: str, worker: int) -> str:
    """Process name of a per-GPU-worker process: 'gpu', 'gpu-1', …; 'flow', 'flow-1', …"""
    return name if worker == 0 else f"{name}-{worker}"


def gpu_workers(settings: Settings) -> int:
    """How many GPU workers this node runs: one on the CPU, else `model.gpus` (0: one per visible GPU)."""
    if settings.model.device == "cpu":
        return settings.model.gpus or 1  # several CPU workers: the same plumbing, testable without GPUs
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = len([d for d in visible.split(",") if d.strip()]) if visible is not None else len(
        [p for p in Path("/dev").glob("nvidia[0-9]*")])
    if count == 0 and settings.model.device == "auto":
        return 1  # no GPU: the one worker runs on the CPU
    if settings.model.gpus == 0:
        return max(1, count)
    if settings.model.gpus > 1 and settings.model.gpus > count:
        raise SupervisorError(f"model.gpus is {settings.model.gpus}, but this node has {count} visible CUDA GPU(s)")
    return settings.model.gpus


def serve_forever(supervisor: Supervisor) -> None:
    """Run the supervisor loop until a stop is asked for (signals) or, in run mode, every stream is done."""
    while not supervisor.stop_requested.is_set():
        supervisor.step(0.05)
        if supervisor.failure:
            raise SupervisorError(supervisor.failure)
        if supervisor.exit_when_done and supervisor.all_streams_done():
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML settings file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    settings = load_settings(args.config)
    sup = Supervisor(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.stop_requested.set())
    try:
        sup.start()
        sup.wait_ready()
        sup.add_configured_streams()
        serve_forever(sup)
    except SupervisorError as exc:
        log.error("%s", exc)
        return 1
    finally:
        sup.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
