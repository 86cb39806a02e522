"""Farnebäck optical flow and backward warping, with the parameters the paper fixes (DESIGN §4).

Conventions: frames are H×W×3 uint8 RGB (or H×W uint8 gray). A *backward* flow for a target frame
gives, at every target pixel (x, y), the displacement (dx, dy) to the matching pixel of the source
frame, so `backward_warp(source, flow)` samples the source at (x+dx, y+dy) and lands on the target's
grid. This is the direction both the temporal conditioning and the warping error need.
"""

from __future__ import annotations

import cv2
import numpy as np

# cv2.calcOpticalFlowFarneback parameters of the paper (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags).
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 H×W×3 → gray uint8 H×W; a gray frame passes through."""
    if frame.ndim == 2:
        return frame
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB or H×W gray frame, got shape {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def backward_flow(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Flow on the target's grid pointing into the source: target(p) ≈ source(p + flow(p)). float32 H×W×2."""
    t, s = to_gray(target), to_gray(source)
    if t.shape != s.shape:
        raise ValueError(f"frames differ in size: target {t.shape} vs source {s.shape}")
    return cv2.calcOpticalFlowFarneback(t, s, None, **FARNEBACK_PARAMS)


def sampling_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute sampling coordinates (map_x, map_y) for cv2.remap from a backward flow."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def backward_warp(source: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Warp `source` onto the target grid of `flow` (bilinear, replicated border), as the paper does."""
    map_x, map_y = sampling_grid(flow)
    return cv2.remap(source, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
