"""The GPU worker process: hosts the StreamEngine and serves every stream of the node.

Frames of all streams arrive on one socket; each stream keeps its own queue. Batches are formed
latency-aware: dispatch when B frames wait, when nothing is in flight and a live stream waits, when the
oldest has waited `max_batch_wait_ms` and at most one batch is on the GPU (none, when only file streams
wait), or when a stream ends; frames of
several streams share a batch, oldest first, each stream's frames in order; a partial batch pads to the
smallest configured bucket that fits. Finished batches are written to the streams' output rings and
announced to their egress processes.

Credits keep file streams lossless: input slots are released once their frames are copied (the last
frame of each stream is kept one batch longer, as the next refresh's flow source, and a refresh
batch's frames until the flow process answered); an output slot is written only when egress has
released one (live streams never wait: egress counts what it lost). Live streams whose queue grows
past two batches drop their oldest frames, counted ('behind'); with `engine.live_max_queue_ms` set, so do
live frames that waited longer than that ('late').
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from services.gpu.engine import (
    BatchOutput,
    EngineConfig,
    EngineError,
    StreamEngine,
    release_compile_workers,
    resolve_flow_backend,
)
from services.gpu.profiles import load_profile, resolve_device
from services.gpu.refresh_policy import refresh_size, refresh_sizes
from services.gpu.worker_stats import WorkerStats
from shared.bus import wait_readable
from shared.process import ChildProcess
from shared.protocol import (
    Ack,
    AddStream,
    FlowReady,
    FlowRequest,
    Frame,
    FrameFlags,
    ProcessState,
    RemoveStream,
    SetPrompt,
    SlotRef,
    Stop,
    StreamState,
    StreamStatus,
    Styled,
    now,
)
from shared.ring import Ring, RingError, StaleSlot
from shared.settings import Settings

log = logging.getLogger("stylecast.gpu")

FLOW_TIMEOUT_S = 3.0


def engine_config(settings: Settings, cuda: bool) -> EngineConfig:
    e, m = settings.engine, settings.model
    compile_mode = m.compile_mode if m.compile_mode != "auto" else ("default" if cuda else "none")
    return EngineConfig(
        size=e.size, batch=e.batch, steps=e.steps, hooks=e.lllite_hooks,
        adapter_weights=str(e.lllite_weights) if e.lllite_weights else None, multiplier=e.lllite_multiplier,
        cond_refresh=e.cond_refresh, te_mode=e.text_encoder_mode, te_refresh=e.text_encoder_refresh,
        encoder_size=e.encoder_image_size, compile=compile_mode, compile_parts=tuple(m.compile_parts),
        autotune=tuple(m.autotune), compile_buckets=m.compile_buckets, compile_refresh=m.compile_refresh, fp8=tuple(m.fp8),
        fused_qkv=m.fused_qkv, group_norm=m.group_norm, depthwise=m.depthwise,
        cross_attention=m.cross_attention, token_shapes=m.token_shapes, token_graphs=m.token_graphs,
        channels_last=tuple(m.channels_last), cuda_graphs=m.cuda_graphs, flow_timeout_s=FLOW_TIMEOUT_S,
        buckets=tuple(e.buckets), pipeline_depth=e.pipeline_depth, flow_backend=e.flow_backend,
        cuda_streams=e.cuda_streams,
    )


class FlowClient:
    """The engine's flow provider in the service: asks the flow process, reads answers from the flow ring."""

    def __init__(self, proc: ChildProcess, size: int, worker: int = 0):
        self.proc = proc
        self.size = size
        self.worker = worker
        self.requests = proc.bus.socket("PUSH", "flow_requests", bind=True, worker=worker)
        self._pending: dict[tuple[str, int], tuple[Future, int, float]] = {}  # → (future, source seq, sent at)
        self.timeout_s = FLOW_TIMEOUT_S
        self._lock = threading.Lock()
        self._next_id = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._answers, name="flow-answers", daemon=True)
        self._thread.start()

    def submit(self, previous, currents, refs=None) -> Future:
        future: Future = Future()
        if refs is None or refs.get("source") is None:
            future.set_exception(RuntimeError("no previous frame to compute a flow from"))
            return future
        with self._lock:
            batch_id = self._next_id
            self._next_id += 1
            key = (refs["stream"], batch_id)
            self._pending[key] = (future, refs["source"].seq, time.monotonic())
        req = FlowRequest(stream=refs["stream"], batch_id=batch_id, source=refs["source"], targets=refs["targets"])
        if not self.requests.send(req, timeout_s=1.0):
            with self._lock:
                self._pending.pop(key, None)
            future.set_exception(RuntimeError("the flow process is not taking requests"))
        return future

    def holds(self, stream: str) -> int | None:
        """Seq of the oldest frame a pending flow of `stream` still has to read, if any."""
        now_ = time.monotonic()
        with self._lock:
            # A request the flow process never answered (it died) stops holding frames after the timeout.
            for key, (future, _, sent) in list(self._pending.items()):
                if now_ - sent > self.timeout_s:
                    del self._pending[key]
                    if not future.done():
                        future.set_exception(TimeoutError("the flow process did not answer"))
            seqs = [seq for (name, _), (_, seq, _) in self._pending.items() if name == stream]
        return min(seqs) if seqs else None

    def _answers(self) -> None:
        answers = self.proc.bus.socket("PULL", "flow_ready", bind=True, worker=self.worker)
        try:
            while not self._done.is_set():
                msg = answers.recv(timeout_s=0.2, expect=(FlowReady,))
                if msg is None:
                    continue
                with self._lock:
                    entry = self._pending.pop((msg.stream, msg.batch_id), None)
                if entry is None:
                    continue
                future = entry[0]
                if msg.failed:
                    future.set_exception(RuntimeError(msg.failed))
                    continue
                try:
                    ring = Ring.attach(self.proc.run.run_id, msg.stream, "flow", shape=(self.size, self.size, 2), dtype="f4")
                    with ring:
                        future.set_result(np.stack([ring.read(t.slot, t.generation) for t in msg.targets]))
                except (StaleSlot, RingError) as exc:
                    future.set_exception(exc)
        finally:
            answers.close(linger_ms=0)

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)


@dataclass
class WorkerStream:
    name: str
    live: bool
    in_ring: Ring
    out_ring: Ring
    queue: collections.deque = field(default_factory=collections.deque)  # Frame messages waiting
    ending: bool = False  # the source ended: flush, then send the end marker
    in_flight: int = 0  # frames submitted, not yet written out
    last_ref: SlotRef | None = None  # previous batch's last frame: the next refresh's flow source
    prompt_version: int = 1  # as the API counts: 1 for the first prompt
    removed: bool = False
    refreshes_seen: int = 0
    next_seq: int = 0  # next frame expected: anything below was queued already (restart re-scan)
    outputs: collections.deque = field(default_factory=collections.deque)  # styled, waiting for room in the out ring
    written_seq: int = -1  # last frame whose output went to egress


@dataclass
class BatchMeta:
    batch_id: int
    rows: list[tuple[WorkerStream, Frame]]
    versions: dict[str, int]


def dispatch_due(waiting: int, batch: int, in_flight: int, oldest_wait_s: float, max_wait_s: float, flushing: bool,
                 live: bool = True) -> bool:
    """Whether the frames waiting make a batch now (the caller has checked there is room in the pipeline).

    An idle GPU takes what waits at once when a live stream waits (`live`): a lone camera's frame never
    waits for company that may not come. Under load, batches fill while earlier ones run, so this costs no
    throughput. When only lossless (file) streams wait, there is no camera to keep up with, so an idle GPU
    gives their frames up to `max_wait_s` to fill the batch: a file's first frames otherwise went as a 1-row batch, then a
    13- and a 14-row one, each at the cost of a full bucket (B=16 on an H100, 2026-11-27). A frame past its
    deadline goes in a partial batch only while at most one batch is on the GPU (a live stream waits) or none is
    (only lossless streams wait): with more queued ahead it would not start sooner, and a partial batch costs a
    full bucket's work (at B=16 on an H100 the service ran 35 batches of 13.7 frames on average for 480 frames,
    each at the cost of 16; later two 6-row batches went beside a running one while the file's first half second
    was read more slowly than the GPU ran). Lossless frames have no camera's latency to keep, so they fill
    the batch while one runs and go partial only to keep the GPU from idling.
    """
    late = oldest_wait_s >= max_wait_s and in_flight <= (1 if live else 0)
    return waiting >= batch or (in_flight == 0 and live) or late or flushing


def warm_up_sizes(buckets: list[int], batch: int, refreshes: bool) -> list[int]:
    """Batch sizes the warm-up runs (two batches each, the second refreshing): every bucket, then, with an adapter,
    every refresh size (refresh_size) that no bucket's own refresh covers: a stream's share of a mixed batch
    may take any of them, and its first use must not compile or capture while streams wait."""
    sizes = list(buckets)
    if refreshes:
        covered = {refresh_size(bucket, batch) for bucket in buckets}
        sizes += [size for size in refresh_sizes(batch) if size not in covered]
    return sizes


def refresh_flags(settings: Settings) -> FrameFlags:
    """Frame flags that make the worker rebuild a stream's conditioning at that batch (and the next).

    A gap always does (the previous output is of another moment); a scene cut when configured to."""
    cut = FrameFlags.SCENE_CUT if settings.engine.refresh_on_scene_cut else FrameFlags.NONE
    return FrameFlags.DISCONTINUITY | cut


def worker_device(device: str, worker: int, workers: int) -> str:
    """The device GPU worker `worker` runs on: with several workers, one GPU each (cuda:<worker>)."""
    if workers == 1 or device == "cpu":
        return device
    return f"cuda:{worker}"


class GpuWorker:
    def __init__(self, proc: ChildProcess, worker: int = 0):
        self.proc = proc
        self.worker = worker
        s = proc.settings
        self.size = s.engine.size
        self.batch = s.engine.batch
        self.max_wait = s.engine.max_batch_wait_ms / 1000
        self.live_max_queue = None if s.engine.live_max_queue_ms is None else s.engine.live_max_queue_ms / 1000
        self.frames = proc.bus.socket("PULL", "frames", bind=True, worker=worker)
        self.styled = proc.bus.socket("PUB", "styled", bind=True, worker=worker)
        self.control = proc.bus.socket("DEALER", "control", bind=False, identity=proc.name.encode())
        self.streams: dict[str, WorkerStream] = {}
        self.results: queue.Queue = queue.Queue()
        self.in_flight = 0
        self.next_batch = 0
        self.draining = False
        self.stats = WorkerStats(on_wait=lambda reason, seconds: self.proc.metrics.dispatch_wait.labels(
            self.device, reason).inc(seconds))
        self.refresh_flags = refresh_flags(s)
        # Test-only fault injection: pretend every batch takes this much longer (a GPU slower than its sources).
        self.fault_delay_s = float(os.environ.get("STYLECAST_FAULT_GPU_DELAY_MS", "0")) / 1000
        workers = int(os.environ.get("STYLECAST_GPU_WORKERS", "1"))
        device = worker_device(s.model.device, worker, workers)
        if device != "cpu":  # host-side torch work is small: don't let every worker spawn a thread per core
            torch.set_num_threads(max(1, min(4, (os.cpu_count() or 4) // (4 * workers))))
        # Said before the models load: the supervisor starts the flow process only for flows on host cores.
        self.flow_backend = resolve_flow_backend(s.engine.flow_backend, resolve_device(device).type == "cuda")
        proc.set_state(ProcessState.STARTING, f"flows={self.flow_backend}")
        bundle = load_profile(s.model.profile, device, s.model.dtype, taesd_path=s.model.taesd_path, seed=s.engine.seed)
        self.device = str(bundle.device)
        self.flows = FlowClient(proc, self.size, worker) if self.flow_backend == "opencv" else None
        self.engine = StreamEngine(engine_config(s, bundle.device.type == "cuda"), bundle, flow_provider=self.flows)
        self._warm_up()
        log.info("engine ready: %s, %s", bundle.describe(), self.engine.config)

    def _warm_up(self) -> None:
        """Compile and capture every batch shape before saying READY, so no stream pays for it."""
        rng = np.random.default_rng(0)
        for size in warm_up_sizes(self.engine.buckets, self.batch, refreshes=self.engine.adapter is not None):
            self.engine.open_stream("__warmup__", "make it an oil painting")
            for _ in range(2):  # the second batch of a stream takes the adapter's refresh path
                frames = rng.integers(0, 255, (size, self.size, self.size, 3), dtype=np.uint8)
                self.engine.submit(frames, "__warmup__").result()
            self.engine.close_stream("__warmup__")
        self.engine.counters = dict.fromkeys(self.engine.counters, 0)
        if self.engine.compiled:
            release_compile_workers()

    # ---- control ---------------------------------------------------------------------------------------

    def _handle_control(self, msg) -> None:
        ok, error = True, None
        try:
            if isinstance(msg, AddStream):
                self._add_stream(msg.stream)
            elif isinstance(msg, RemoveStream):
                self._remove_stream(msg.stream)
            elif isinstance(msg, SetPrompt):
                st = self._stream(msg.stream)
                self.engine.set_prompt(msg.stream, msg.prompt)
                st.prompt_version += 1
                log.info("stream %s: prompt version %d from the next batch", msg.stream, st.prompt_version)
            elif isinstance(msg, Stop):
                self.draining = True
                if not msg.drain:
                    self.proc.stop.set()
        except (EngineError, KeyError, RingError, ValueError) as exc:
            ok, error = False, str(exc)
        self.control.send(Ack(request_id=msg.request_id, ok=ok, error=error))

    def _stream(self, name: str) -> WorkerStream:
        if name not in self.streams:
            raise KeyError(f"unknown stream {name!r}")
        return self.streams[name]

    def _add_stream(self, cfg) -> None:
        if cfg.name in self.streams:
            self._remove_stream(cfg.name)  # a re-sent AddStream (e.g. after a supervisor restart) starts it afresh
        run = self.proc.run.run_id
        shape = (self.size, self.size, 3)
        in_ring = Ring.attach(run, cfg.name, "in", shape=shape, dtype="u1")
        out_ring = Ring.attach(run, cfg.name, "out", shape=shape, dtype="u1")
        live = cfg.live if cfg.live is not None else cfg.kind != "file"
        seed = cfg.seed if cfg.seed is not None else self.proc.settings.engine.seed
        self.engine.open_stream(cfg.name, cfg.prompt, seed=seed)
        st = WorkerStream(cfg.name, live, in_ring, out_ring)
        self.streams[cfg.name] = st
        self._recover(st)
        self.engine.streams[cfg.name].next_index = st.queue[0].seq if st.queue else in_ring.written
        log.info("stream %s added (%s)%s", cfg.name, "live" if live else "lossless",
                 f", {len(st.queue)} unfinished frame(s) picked up from the ring" if st.queue else "")

    def _recover(self, st: WorkerStream) -> None:
        """A restarted worker redoes the frames its predecessor took but never wrote out: they are still in
        the input ring (released only once written). Their Frame messages died with it; the ring's slot
        headers hold what is needed to rebuild them."""
        ring = st.in_ring
        st.next_seq = ring.released
        for seq in range(ring.released, ring.written):
            slot = seq % ring.slots
            try:
                header = ring.peek(slot)
            except StaleSlot:  # being overwritten right now: a live source lapped it
                continue
            if header is None or header.seq != seq:
                continue  # overwritten (live source): that frame is gone, and counted when it is missed
            flags = FrameFlags.DISCONTINUITY if not st.queue else FrameFlags.NONE
            st.queue.append(Frame(stream=st.name, seq=seq, slot=slot, generation=header.generation,
                                  t_capture=header.times[0], t_ingest=header.times[1], flags=int(flags)))
            st.next_seq = seq + 1

    def _remove_stream(self, name: str) -> None:
        st = self._stream(name)
        st.removed = True
        for msg in st.queue:  # accepted but never styled: counted, not lost silently
            self.proc.dropped(name, msg.seq, "gpu", "removed")
        st.queue.clear()
        self.engine.close_stream(name)
        del self.streams[name]
        if not st.in_flight:
            self._close_rings(st)

    @staticmethod
    def _close_rings(st: WorkerStream) -> None:
        st.in_ring.close()
        st.out_ring.close()

    # ---- input -----------------------------------------------------------------------------------------

    def _handle_frame(self, msg) -> None:
        st = self.streams.get(msg.stream)
        if st is None:
            return  # a stream removed a moment ago
        if self.draining and isinstance(msg, Frame):  # shutting down: accepted frames finish, new ones are counted
            self.proc.dropped(st.name, msg.seq, "gpu", "shutdown")
            return
        if isinstance(msg, StreamState):  # the source ended (or failed): flush what is queued
            st.ending = True
            return
        if msg.seq < st.next_seq:  # already queued from the ring after a restart
            return
        st.next_seq = msg.seq + 1
        st.queue.append(msg)
        limit = 2 * self.batch
        while st.live and len(st.queue) > limit:  # behind on a live source: the oldest frame goes
            old = st.queue.popleft()
            self.proc.dropped(st.name, old.seq, "gpu", "behind")
        self.proc.metrics.queue_depth.labels(st.name, "gpu").set(len(st.queue))

    def _shed_late(self) -> None:
        """Drop live frames that have waited past `live_max_queue_ms` (counted as 'late'): a batch of them would come
        out later still, and the newer frames behind them would wait for it."""
        if self.live_max_queue is None:
            return
        oldest_kept = now() - self.live_max_queue
        for st in (s for s in self.streams.values() if s.live):
            shed = 0
            while st.queue and st.queue[0].t_ingest < oldest_kept:
                self.proc.dropped(st.name, st.queue.popleft().seq, "gpu", "late")
                shed += 1
            if shed:
                self.proc.metrics.queue_depth.labels(st.name, "gpu").set(len(st.queue))

    def _dispatch_block(self) -> str | None:
        """Why no batch goes out now (None: one does). The loop adds up the time spent in each state."""
        self._shed_late()
        queued = [st for st in self.streams.values() if st.queue]
        if not queued:
            return "no_frames"
        waiting = [st for st in queued if len(st.outputs) < self.batch]
        if not waiting:
            return "output_full"  # every stream with frames waits for its egress to make room
        if self.in_flight >= self.engine.config.pipeline_depth + 1:
            return "in_flight"
        due = dispatch_due(
            waiting=sum(len(st.queue) for st in waiting), batch=self.batch, in_flight=self.in_flight,
            oldest_wait_s=now() - min(st.queue[0].t_ingest for st in waiting), max_wait_s=self.max_wait,
            flushing=self.draining or any(st.ending for st in waiting), live=any(st.live for st in waiting),
        )
        return None if due else "filling"

    def _dispatch(self) -> str:
        """Submit batches while one is due; returns why the next one is not (see _dispatch_block)."""
        while (block := self._dispatch_block()) is None:
            parts, refs, rows = [], {}, []
            budget = self.batch
            for st in sorted((s for s in self.streams.values() if s.queue and len(s.outputs) < self.batch),
                             key=lambda s: s.queue[0].t_ingest):
                if not budget:
                    break
                frames = np.empty((min(budget, len(st.queue)), self.size, self.size, 3), np.uint8)
                msgs = []
                while st.queue and budget:
                    msg = st.queue.popleft()
                    try:  # straight into the batch array: one copy out of shared memory
                        st.in_ring.read(msg.slot, msg.generation, out=frames[len(msgs)])
                    except StaleSlot:
                        self.proc.dropped(st.name, msg.seq, "gpu", "overwritten")
                        continue
                    msgs.append(msg)
                    budget -= 1
                if not msgs:
                    continue
                if any(m.flags & self.refresh_flags for m in msgs):
                    self.engine.streams[st.name].force_refresh = True
                targets = [SlotRef(seq=m.seq, slot=m.slot, generation=m.generation) for m in msgs]
                refs[st.name] = {"stream": st.name, "source": st.last_ref, "targets": targets}
                parts.append((st.name, frames[: len(msgs)]))
                rows += [(st, m) for m in msgs]
                st.last_ref = targets[-1]
                st.in_flight += len(msgs)
            if not parts:
                continue  # every frame taken was overwritten (counted): the queues they came from are empty now
            meta = BatchMeta(self.next_batch, rows, {st.name: st.prompt_version for st, _ in rows})
            for name, version in meta.versions.items():  # what the encoder is fed from this batch on
                self.proc.metrics.prompt_version.labels(name).set(version)
            self.next_batch += 1
            t0 = time.monotonic()
            future = self.engine.submit_mixed(parts, refs)
            if self.fault_delay_s:
                time.sleep(self.fault_delay_s)
            self.in_flight += 1
            log.debug("batch %d: %s submitted in %.1f ms", meta.batch_id, {n: len(f) for n, f in parts}, (time.monotonic() - t0) * 1e3)
            future.add_done_callback(lambda f, meta=meta: self.results.put((meta, f)))
            self.proc.metrics.batch_size.labels(self.device).observe(len(rows))
            for st in {st.name: st for st, _ in rows}.values():
                self._release_inputs(st)
        return block

    def _release_inputs(self, st: WorkerStream) -> None:
        """Free input slots once their frames are written out (so a restarted worker can redo the rest),
        keeping the last dispatched frame (the next refresh's flow source) and what a pending flow reads."""
        if st.last_ref is None:
            return
        keep = min(st.last_ref.seq, st.written_seq + 1)
        held = self.flows.holds(st.name) if self.flows is not None else None
        if held is not None:
            keep = min(keep, held)
        st.in_ring.release(keep)  # seq == write index on input rings

    # ---- output ----------------------------------------------------------------------------------------

    def _collect(self) -> None:
        """Finished batches go row by row into each stream's output queue; each stream then writes what its
        egress has room for. A stream whose egress is behind (or restarting) holds only its own frames."""
        while True:
            try:
                meta, future = self.results.get_nowait()
            except queue.Empty:
                break
            self.in_flight -= 1
            self._unpack(meta, future)
        for st in list(self.streams.values()):
            self._write_out(st)
            self._release_inputs(st)
            if st.ending and not st.queue and not st.in_flight:
                self._end_stream(st)

    def _unpack(self, meta: BatchMeta, future) -> None:
        exc = future.exception()
        if exc is not None:
            log.error("batch %d failed: %s", meta.batch_id, exc)
            for st, msg in meta.rows:
                self.proc.dropped(st.name, msg.seq, "gpu", "error")
                st.in_flight -= 1
            return
        out: BatchOutput = future.result()
        timings = out.timings
        t_start, t_done = timings["t_submit"], timings["t_done"]
        times = (t_start, max(t_start, t_done - timings.get("main_ms", 0.0) / 1000), t_done)
        for row, (st, msg) in enumerate(meta.rows):
            if st.removed:
                self.proc.dropped(st.name, msg.seq, "gpu", "removed")
                st.in_flight -= 1
                if not st.in_flight:
                    self._close_rings(st)
                continue
            st.outputs.append((msg, out.frames[row], times, meta.batch_id, meta.versions[st.name]))
        for st in {st.name: st for st, _ in meta.rows}.values():
            engine_state = self.engine.streams.get(st.name)
            if engine_state is not None and engine_state.refreshes > st.refreshes_seen:
                self.proc.metrics.cond_refreshes.labels(st.name, "scheduled").inc(engine_state.refreshes - st.refreshes_seen)
                st.refreshes_seen = engine_state.refreshes
        self.proc.metrics.batch_wall.labels(self.device, "side").observe(timings.get("side_ms", 0.0) / 1000)
        self.proc.metrics.batch_wall.labels(self.device, "main").observe(timings.get("main_ms", 0.0) / 1000)
        if "main_gap_ms" in timings:
            self.proc.metrics.main_idle.labels(self.device).observe(max(0.0, timings["main_gap_ms"]) / 1000)
        self.stats.batch(len(meta.rows), out.bucket, timings)

    def _write_out(self, st: WorkerStream) -> None:
        while st.outputs:
            if not st.live and not st.out_ring.has_space():
                return  # lossless: wait for this stream's egress, the others go on
            msg, frame, (t_start, t_side, t_done), batch_id, version = st.outputs.popleft()
            # The times let a restarted egress rebuild what it missed from the ring alone.
            slot, generation = st.out_ring.write(frame, msg.seq, times=(msg.t_capture, msg.t_ingest, t_start, t_done))
            self.styled.send(Styled(
                stream=st.name, seq=msg.seq, slot=slot, generation=generation, batch_id=batch_id,
                t_capture=msg.t_capture, t_ingest=msg.t_ingest, t_batch_start=t_start, t_side_done=t_side,
                t_main_done=t_done, flags=msg.flags, pts=msg.pts, prompt_version=version,
            ), topic=st.name, timeout_s=None)
            self.proc.metrics.count_frames(st.name, "gpu", "processed")
            st.written_seq = msg.seq
            st.in_flight -= 1

    def _end_stream(self, st: WorkerStream) -> None:
        """All of an ended stream's frames are out: tell its egress, then forget the stream."""
        st.out_ring.mark_ended()  # for an egress restarted after the message below went out
        self.styled.send(StreamState(stream=st.name, state=StreamStatus.STOPPED, reason="end_of_stream", time=now()),
                         topic=st.name, timeout_s=None)
        log.info("stream %s ended", st.name)
        self.engine.close_stream(st.name)
        del self.streams[st.name]
        self._close_rings(st)

    # ---- loop --------------------------------------------------------------------------------------------

    def run(self) -> int:
        self.proc.set_state(ProcessState.READY, f"device={self.device} flows={self.flow_backend}")
        channels = [self.frames, self.control]
        drain_deadline = None
        while True:
            if self.proc.orphaned.is_set():
                log.error("no supervisor: leaving without draining (%d batch(es) in flight)", self.in_flight)
                break
            if self.proc.stop.is_set():
                self.draining = True  # SIGTERM drains too: what was accepted is written or counted
                drain_deadline = drain_deadline or time.monotonic() + self.proc.settings.service.drain_timeout_s
                if time.monotonic() > drain_deadline:
                    log.error("drain did not finish within %.0f s; leaving", self.proc.settings.service.drain_timeout_s)
                    break
            busy = self.in_flight or any(st.queue for st in self.streams.values())
            if self.draining and not busy:
                while (msg := self.frames.recv(timeout_s=0.05)) is not None:  # frames that raced the stop: counted
                    self._handle_frame(msg)
                for st in list(self.streams.values()):
                    self._end_stream(st)
                break
            for channel in wait_readable(channels, 0.002 if busy else 0.05):
                for _ in range(256):  # drain what is there without starving the other socket
                    msg = channel.recv(timeout_s=0)
                    if msg is None:
                        break
                    if channel is self.control:
                        self._handle_control(msg)
                    else:
                        self._handle_frame(msg)
            self._collect()
            self.stats.state(self._dispatch(), busy=bool(self.in_flight))
            if self.device.startswith("cuda"):
                self.proc.metrics.gpu_memory.labels(self.device, "allocated").set(torch.cuda.memory_allocated())
        self.engine.close()
        if self.flows is not None:
            self.flows.close()
        self.proc.write_summary(self.stats.summary() | {"refreshes": self.engine.counters["refreshes"],
                                                         "refresh_failures": self.engine.counters["refresh_failures"],
                                                         "flow_backend": self.engine.flow_backend})
        return 0
