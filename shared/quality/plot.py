"""PNG summary of an `evaluate` report: metric curves over frames and a contact sheet of input|output pairs."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_SHEET_HEIGHT = 180  # pixels per frame in the contact sheet

# (panel title, [(metric name, curve label)]); a panel whose metrics were all skipped is left out.
_PANELS = (
    ("warping error (lower = steadier; read with sharpness)", [("warping_error", "plain (paper)"),
                                                                ("warping_error_occlusion_masked", "occlusion-masked")]),
    ("Sobel mean |grad| (sharpness)", [("sobel_output", "output"), ("sobel_input", "input")]),
    ("HF-FFT outside H/4 disc (sharpness)", [("hf_fft_output", "output"), ("hf_fft_input", "input")]),
    ("LPIPS input vs output", [("lpips_input_output", "LPIPS")]),
    ("CLIP similarity to prompt", [("clip_similarity_output", "cosine")]),
)


def write_plot(report: dict, samples: list[tuple[int, np.ndarray, np.ndarray]], path: str | Path) -> None:
    metrics = report["metrics"]
    panels = [(title, [(m, label) for m, label in curves if metrics[m]["status"] == "ok"]) for title, curves in _PANELS]
    panels = [(title, curves) for title, curves in panels if curves]
    figure = plt.figure(figsize=(12, 2.3 * len(panels) + 3.2))
    grid = figure.add_gridspec(len(panels) + 1, 1, height_ratios=[1] * len(panels) + [1.5])
    for row, (title, curves) in enumerate(panels):
        axis = figure.add_subplot(grid[row])
        for name, label in curves:
            values = np.array([np.nan if v is None else v for v in metrics[name]["per_frame"]], dtype=float)
            mean = metrics[name]["mean"]
            axis.plot(metrics[name]["frame_indices"], values, marker=".", markersize=3,
                      label=f"{label} (mean {mean:.4g})" if mean is not None else label)
        for cut in report["scene_cuts"]:
            axis.axvline(cut, color="grey", linestyle="--", linewidth=0.8)
        axis.set_title(title, fontsize=10, loc="left")
        axis.set_xlim(0, max(report["frames"] - 1, 1))
        axis.legend(fontsize=8, loc="best")
        axis.grid(alpha=0.3)
    figure.axes[-1].set_xlabel("frame" + ("  (dashed: scene cuts in the input)" if report["scene_cuts"] else ""))

    sheet_axis = figure.add_subplot(grid[-1])
    sheet_axis.imshow(contact_sheet(samples))
    sheet_axis.set_axis_off()
    sheet_axis.set_title("input | output at frames " + ", ".join(str(i) for i, _, _ in samples), fontsize=10, loc="left")
    figure.suptitle(f"{Path(report['output']['path']).name} vs {Path(report['input']['path']).name}  "
                    f"({report['frames']} frames, {report['output']['width']}x{report['output']['height']})", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)


def contact_sheet(samples: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """One RGB image: the sampled pairs side by side, each pair input|output, white gaps between pairs."""
    tiles = []
    for _, input_frame, output_frame in samples:
        pair = np.concatenate([_shrink(input_frame), _shrink(output_frame)], axis=1)
        tiles += [pair, np.full((pair.shape[0], 12, 3), 255, np.uint8)]
    return np.concatenate(tiles[:-1], axis=1)


def _shrink(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h <= _SHEET_HEIGHT:
        return frame
    return cv2.resize(frame, (max(1, round(w * _SHEET_HEIGHT / h)), _SHEET_HEIGHT), interpolation=cv2.INTER_AREA)
