"""Ingest process, one per stream: decode the source into S×S frames, write them to the stream's input
ring and announce each on the bus.

    python -m services.ingest --stream NAME      (started by the supervisor)

Files are lossless: before overwriting a ring slot the writer waits until the GPU worker has
released it. Live sources never wait: when the GPU is behind, the oldest frames are overwritten and
the worker counts them as dropped. A live source that fails or ends reconnects with backoff; one that
keeps failing ends as `failed`. End of a file is announced in order on the same socket as the frames.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from services.ingest.errors import NotAVideo, SourceAuthFailed, SourceError, SourceNotFound, UnsupportedSource
from services.ingest.sources import open_source
from shared.process import EXIT_FAILED_STREAM, ChildProcess
from shared.protocol import Frame, FrameFlags, ProcessState, StreamState, StreamStatus, now
from shared.ring import Ring
from shared.scene import SceneCutDetector

log = logging.getLogger("stylecast.ingest")

# Errors no retry can fix: the stream fails at once.
PERMANENT = (SourceNotFound, NotAVideo, UnsupportedSource, SourceAuthFailed)


class Ingest:
    def __init__(self, proc: ChildProcess, stream: str, worker: int = 0):
        self.proc = proc
        self.cfg = proc.settings.stream(stream)
        self.name = stream
        s = proc.settings
        self.size = s.engine.size
        self.ring = Ring.attach(proc.run.run_id, stream, "in", shape=(self.size, self.size, 3), dtype="u1")
        self.frames = proc.bus.socket("PUSH", "frames", bind=False, worker=worker)
        self.seq = self.ring.written  # a restarted ingest continues the numbering
        self.scene = SceneCutDetector()
        self.corrupt_counted = 0

    def _send(self, msg) -> bool:
        """Block (in short waits, watching the stop flag) until the GPU worker takes the message."""
        while not self.proc.stop.is_set():
            if self.frames.send(msg, timeout_s=0.2):
                return True
        return False

    def run(self) -> int:
        ingest = self.proc.settings.ingest
        attempts, delay = 0, ingest.reconnect_backoff_initial_s
        ended_before = False  # a live source that ended is being reconnected, not started
        while not self.proc.stop.is_set():
            state = StreamStatus.STARTING if attempts == 0 and not ended_before else StreamStatus.RECONNECTING
            self.proc.stream_state(self.name, state)
            try:
                finished = self._play()
            except PERMANENT as exc:
                return self._fail(str(exc))
            except SourceError as exc:
                attempts += 1
                limit = ingest.reconnect_max_attempts
                if self.cfg.kind == "file" or (limit and attempts > limit):
                    return self._fail(f"{exc} (after {attempts} attempt(s))")
                log.warning("%s: %s; reconnecting in %.1f s (attempt %d)", self.name, exc, delay, attempts)
                self.proc.stream_state(self.name, StreamStatus.RECONNECTING, str(exc))
                self.proc.stop.wait(delay)
                delay = min(delay * 2, ingest.reconnect_backoff_max_s)
                continue
            if finished and self.cfg.kind == "file":  # a file ends (live or not); a camera that ends is reconnected
                self._send(StreamState(stream=self.name, state=StreamStatus.STOPPED, reason="end_of_stream", time=now()))
                # Still running until egress has written the last frame (egress reports 'stopped').
                self.proc.stream_state(self.name, StreamStatus.RUNNING, f"end of file after {self.seq} frames; finishing")
                return 0
            attempts, delay = 0, ingest.reconnect_backoff_initial_s  # a live source ended: reconnect
            ended_before = True
            if not self.proc.stop.is_set():
                log.warning("%s: the source ended; reconnecting", self.name)
        return 0

    def _fail(self, reason: str) -> int:
        self.proc.error("source_failed", reason, stream=self.name)
        self.proc.stream_state(self.name, StreamStatus.FAILED, reason)
        self._send(StreamState(stream=self.name, state=StreamStatus.FAILED, reason="source_failed", time=now()))
        return EXIT_FAILED_STREAM

    @property
    def _live(self) -> bool:
        return bool(self.cfg.live) if self.cfg.live is not None else self.cfg.kind != "file"

    def _play(self) -> bool:
        """Deliver frames until the source ends (True) or a stop is asked for (False)."""
        ingest = self.proc.settings.ingest
        with open_source(self.cfg.source.reveal(), size=self.size, live=self.cfg.live, pace=self.cfg.pace,
                         connect_timeout_s=ingest.connect_timeout_s, read_timeout_s=ingest.read_timeout_s) as source:
            self.proc.set_state(ProcessState.READY)
            self.proc.stream_state(self.name, StreamStatus.RUNNING)
            flags = FrameFlags.DISCONTINUITY
            # A restarted ingest of a file goes on after the frames its predecessor delivered.
            delivered = 0 if source.live else self.seq
            self.corrupt_counted = 0
            for item in source:
                if self.proc.stop.is_set():
                    return False
                if item.index < delivered:
                    continue
                if not source.live:
                    while not self.ring.wait_for_space(0.2, stop=self.proc.stop.is_set):
                        if self.proc.stop.is_set():
                            return False
                if self.scene.update(item.rgb):
                    flags |= FrameFlags.SCENE_CUT
                t_ingest = now()
                t_capture = t_ingest - max(0.0, time.time() - item.capture_ts)
                slot, generation = self.ring.write(item.rgb, self.seq, times=(t_capture, t_ingest))
                msg = Frame(stream=self.name, seq=self.seq, slot=slot, generation=generation, t_capture=t_capture,
                            t_ingest=t_ingest, flags=int(flags), pts=item.pts_s)
                if not self._send(msg):
                    return False
                self.proc.metrics.count_frames(self.name, "ingest", "processed")
                corrupt = source.counters.corrupt_skipped
                if corrupt > self.corrupt_counted:  # damaged packets the decoder skipped past, counted
                    self.proc.metrics.count_frames(self.name, "ingest", "dropped_corrupt", corrupt - self.corrupt_counted)
                    self.corrupt_counted = corrupt
                self.seq += 1
                self.proc.detail = f"read={self.seq}"
                flags = FrameFlags.NONE
            return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--stream", required=True)
    parser.add_argument("--worker", type=int, default=0, help="the GPU worker serving this stream")
    args = parser.parse_args(argv)
    with ChildProcess(f"ingest-{args.stream}") as proc:
        ingest = Ingest(proc, args.stream, args.worker)
        try:
            return ingest.run()
        finally:
            proc.write_summary({"read": ingest.seq})  # frames delivered, for the run summary


if __name__ == "__main__":
    sys.exit(main())
