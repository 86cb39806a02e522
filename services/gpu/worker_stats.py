"""What the GPU worker's time went to: per-batch engine timings and why frames waited to be dispatched.

Written to the run's summary at exit (`summary-gpu*.json`), so a run tells whether the GPU, the feeding
of it, or the egress was the wall, without a profiler.
"""

from __future__ import annotations

import collections
import time

import numpy as np

BATCH_KEYS = ("side_ms", "main_ms", "refresh_ms", "main_gap_ms", "side_wait_ms", "side_lag_ms")
SERIES = 256  # the last batches' timings, one row each, kept in the summary (where the outliers are)


def mean_and_p50(series: dict[str, list[float]], keys) -> dict[str, float]:
    """`<key>_p50` and `<key>_mean` of each of `keys` that has values in `series`."""
    out = {}
    for key in keys:
        values = series.get(key) or []
        if values:
            out[f"{key}_p50"] = float(np.percentile(values, 50))
            out[f"{key}_mean"] = float(np.mean(values))
    return out


class WorkerStats:
    def __init__(self, keep: int = 10_000, clock=time.monotonic, on_wait=None):
        """`on_wait(reason, seconds)` hears each stretch of time as it is accounted (the worker's metrics)."""
        self.clock = clock
        self.on_wait = on_wait
        self.batches: collections.deque = collections.deque(maxlen=keep)  # the most recent batches' timings
        self.frames = 0
        self.count = 0
        self.wait_s: dict[str, float] = collections.defaultdict(float)  # seconds in each dispatch state
        self.idle_s = 0.0  # seconds with no batch on the GPU
        self._last: tuple[str, bool, float] | None = None

    def batch(self, rows: int, bucket: int, timings: dict) -> None:
        self.count += 1
        self.frames += rows
        self.batches.append({"rows": rows, "bucket": bucket, "t_done": timings.get("t_done"),
                             **{k: timings[k] for k in BATCH_KEYS if k in timings}})

    def state(self, block: str | None, busy: bool) -> None:
        """Called once per loop turn with why no batch goes out now (None: it just did) and whether one is in flight."""
        t = self.clock()
        if self._last is not None:
            block0, busy0, t0 = self._last
            self.wait_s[block0 or "dispatching"] += t - t0
            if self.on_wait is not None:
                self.on_wait(block0 or "dispatching", t - t0)
            if not busy0:
                self.idle_s += t - t0
        self._last = (block, busy, t)

    def summary(self) -> dict:
        recent = list(self.batches)
        out: dict = {"batches": self.count, "frames": self.frames,
                     "rows_mean": self.frames / self.count if self.count else None,
                     "wait_s": {k: round(v, 3) for k, v in sorted(self.wait_s.items())}, "gpu_idle_s": round(self.idle_s, 3)}
        out.update(mean_and_p50({key: [b[key] for b in recent if key in b] for key in BATCH_KEYS}, BATCH_KEYS))
        done = [b["t_done"] for b in recent if b.get("t_done") is not None]
        if len(done) > 1:
            out["cadence_ms_p50"] = float(np.percentile(np.diff(done), 50) * 1e3)
        last = recent[-SERIES:]
        columns = ("rows", "t_done", *BATCH_KEYS)
        t0 = next((b["t_done"] for b in last if b.get("t_done") is not None), 0.0)
        out["series"] = {"columns": columns, "rows": [
            [b["rows"], round((b["t_done"] - t0) * 1e3, 1) if b.get("t_done") is not None else None,
             *(round(b[k], 2) if k in b else None for k in BATCH_KEYS)] for b in last]}
        return out
