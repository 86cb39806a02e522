"""The loss-curve PNG of a training run (matplotlib, Agg: files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (shorter at the start), same length as `values`."""
    data = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.insert(data, 0, 0.0))
    ends = np.arange(1, len(data) + 1)
    counts = np.minimum(ends, window)
    return (sums[ends] - sums[ends - counts]) / counts


def write_loss_plot(losses: list[float], path: str | Path, title: str, probes: dict[int, float] | None = None) -> Path:
    """Per-step loss, its moving average, and the probe loss (fixed draws) at the steps it was taken."""
    steps = np.arange(1, len(losses) + 1)
    window = min(50, len(losses) // 10)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    axis.plot(steps, losses, linewidth=0.8, alpha=0.5, marker="." if len(losses) < 100 else None, label="loss per step")
    if window > 1:
        axis.plot(steps, moving_average(losses, window), linewidth=1.8, label=f"mean of the last {window} steps")
    if probes:
        points = sorted(probes.items())
        axis.plot([s for s, _ in points], [v for _, v in points], "s--", linewidth=1.2,
                  label="probe: the same draws each time")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("MSE of the velocity (left half)")
    axis.set_title(title, fontsize=9, loc="left")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return Path(path)
