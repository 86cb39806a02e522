"""The HTTP API's ControlPlane, served by the supervisor.

API requests arrive on the web server's threads; everything that touches the supervisor's sockets
or state runs on the supervisor's own thread through `Supervisor.call`. Probing a new source (which
may wait for a camera's connect timeout) runs on the request's thread, before that hand-over.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime, timezone

import numpy as np

from services.api.control import (
    ControlUnavailable,
    FrameCounters,
    HealthInfo,
    LatencyPercentiles,
    ProcessHealth,
    ReadyInfo,
    SinkInfo,
    StreamExists,
    StreamInfo,
    StreamRejected,
    UnknownStream,
)
from services.ingest.errors import SourceError
from services.supervisor import StreamRecord, Supervisor, SupervisorError
from shared.process import parse_detail
from shared.ring import Ring, StaleSlot
from shared.settings import StreamSettings

FPS_WINDOW_S = 5.0
# The preview must not wait behind a long supervisor call (adding a stream can take a minute).
PREVIEW_TIMEOUT_S = 2.0
PREVIEW_RING_KINDS = {"input": "in", "output": "out"}  # preview side -> ring kind of the stream


class SupervisorControl:
    def __init__(self, supervisor: Supervisor):
        self.sup = supervisor
        self._samples: dict[str, deque] = {}  # stream → (time, frames written) for a recent fps

    # ---- reads -----------------------------------------------------------------------------------------

    def list_streams(self) -> list[StreamInfo]:
        return self._call(lambda: [self._info(name) for name in self.sup.streams])

    def get_stream(self, name: str) -> StreamInfo:
        return self._call(lambda: self._info(name))

    def health(self) -> HealthInfo:
        def collect():
            now_ = time.monotonic()
            procs = [ProcessHealth(name="supervisor", pid=_own_pid(), state="ready", heartbeat_age_s=0.0)]
            for child in self.sup.children.values():
                state = child.state if child.alive() else ("restarting" if child.restart_at else "stopped")
                procs.append(ProcessHealth(
                    name=child.name, pid=child.pid if child.alive() else None, state=state,
                    heartbeat_age_s=max(0.0, now_ - child.last_heartbeat), restarts=child.restarts, detail=child.detail,
                ))
            return HealthInfo(processes=procs)

        return self._call(collect)

    def ready(self) -> ReadyInfo:
        def check():
            if self.sup.failure:
                return ReadyInfo(ready=False, reason=self.sup.failure)
            workers = [c for c in self.sup.children.values() if c.module == "services.gpu"]
            devices = ", ".join(parse_detail(c.detail).get("device", "?") for c in workers)
            if self.sup.gpu_ready:
                return ReadyInfo(ready=True, reason=f"{len(workers)} GPU worker(s) ready ({devices})")
            waiting = [c.name for c in workers if c.worker not in self.sup.ready_workers]
            return ReadyInfo(ready=False, reason=f"gpu worker: loading models ({', '.join(waiting) or 'not started'})")

        return self._call(check)

    def latest_frame(self, name: str, side: str) -> np.ndarray | None:
        """The newest frame of the stream's input or output ring (a copy), None before the first.

        Read on the supervisor's thread: it owns the rings and unlinks them when a stream goes, so
        no ring can be closed under a read.
        """
        kind = PREVIEW_RING_KINDS.get(side)
        if kind is None:
            raise ValueError(f"preview side must be one of {sorted(PREVIEW_RING_KINDS)}, got {side!r}")

        def read():
            rec = self.sup.streams.get(name)
            if rec is None:
                raise UnknownStream(name)
            ring = next((r for r in rec.rings if r.name.endswith(f"-{kind}")), None)
            if ring is None:  # a stream that failed before its rings were made
                return None
            frame, complete = newest_frame(ring)
            if frame is None and not complete:
                raise ControlUnavailable(f"stream {name!r}: the newest {side} frames were overwritten while read; try again")
            return frame

        return self._call(read, timeout_s=PREVIEW_TIMEOUT_S)

    # ---- changes ---------------------------------------------------------------------------------------

    def add_stream(self, stream: StreamSettings) -> StreamInfo:
        if self._call(lambda: stream.name in self.sup.streams and self.sup.streams[stream.name].state not in ("stopped", "failed")):
            raise StreamExists(stream.name)
        if not self._call(lambda: self.sup.gpu_ready):
            raise ControlUnavailable("the GPU worker is not ready yet (see /readyz)")
        try:
            probed = self.sup.probe(stream)  # on this thread: a camera may take its connect timeout
        except SourceError as exc:
            raise StreamRejected(str(exc)) from None
        try:
            self._call(lambda: self.sup.add_stream(stream, probed), timeout_s=180)
        except SupervisorError as exc:
            if "already exists" in str(exc):
                raise StreamExists(stream.name) from None
            raise StreamRejected(str(exc)) from None
        return self.get_stream(stream.name)

    def remove_stream(self, name: str) -> None:
        try:
            self._call(lambda: self.sup.remove_stream(name), timeout_s=60)
        except KeyError:
            raise UnknownStream(name) from None

    def set_prompt(self, name: str, prompt: str) -> StreamInfo:
        def change():
            if name not in self.sup.streams:
                raise UnknownStream(name)
            self.sup.set_prompt(name, prompt)
            return self._info(name)

        try:
            return self._call(change)
        except SupervisorError as exc:
            raise StreamRejected(str(exc)) from None

    # ---- helpers ---------------------------------------------------------------------------------------

    def _call(self, fn, timeout_s: float = 30.0):
        try:
            return self.sup.call(fn, timeout_s=timeout_s)
        except TimeoutError:
            raise ControlUnavailable(f"the supervisor did not answer within {timeout_s:.0f} s") from None

    def _info(self, name: str) -> StreamInfo:
        rec: StreamRecord | None = self.sup.streams.get(name)
        if rec is None:
            raise UnknownStream(name)
        cfg = rec.cfg
        egress = parse_detail(self._detail(f"egress-{name}"))
        ingest = parse_detail(self._detail(f"ingest-{name}"))
        written = int(egress.get("written", 0))
        gpu = next((c for c in self.sup.children.values() if c.module == "services.gpu" and c.worker == rec.worker), None)
        live = cfg.live if cfg.live is not None else cfg.kind != "file"
        return StreamInfo(
            name=name, source=cfg.source, kind=cfg.kind, prompt=cfg.prompt, prompt_version=rec.prompt_version,
            state=rec.state, reason=rec.reason, live=live,
            sinks=[self._sink(s, egress) for s in cfg.sinks],
            gpu=self._device_label(gpu),
            counters=FrameCounters(frames_in=int(ingest.get("read", 0)), frames_out=written, dropped=dict(rec.dropped)),
            fps=self._fps(name, written),
            latency_ms=LatencyPercentiles(p50=_float(egress.get("p50_ms")), p95=_float(egress.get("p95_ms"))),
            started_at=datetime.fromtimestamp(rec.started_at, timezone.utc),
        )

    def _device_label(self, gpu) -> str | None:
        """'cuda:1'; with several workers on one device (CPU tests) the worker is named too."""
        if gpu is None:
            return None
        device = parse_detail(gpu.detail).get("device")
        return f"{device} ({gpu.name})" if self.sup.workers > 1 and device == "cpu" else device

    def _detail(self, child_name: str) -> str:
        child = self.sup.children.get(child_name)
        return child.detail if child else ""

    @staticmethod
    def _sink(sink, egress: dict) -> SinkInfo:
        preview = egress.get("preview") if sink.type == "mjpeg" else None
        return SinkInfo(type=sink.type, target=sink.target, preview_url=preview)

    def _fps(self, name: str, written: int) -> float | None:
        samples = self._samples.setdefault(name, deque())
        now_ = time.monotonic()
        samples.append((now_, written))
        while samples and now_ - samples[0][0] > FPS_WINDOW_S:
            samples.popleft()
        if len(samples) < 2 or samples[-1][0] == samples[0][0]:
            return None
        return max(0.0, (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]))


def newest_frame(ring: Ring, tries: int = 4) -> tuple[np.ndarray | None, bool]:
    """(copy of the newest completed write of `ring`, True), or (None, True) if nothing was written yet.

    The newest slot is `(written - 1) % slots`; the writer may be filling it (or lapping the reader),
    which the slot's generation shows as StaleSlot: then the next older slot is tried. (None, False)
    when `tries` slots in a row changed while read.
    """
    written = ring.written
    for back in range(1, min(tries, ring.slots, written) + 1):
        slot = (written - back) % ring.slots
        try:
            header = ring.peek(slot)
            if header is None:
                continue
            return ring.read(slot, header.generation), True
        except StaleSlot:
            continue
    return None, written == 0


def _float(value) -> float | None:
    return float(value) if value is not None else None


def _own_pid() -> int:
    import os

    return os.getpid()
