"""Decoding files to RGB frames and fitting input frames to the output size."""

import cv2
import numpy as np
import pytest

from shared.quality.video_io import (
    FrameCountMismatchError,
    VideoError,
    check_same_frame_count,
    fit_to_size,
    probe_video,
    read_video_frames,
)
from tests.support.quality_clips import clip_frames, clip_path, write_video


def test_reads_every_frame_as_rgb(tmp_path):
    frames = clip_frames("carphone_pristine.mp4", 4)
    path = write_video(tmp_path / "clip.mkv", frames)
    decoded = read_video_frames(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (4, 144, 176, 3)
    np.testing.assert_array_equal(decoded, frames)  # lossless file: RGB order and values survive


def test_probe_counts_decoded_frames_of_a_real_mp4():
    info = probe_video(clip_path("carphone_pristine.mp4"))
    assert (info.frames, info.width, info.height) == (120, 176, 144)
    assert info.fps == pytest.approx(30000 / 1001)


def test_frame_count_check_names_both_files_and_counts(tmp_path):
    a = probe_video(write_video(tmp_path / "a.mkv", clip_frames("carphone_pristine.mp4", 3)))
    b = probe_video(write_video(tmp_path / "b.mkv", clip_frames("carphone_pristine.mp4", 2)))
    check_same_frame_count(a, a)
    with pytest.raises(FrameCountMismatchError, match=r"'.*a.mkv' has 3 frames, output '.*b.mkv' has 2 frames"):
        check_same_frame_count(a, b)


def test_empty_and_non_video_files_are_refused(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="not a video: .*empty.mp4"):
        read_video_frames(empty)
    with pytest.raises(FileNotFoundError, match="video file not found"):
        probe_video(tmp_path / "missing.mkv")


def test_fit_crops_the_centre_to_the_target_aspect_then_resizes():
    frame = clip_frames("carphone_pristine.mp4", 1)[0]  # 144 high × 176 wide
    square = fit_to_size(frame, 96, 96)
    expected = cv2.resize(frame[:, 16:160], (96, 96), interpolation=cv2.INTER_AREA)  # central 144×144
    np.testing.assert_array_equal(square, expected)
    tall = fit_to_size(frame, 120, 60)  # aspect 1:2 → central 144×72 window
    np.testing.assert_array_equal(tall, cv2.resize(frame[:, 52:124], (60, 120), interpolation=cv2.INTER_AREA))
    wide = fit_to_size(frame, 200, 400)  # enlarging: central 88×176 window, bilinear
    np.testing.assert_array_equal(wide, cv2.resize(frame[28:116], (400, 200), interpolation=cv2.INTER_LINEAR))


def test_fit_leaves_a_frame_of_the_right_size_alone():
    frame = clip_frames("carphone_pristine.mp4", 1)[0]
    assert fit_to_size(frame, 144, 176) is frame
