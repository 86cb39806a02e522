"""Helpers for soak runs: a long test clip, and a probe sampling every process's memory and fds."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from tests.support.service import Service, processes_using


def long_clip(path: Path, frames: int, fps: int, size: tuple[int, int] = (160, 120)) -> Path:
    """A moving gradient clip of `frames` frames (cheap to encode and decode, never static)."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            rgb = np.stack([(xs + 3 * i) % 256, (ys + 2 * i) % 256, (xs + ys + i) % 256], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


class SoakProbe:
    """Samples the resident memory and open descriptors of every process of a running service, per pid,
    so a process starting or ending between samples is not mistaken for growth."""

    def __init__(self, service: Service):
        self.service = service
        self.samples: list[dict[int, tuple[int, int]]] = []  # pid → (rss KiB, open fds)

    def sample(self) -> bool:
        row = {}
        for pid in processes_using(self.service.runtime) + [self.service.proc.pid]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
                row[pid] = (rss, len(list(Path(f"/proc/{pid}/fd").iterdir())))
            except (OSError, StopIteration):
                continue  # a process that just exited
        self.samples.append(row)
        return True

    def report(self) -> dict:
        """Growth over the run of the processes that lived through it (first two samples: start-up)."""
        steady = self.samples[2:] or self.samples
        pids = set.intersection(*(set(row) for row in steady)) if steady else set()
        growth = sum(max(row[p][0] for row in steady) - steady[0][p][0] for p in pids) / 1024
        spread = max((max(row[p][1] for row in steady) - min(row[p][1] for row in steady) for p in pids), default=0)
        return {"samples": len(self.samples), "processes": len(pids), "rss_growth_mib": growth, "fd_spread": spread,
                "rss_total_mib": sum(steady[-1][p][0] for p in pids) / 1024 if pids else 0}
