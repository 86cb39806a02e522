"""Warping error ε_w (paper §IV-A, after Lai et al. 2018), plain and with an occlusion mask.

For t = 1..T-1:
    F_t      = backward_flow(input_t, input_{t-1})        Farnebäck on the INPUT frames (shared.flow parameters)
    warped_t = backward_warp(output_{t-1}, F_t)           previous OUTPUT on frame t's grid (bilinear, replicated border)
    ε_t      = mean |output_t − warped_t|                 0–255 scale, over all pixels and all 3 channels

Plain ε_w (the paper's number) uses no mask. The masked variant averages only over pixels that the
forward–backward check of `shared.quality.occlusion` finds visible in both frames. The clip value is
the mean of ε_t over t = 1..T-1. Inputs and outputs must already share one size (see
`video_io.fit_to_size`). The warp works on the uint8 previous output, as the engine does, so the
warped frame is rounded to integers. Farnebäck is not exactly zero on two identical frames (up to
~0.25 px near the borders), so a repeated frame scores about 0.01 rather than 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.flow import backward_flow, backward_warp
from shared.quality.occlusion import occlusion_mask


@dataclass(frozen=True)
class PairWarpingError:
    plain: float  # ε_t over all pixels
    masked: float | None  # ε_t over non-occluded pixels; None when not asked for; nan when every pixel is occluded
    occluded_fraction: float | None  # share of frame t's pixels masked out


def warping_error(previous_output: np.ndarray, output: np.ndarray, flow_to_previous: np.ndarray,
                  visible: np.ndarray | None = None) -> float:
    """Mean |output − warp(previous_output)| on the 0–255 scale; over `visible` pixels (H×W bool) if given.
    Returns nan when `visible` selects no pixel."""
    warped = backward_warp(previous_output, flow_to_previous)
    diff = np.abs(output.astype(np.float32) - warped.astype(np.float32))
    if visible is None:
        return float(diff.mean(dtype=np.float64))
    if not visible.any():
        return float("nan")
    return float(diff[visible].mean(dtype=np.float64))


def pair_warping_error(previous_input: np.ndarray, current_input: np.ndarray,
                       previous_output: np.ndarray, current_output: np.ndarray,
                       *, with_occlusion_mask: bool = True) -> PairWarpingError:
    """ε_t for one step t-1 → t, plain and (optionally) masked; the masked one costs a second flow."""
    _check_same_shape(previous_input, current_input, previous_output, current_output)
    flow_to_previous = backward_flow(current_input, previous_input)
    plain = warping_error(previous_output, current_output, flow_to_previous)
    if not with_occlusion_mask:
        return PairWarpingError(plain, None, None)
    occluded = occlusion_mask(flow_to_previous, backward_flow(previous_input, current_input))
    masked = warping_error(previous_output, current_output, flow_to_previous, visible=~occluded)
    return PairWarpingError(plain, masked, float(occluded.mean()))


def warping_error_series(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Plain ε_t for t = 1..T-1 (float64 array of length T-1; element i belongs to frame i+1)."""
    _check_same_length(inputs, outputs)
    return np.array([
        pair_warping_error(inputs[t - 1], inputs[t], outputs[t - 1], outputs[t], with_occlusion_mask=False).plain
        for t in range(1, len(inputs))
    ], dtype=np.float64)


def masked_warping_error_series(inputs: Sequence[np.ndarray],
                                outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Occlusion-masked ε_t for t = 1..T-1 and the occluded fraction of each frame t (two arrays of length T-1)."""
    _check_same_length(inputs, outputs)
    pairs = [pair_warping_error(inputs[t - 1], inputs[t], outputs[t - 1], outputs[t]) for t in range(1, len(inputs))]
    return (np.array([p.masked for p in pairs], dtype=np.float64),
            np.array([p.occluded_fraction for p in pairs], dtype=np.float64))


def series_mean(series: np.ndarray) -> float:
    """Clip mean of a per-frame series, ignoring frames where the value is undefined (nan); nan if none is defined."""
    series = np.asarray(series, dtype=np.float64)
    defined = series[~np.isnan(series)]
    return float(defined.mean()) if defined.size else float("nan")


def _check_same_length(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
    if len(inputs) != len(outputs):
        raise ValueError(f"frame counts differ: {len(inputs)} input frames vs {len(outputs)} output frames")


def _check_same_shape(*frames: np.ndarray) -> None:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"input and output frames must share one shape (fit inputs to the output size first), got {sorted(shapes)}")
