"""Scene-cut detection on real clips and the motion-magnitude helper."""

import av
import cv2
import numpy as np
import pytest

from shared.flow import backward_flow
from shared.scene import SceneCutDetector, mean_flow_magnitude
from tests.support.quality_clips import clip_frames, clip_path

SIZE = (128, 96)  # (width, height): small frames keep the tests fast; the detector works on thumbnails anyway


def detected_cuts(frames, **options) -> list[int]:
    detector = SceneCutDetector(**options)
    return [index for index, frame in enumerate(frames) if detector.update(frame)]


def joined(first: str, second: str, length: int = 20) -> np.ndarray:
    return np.concatenate([clip_frames(first, length, size=SIZE), clip_frames(second, length, size=SIZE)])


@pytest.mark.parametrize("first, second", [("bigbuckbunny.mp4", "carphone_pristine.mp4"),
                                           ("carphone_pristine.mp4", "bigbuckbunny.mp4")])
def test_cut_between_two_real_clips_is_found_there_and_nowhere_else(first, second):
    assert detected_cuts(joined(first, second)) == [20]


def test_each_clip_alone_has_no_cut():
    assert detected_cuts(clip_frames("bigbuckbunny.mp4", 40, size=SIZE)) == []
    assert detected_cuts(clip_frames("carphone_pristine.mp4", 40, size=SIZE)) == []


def test_the_hard_cuts_of_bikes_are_found():
    # bikes.mp4 is an edit of several shots with hard cuts at these frames (checked by eye); it also holds a
    # cyclist passing right in front of the lens (frames ~95–102), the hardest non-cut in these samples.
    detector = SceneCutDetector()
    with av.open(str(clip_path("bikes.mp4"))) as container:
        cuts = [i for i, f in enumerate(container.decode(video=0))
                if detector.update(cv2.resize(f.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA))]
    assert cuts == [30, 76, 137, 187, 242]


def test_fast_pan_and_slow_fade_are_not_cuts():
    wide = clip_frames("bigbuckbunny.mp4", 1, size=(640, 360))[0]
    pan = [wide[100:196, 8 * t: 8 * t + 128] for t in range(40)]  # 8 px/frame across a real frame
    assert detected_cuts(pan) == []
    fade = [np.clip(pan[0].astype(float) * (1 - 0.02 * t), 0, 255).astype(np.uint8) for t in range(40)]
    assert detected_cuts(fade) == []


def test_first_frame_is_not_a_cut_and_reset_forgets_the_past():
    frames = joined("bigbuckbunny.mp4", "carphone_pristine.mp4")
    detector = SceneCutDetector()
    assert detector.update(frames[0]) is False
    detector.reset()
    assert detector.update(frames[25]) is False  # would be a cut against frame 0 without the reset
    assert detector.last_distances is None


def test_min_scene_length_merges_a_flash_into_one_event():
    frames = list(clip_frames("carphone_pristine.mp4", 12, size=SIZE))
    frames[6] = clip_frames("bigbuckbunny.mp4", 1, size=SIZE)[0]  # a one-frame insert: in and out
    assert detected_cuts(frames, min_scene_length=1) == [6, 7]
    assert detected_cuts(frames) == [6]


def test_distances_are_exposed_for_logging():
    frames = joined("bigbuckbunny.mp4", "carphone_pristine.mp4", length=2)
    detector = SceneCutDetector()
    for frame in frames[:3]:
        detector.update(frame)
    layout, colours = detector.last_distances
    assert layout > 30 and 0.15 < colours <= 1


def test_invalid_input_is_refused():
    with pytest.raises(ValueError, match="H×W×3 uint8 RGB"):
        SceneCutDetector().update(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="positive"):
        SceneCutDetector(layout_threshold=0)


def test_mean_flow_magnitude_measures_translation_in_pixels():
    wide = clip_frames("bigbuckbunny.mp4", 1, size=(320, 180))[0]
    previous, current = wide[20:148, 40:168], wide[24:152, 43:171]  # content moves by (-3, -4): 5 px
    magnitude = mean_flow_magnitude(backward_flow(current, previous))
    assert magnitude == pytest.approx(5.0, rel=0.15)
    assert mean_flow_magnitude(backward_flow(previous, previous)) < 0.05
    with pytest.raises(ValueError, match="H×W×2 flow"):
        mean_flow_magnitude(np.zeros((4, 4, 3)))


def test_mean_flow_magnitude_is_exact_on_a_known_field():
    field = np.zeros((10, 10, 2), np.float32)
    field[..., 0], field[..., 1] = 3.0, 4.0
    field[:5] = 0  # half the frame still
    assert mean_flow_magnitude(field) == pytest.approx(2.5)
