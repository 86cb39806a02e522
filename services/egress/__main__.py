"""Egress process, one per stream: take styled frames in order from the output ring and write them to
every sink of the stream (MP4, RTSP push, HLS, MJPEG preview).

    python -m services.egress --stream NAME --fps FPS      (started by the supervisor)

Each frame is released back to the GPU worker once written, so a file stream never loses one; the
end-of-stream marker (sent by the worker after the last frame) finalises the sinks. End-to-end and
per-stage latencies are recorded here, where a frame's journey ends.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from fractions import Fraction

import numpy as np

from services.egress.errors import SinkError
from services.egress.sinks import open_sink
from shared.bus import wait_readable
from shared.process import EXIT_FAILED_STREAM, ChildProcess
from shared.protocol import ProcessState, StreamState, StreamStatus, Styled, now
from shared.ring import Ring, StaleSlot

log = logging.getLogger("stylecast.egress")


class Egress:
    def __init__(self, proc: ChildProcess, stream: str, fps: float, worker: int = 0):
        self.proc = proc
        self.name = stream
        self.cfg = proc.settings.stream(stream)
        size = proc.settings.engine.size
        self.ring = Ring.attach(proc.run.run_id, stream, "out", shape=(size, size, 3), dtype="u1")
        self.styled = proc.bus.socket("SUB", "styled", bind=False, subscribe=(stream,), worker=worker)
        rate = Fraction(fps).limit_denominator(1001)
        self.sinks = [open_sink(s.type, s.target.reveal() if s.target else "127.0.0.1:0", size=size, fps=rate,
                                **({"encoder": s.encoder()} if s.encoder() else {}))
                      for s in self.cfg.sinks]
        previews = [sink.url for sink in self.sinks if hasattr(sink, "url")]
        # A SUB socket hears only what is published after its subscription reached the publisher:
        # give it a moment before saying READY (the supervisor starts the stream's ingest after that).
        # Poll, not sleep: the bus connects with ZMQ_IMMEDIATE, so the subscription is only sent once
        # this thread calls into the socket after the handshake. Sleeping left it unsent until run()'s
        # first recv, and a restart lost what the GPU worker published meanwhile: _recover releases
        # ring slots, a worker blocked on the full ring writes the next frames at once, and those lie
        # beyond the range _recover reads while their messages went to no one.
        wait_readable([self.styled], 0.2)
        self.written = 0  # frames this process wrote (the sinks count the same way)
        self.written_before = 0  # frames its predecessors wrote (a restart): reported totals include them
        self.last_seq = -1
        self.latencies: list[float] = []  # end-to-end seconds of every written frame, for the run summary
        self.stage_sums = dict.fromkeys(("ingest", "queue", "gpu", "egress"), 0.0)
        self.versions: list[int] = []
        self.version_changes: list[tuple[int, int]] = []  # (seq, prompt_version) where the version changed
        self.first_write: float | None = None
        self.last_write: float | None = None
        self.preview = " ".join(f"preview={url}" for url in previews)
        # Ring slots are released only once every file sink has the frame on disk, so a restarted
        # egress redoes exactly what its predecessor lost (its MP4 segments keep the rest).
        self.unsettled: collections.deque[tuple[int, int]] = collections.deque()  # (frame number, write index)
        self.next_index = self.ring.released  # the next ring position this egress expects to write
        proc.set_state(ProcessState.READY, self.preview)

    def _recover(self) -> None:
        """Frames the GPU worker wrote while no egress listened (a restart): their messages are gone, the
        ring still holds them (unreleased), and their slot headers hold seq and the stage times. Frames a
        killed predecessor put on disk but had not released yet are in its salvaged segments: skipped."""
        ring = self.ring
        salvaged = min((getattr(sink, "salvaged_frames", None) for sink in self.sinks
                        if getattr(sink, "salvaged_frames", None) is not None), default=None)
        self.next_index = ring.released
        skip = max(0, salvaged - ring.released) if salvaged is not None else 0
        while skip and self.next_index < ring.written:
            skip -= 1
            self.next_index += 1
            ring.release(self.next_index)
        # Every ring position before here was put out by a predecessor (a live stream's lapped frames aside,
        # which are counted as dropped too), so the stream's count carries on instead of starting at 0.
        self.written_before = self.next_index
        if self._catch_up(ring.written):
            log.info("%s: wrote %d frame(s) left in the ring by a previous egress", self.name, self.written)

    def _catch_up(self, upto: int) -> int:
        """Write the frames at ring positions [next_index, upto) whose messages never came: published before
        this egress was subscribed (a restart, or a subscription slower than the wait in __init__). The
        ring keeps them until released; their slot headers hold seq and the stage times."""
        ring = self.ring
        caught = 0
        for index in range(self.next_index, upto):
            slot = index % ring.slots
            try:
                header = ring.peek(slot)
            except StaleSlot:
                header = None
            if header is None or ring.write_index(slot, header.generation) != index:
                # A live stream's frame lapped before it was read. Its seq is gone with it, so it is
                # counted in the metrics only (an announced frame that lapped is reported with its seq).
                self.proc.metrics.count_frames(self.name, "egress", "dropped_overwritten")
                continue
            t_capture, t_ingest, t_start, t_done = header.times
            self._write(Styled(stream=self.name, seq=header.seq, slot=slot, generation=header.generation, batch_id=0,
                               t_capture=t_capture, t_ingest=t_ingest, t_batch_start=t_start, t_side_done=t_start,
                               t_main_done=t_done))
            caught += 1
        self.next_index = max(self.next_index, upto)
        return caught

    def _take_unannounced(self, upto: int) -> None:
        if caught := self._catch_up(upto):
            log.warning("%s: wrote %d frame(s) from the ring whose messages never arrived", self.name, caught)

    def run(self) -> int:
        self._recover()
        while not self.proc.stop.is_set():
            msg = self.styled.recv(timeout_s=0.2, expect=(Styled, StreamState))
            if msg is None and not self.ring.ended:
                continue
            # The end comes as a message, or from the ring to an egress restarted after that message went out.
            if msg is None or isinstance(msg, StreamState):
                self._take_unannounced(self.ring.written)  # all the worker wrote comes before its end marker
                self._close(f"end of stream after {self.total_written} frames")
                return 0
            self._write(msg)
        self._close(f"stopped after {self.total_written} frames")
        return 0

    @property
    def total_written(self) -> int:
        """The stream's frames put out so far, by this process and any predecessor."""
        return self.written_before + self.written

    def _write(self, msg: Styled) -> None:
        index = self.ring.write_index(msg.slot, msg.generation)
        if index < self.next_index:
            return  # this very write was taken from the ring already, its message came after
        if index > self.next_index:  # earlier writes were never announced to this egress: they go first
            self._take_unannounced(index)
        self.next_index = index + 1
        if msg.seq <= self.last_seq:  # written already (a restarted GPU worker redoes unreleased frames)
            self.proc.dropped(self.name, msg.seq, "egress", "duplicate")
            self.ring.release(index + 1)
            return
        try:
            frame = self.ring.read(msg.slot, msg.generation)
        except StaleSlot:
            self.proc.dropped(self.name, msg.seq, "egress", "overwritten")
            return
        self.unsettled.append((self.written, index))
        for sink in self.sinks:
            if sink.failed:
                continue
            try:
                sink.write(frame)
            except SinkError as exc:  # one broken output must not stop the others
                self.proc.error("sink_failed", f"{sink.kind} sink {sink.target}: {exc}", stream=self.name, seq=msg.seq)
        t_done = now()
        self.proc.metrics.observe_latencies(
            self.name, t_capture=msg.t_capture, t_ingest=msg.t_ingest, t_batch_start=msg.t_batch_start,
            t_side_done=msg.t_side_done, t_main_done=msg.t_main_done, t_egress_done=t_done,
        )
        self.proc.metrics.count_frames(self.name, "egress", "processed")
        self.written += 1
        self._settle()
        self.last_seq = msg.seq
        self.latencies.append(t_done - msg.t_capture)
        for stage, start, end in (("ingest", msg.t_capture, msg.t_ingest), ("queue", msg.t_ingest, msg.t_batch_start),
                                  ("gpu", msg.t_batch_start, msg.t_main_done), ("egress", msg.t_main_done, t_done)):
            self.stage_sums[stage] += end - start
        self.first_write = self.first_write or t_done
        self.last_write = t_done
        if not self.versions or self.versions[-1] != msg.prompt_version:
            self.versions.append(msg.prompt_version)
            self.version_changes.append((msg.seq, msg.prompt_version))
        if self.total_written % 8 == 0 or len(self.latencies) < 8:  # a cheap status for the supervisor (heartbeat detail)
            recent = np.asarray(self.latencies[-120:]) * 1e3
            self.proc.detail = (f"{self.preview} written={self.total_written} p50_ms={np.percentile(recent, 50):.1f} "
                                f"p95_ms={np.percentile(recent, 95):.1f} prompt_version={msg.prompt_version}")

    def _settle(self, everything: bool = False) -> None:
        """Release the ring slots of frames every healthy encoded sink has muxed (an encoder holds a few)."""
        durable = min((sink.durable_frames for sink in self.sinks if hasattr(sink, "durable_frames") and not sink.failed),
                      default=self.written)
        last = None
        while self.unsettled and (everything or self.unsettled[0][0] < durable):
            last = self.unsettled.popleft()[1]
        if last is not None:
            self.ring.release(last + 1)

    def _close(self, reason: str) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except SinkError as exc:
                self.proc.error("sink_failed", f"{sink.kind} sink {sink.target}: {exc}", stream=self.name)
        self._settle(everything=True)
        self.proc.write_summary({"written": self.total_written, "written_here": self.written, "latencies_s": self.latencies,
                                 "first_write": self.first_write, "last_write": self.last_write, "prompt_versions": self.version_changes,
                                 "stage_means_ms": {k: v / max(self.written, 1) * 1e3 for k, v in self.stage_sums.items()}})
        self.proc.stream_state(self.name, StreamStatus.STOPPED, reason)
        log.info("%s: %s", self.name, reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.egress", description=__doc__.splitlines()[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--fps", type=float, required=True)
    parser.add_argument("--worker", type=int, default=0, help="the GPU worker serving this stream")
    args = parser.parse_args(argv)
    with ChildProcess(f"egress-{args.stream}") as proc:
        try:
            egress = Egress(proc, args.stream, args.fps, args.worker)
        except SinkError as exc:
            proc.error("sink_failed", str(exc), stream=args.stream)
            proc.stream_state(args.stream, StreamStatus.FAILED, str(exc))
            return EXIT_FAILED_STREAM
        return egress.run()


if __name__ == "__main__":
    sys.exit(main())
