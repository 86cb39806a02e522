"""What every StyleCast child process shares: its run, settings, logging, metrics, heartbeat and signals.

A child is started by the supervisor with the run's environment (`Run.env()`); it reads the run's
settings file (written by the supervisor, mode 0600, secrets included), logs to stderr (the
supervisor sends that to the process's own log file), writes metrics into the run's multiprocess
directory, sends a heartbeat from its own thread, and turns SIGTERM/SIGINT into a stop flag so the
main loop can drain and exit cleanly.

Sockets to the supervisor: `heartbeat` (heartbeat thread only) and `drops` (the main thread's events:
stream states, dropped frames, errors). ZeroMQ sockets are used by one thread each.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from shared.bus import Bus
from shared.metrics import get_metrics, init_metrics_dir
from shared.protocol import Error, FrameDropped, Heartbeat, ProcessState, StreamState, StreamStatus, now
from shared.runtime import Run
from shared.settings import Settings, settings_from_json, settings_to_json

SETTINGS_FILE = "settings.json"
EXIT_FAILED_STREAM = 3  # a stream failed for good (bad source): the supervisor must not restart it

log = logging.getLogger("stylecast.process")


def write_run_settings(run: Run, settings: Settings) -> Path:
    """Supervisor: the settings children read, secrets included, readable by this user only."""
    path = run.dir / SETTINGS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(settings_to_json(settings, reveal_secrets=True))
    os.replace(tmp, path)  # atomic: a child never reads half a file
    return path


def read_run_settings(run: Run) -> Settings:
    return settings_from_json((run.dir / SETTINGS_FILE).read_text())


def parse_detail(detail: str) -> dict[str, str]:
    """A heartbeat's `detail` as key=value pairs ("written=12 p50_ms=40.1" → {"written": "12", ...})."""
    return dict(part.split("=", 1) for part in detail.split() if "=" in part)


def setup_logging(process: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))


class ChildProcess:
    """The scaffolding of one child process; use as a context manager around the main loop."""

    def __init__(self, name: str):
        self.name = name
        self.run = Run.from_env()
        self.settings = read_run_settings(self.run)
        setup_logging(name, getattr(self.settings.service, "log_level", "INFO"))
        init_metrics_dir(self.run.metrics_dir)
        self.metrics = get_metrics()
        self.bus = Bus(self.settings.service, self.run, process=name)
        self.stop = threading.Event()
        self.orphaned = threading.Event()  # the supervisor died: nobody consumes or supervises, so don't drain
        self._beat = threading.Event()  # set: send a heartbeat now (a state change should not wait a period)
        self.state = ProcessState.STARTING
        self.detail = ""
        self._events = self.bus.socket("PUSH", "drops", bind=False)
        self._heartbeat_thread = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        log.info("%s: signal %d, stopping", self.name, signum)
        self.stop.set()

    def _heartbeats(self) -> None:
        channel = self.bus.socket("PUSH", "heartbeat", bind=False)
        interval = self.settings.service.heartbeat_interval_s
        parent = os.getppid()
        try:
            while True:
                if os.getppid() != parent and not self.orphaned.is_set():  # the supervisor is gone
                    log.error("%s: supervisor (pid %d) is gone, stopping", self.name, parent)
                    self.orphaned.set()
                    self.stop.set()
                self._beat.clear()
                channel.send(Heartbeat(process=self.name, pid=os.getpid(), time=now(), state=self.state, detail=self.detail),
                             timeout_s=interval)
                if self.state == ProcessState.STOPPING:
                    return
                self._beat.wait(interval)
        finally:
            channel.close(linger_ms=0)

    def set_state(self, state: ProcessState, detail: str | None = None) -> None:
        """Change the reported state (and the detail, when given: the last detail is kept otherwise)."""
        self.state = state
        if detail is not None:
            self.detail = detail
        self._beat.set()

    def write_summary(self, data: dict) -> None:
        """A small JSON record of what this process did, read by the supervisor for the run summary."""
        path = self.run.dir / f"summary-{self.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    # ---- events to the supervisor (main thread) ----------------------------------------------------

    def stream_state(self, stream: str, state: StreamStatus, reason: str = "") -> None:
        self.metrics.set_stream_state(stream, state)
        self._events.send(StreamState(stream=stream, state=state, reason=reason, time=now()))

    def dropped(self, stream: str, seq: int, stage: str, reason: str) -> None:
        self.metrics.count_frames(stream, stage, f"dropped_{reason}")
        self._events.send(FrameDropped(stream=stream, seq=seq, stage=stage, reason=reason))

    def error(self, code: str, message: str, stream: str | None = None, seq: int | None = None) -> None:
        log.error("%s: %s", code, message)
        self._events.send(Error(process=self.name, code=code, message=message, stream=stream, seq=seq))

    def __enter__(self) -> "ChildProcess":
        self._heartbeat_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.set_state(ProcessState.STOPPING)
        self.stop.set()
        self._heartbeat_thread.join(timeout=2)
        self._events.close(linger_ms=500)  # let the last state messages out
        self.bus.close()


