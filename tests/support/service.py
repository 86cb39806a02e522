"""Running the real multi-process service from tests, and checking it left nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def service_env(runtime_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "STYLECAST_SERVICE__RUNTIME_DIR": str(runtime_dir), "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def stylecast(args: list[str], runtime_dir: Path, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=service_env(runtime_dir), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **popen)


def processes_using(runtime_dir: Path) -> list[int]:
    """Pids of live processes whose environment points at `runtime_dir` (children of a run)."""
    needle = f"STYLECAST_RUNTIME_DIR={runtime_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and (entry / "stat").read_text().split()[2] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def leftover_segments(runtime_dir: Path) -> list[str]:
    """/dev/shm segments of runs recorded under `runtime_dir` (any is a leak once the run ended)."""
    runs = {p.name for p in (runtime_dir / "runs").glob("*")} | {p.name for p in (runtime_dir / "logs").glob("*")}
    return [p.name for p in Path("/dev/shm").glob("stylecast-*") if any(f"-{r}-" in p.name for r in runs)]


def decode_video(path: Path) -> tuple[np.ndarray, str]:
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context.name
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return frames, codec


def trim_clip(source: Path, target: Path, frames: int) -> Path:
    """The first `frames` frames of a real clip, looped if it is shorter, re-encoded (H.264) at its own size and rate."""
    with av.open(str(target), "w") as dst:
        out, written = None, 0
        while written < frames:
            with av.open(str(source)) as src:
                stream_in = src.streams.video[0]
                if out is None:
                    out = dst.add_stream("libx264", rate=stream_in.average_rate)
                    out.width, out.height = stream_in.codec_context.width, stream_in.codec_context.height
                    out.pix_fmt = "yuv420p"
                for frame in src.decode(video=0):
                    if written == frames:
                        break
                    for packet in out.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")):
                        dst.mux(packet)
                    written += 1
        for packet in out.encode():
            dst.mux(packet)
    return target


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`, in a Prometheus text scrape."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Service:
    """`stylecast serve` in a subprocess with a YAML config, and an HTTP client for its API."""

    def __init__(self, tmp_path: Path, streams: list[dict], env: dict[str, str] | None = None, **sections) -> None:
        import httpx
        import yaml

        self.tmp = tmp_path
        self.runtime = tmp_path / "rt"
        self.port = free_port()
        config = {"model": {"profile": "synthetic-tiny"}, "engine": {"size": 64, "batch": 4},
                  "service": {"api_port": self.port, "runtime_dir": str(self.runtime)}, "streams": streams}
        for key, value in sections.items():
            config.setdefault(key, {}).update(value)
        (tmp_path / "stylecast.yaml").write_text(yaml.safe_dump(config))
        self.configured = [stream["name"] for stream in streams]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--config", str(tmp_path / "stylecast.yaml")],
            env=service_env(self.runtime, **(env or {})), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def status(self, path: str) -> int | None:
        import httpx

        try:
            return self.client.get(path).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 120) -> None:
        """Ready (models loaded) and every configured stream added."""
        wait_for(lambda: self.status("/readyz") == 200, timeout, "/readyz")
        wait_for(lambda: {s["name"] for s in self.client.get("/streams").json()} >= set(self.configured), 60,
                 "the configured streams")

    def stream(self, name: str) -> dict:
        answer = self.client.get(f"/streams/{name}")
        if answer.status_code != 200:
            raise AssertionError(f"GET /streams/{name}: {answer.status_code} {answer.text}")
        return answer.json()

    def frames_out(self, name: str) -> int:
        return self.stream(name)["counters"]["frames_out"]

    def pid_of(self, process: str) -> int:
        for p in self.client.get("/healthz").json()["processes"]:
            if p["name"] == process and p["pid"]:
                return p["pid"]
        raise AssertionError(f"no running process {process!r}")

    def restarts(self, process: str) -> int:
        return next(p["restarts"] for p in self.client.get("/healthz").json()["processes"] if p["name"] == process)

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def stop(self, timeout: float = 60) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        self.client.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.client.close()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.runtime / "logs").glob("*/*.log"))


def frames_written(runtime: Path) -> int:
    """Frames egress has written so far in the run under `runtime` (from its live metrics files)."""
    from shared.metrics import render_metrics

    metrics_dirs = list((runtime / "runs").glob("*/metrics"))
    if not metrics_dirs:
        return 0
    try:
        text = render_metrics(metrics_dirs[0]).decode()
    except OSError:  # the run ended meanwhile
        return 0
    return int(metric_value(text, "stylecast_frames_total", stage="egress", outcome="processed"))
