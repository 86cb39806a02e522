"""The egress's RGB → yuv420p conversion: BT.709 limited range, chroma from each 2×2 block's mean colour."""

from __future__ import annotations

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Colorspace

from services.egress.errors import FrameRejected
from services.egress.h264 import rgb_to_yuv420, to_yuv_frame


def reference_i420(rgb: np.ndarray) -> np.ndarray:
    """The BT.709 limited-range formulas in float64, rounded once: Y per pixel, Cb/Cr of 2×2 means."""
    f = rgb.astype(np.float64)
    kr, kb = 0.2126, 0.0722
    luma = kr * f[..., 0] + (1 - kr - kb) * f[..., 1] + kb * f[..., 2]
    y = 16 + 219 / 255 * luma
    cb = 128 + 224 / 255 * (f[..., 2] - luma) / (2 * (1 - kb))
    cr = 128 + 224 / 255 * (f[..., 0] - luma) / (2 * (1 - kr))
    h, w = y.shape
    mean = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
    flat = np.concatenate([y.ravel(), mean(cb).ravel(), mean(cr).ravel()])
    return np.clip(np.round(flat), 0, 255).reshape(h * 3 // 2, w)


def gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 2, yy * 2, xx + yy], axis=-1).astype(np.uint8)  # no wrap: smooth everywhere


@pytest.mark.parametrize("shape", [(64, 64), (98, 130), (6, 2)])  # 98: the chroma planes straddle a stacked row
def test_planes_match_the_formulas_within_one_level(shape):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    planes = rgb_to_yuv420(rgb)
    assert planes.shape == (shape[0] * 3 // 2, shape[1]) and planes.dtype == np.uint8
    diff = np.abs(planes.astype(int) - reference_i420(rgb))
    assert diff.max() <= 1 and diff.mean() < 0.3


def test_known_colours_land_on_the_standard_codes():
    # BT.709 limited range: black (16,128,128), white (235,128,128), pure red (63,102,240).
    for rgb, want in [((0, 0, 0), (16, 128, 128)), ((255, 255, 255), (235, 128, 128)), ((255, 0, 0), (63, 102, 240))]:
        planes = rgb_to_yuv420(np.full((4, 4, 3), rgb, np.uint8))
        assert (planes[:4].min(), planes[:4].max()) == (want[0], want[0])
        assert planes[4, :2].tolist() == [want[1]] * 2 and planes[5, :2].tolist() == [want[2]] * 2


def test_agrees_with_swscale_on_smooth_content():
    """swscale's BT.709 conversion (what the egress used before) and ours differ by at most one level where
    the picture is smooth; on noise they differ by the chroma filter, which is the point of neither."""
    rgb = gradient(96, 128)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", src_colorspace=Colorspace.ITU709, dst_colorspace=Colorspace.ITU709,
        src_color_range=ColorRange.JPEG, dst_color_range=ColorRange.MPEG)
    theirs = frame.to_ndarray()
    ours = to_yuv_frame(rgb, 7)
    assert ours.pts == 7 and ours.format.name == "yuv420p" and (ours.width, ours.height) == (128, 96)
    diff = np.abs(ours.to_ndarray().astype(int) - theirs.astype(int))
    assert diff.max() <= 1


def test_odd_sizes_are_refused_by_name():
    with pytest.raises(FrameRejected, match="even frame size, got 5×4"):
        rgb_to_yuv420(np.zeros((4, 5, 3), np.uint8))
