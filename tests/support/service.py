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
    """The first `frames` frames of a real clip, re-encoded (H.264) at its own size and rate."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream_in = src.streams.video[0]
        out = dst.add_stream("libx264", rate=stream_in.average_rate)
        out.width, out.height, out.pix_fmt = stream_in.codec_context.width, stream_in.codec_context.height, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            for packet in out.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")):
                dst.mux(packet)
        for packet in out.encode():
            dst.mux(packet)
    return target
