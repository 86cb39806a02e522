"""Decode video files to RGB frames with PyAV, and fit an input frame to an output's size.

Every error names the file and the problem: a missing file, a file that is not a video (no
decodable video stream), an empty video, or — in `check_same_frame_count` — two videos whose
frame counts differ (both counts are in the message).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import cv2
import numpy as np


class VideoError(ValueError):
    """A file that cannot be evaluated as a video (not a video, no video stream, no frames)."""


class FrameCountMismatchError(ValueError):
    """Input and output videos hold different numbers of frames."""

    def __init__(self, input_path: str, input_frames: int, output_path: str, output_frames: int):
        self.input_frames = input_frames
        self.output_frames = output_frames
        super().__init__(
            f"frame counts differ: input {input_path!r} has {input_frames} frames, "
            f"output {output_path!r} has {output_frames} frames"
        )


@dataclass(frozen=True)
class VideoInfo:
    path: str
    frames: int
    width: int
    height: int
    fps: float | None  # average rate the container reports; None when it reports none


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {path!r}")
    if os.path.isdir(path):
        raise VideoError(f"not a video: {path!r} is a directory")
    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        raise VideoError(f"not a video: {path!r} cannot be opened by FFmpeg ({exc.strerror or exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"not a video: {path!r} has no video stream")
    return container


def iter_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield every frame of the first video stream as an H×W×3 uint8 RGB array, in display order."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise VideoError(f"not a video: decoding {os.fspath(path)!r} failed ({exc.strerror or exc})") from exc
    finally:
        container.close()


def read_video_frames(path: str | os.PathLike) -> np.ndarray:
    """All frames of the file as a T×H×W×3 uint8 RGB array. Raises VideoError when there are none."""
    frames = list(iter_video_frames(path))
    if not frames:
        raise VideoError(f"video {os.fspath(path)!r} has no decodable frames")
    return np.stack(frames)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Count decoded frames and read the size and rate. Decodes (without RGB conversion) because the
    container's frame count is sometimes missing or wrong; decoding is cheap next to optical flow."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        frames, width, height = 0, 0, 0
        try:
            for frame in container.decode(stream):
                if frames == 0:
                    width, height = frame.width, frame.height
                frames += 1
        except av.error.FFmpegError as exc:
            raise VideoError(f"not a video: decoding {os.fspath(path)!r} failed ({exc.strerror or exc})") from exc
        fps = float(stream.average_rate) if stream.average_rate else None
    finally:
        container.close()
    if frames == 0:
        raise VideoError(f"video {os.fspath(path)!r} has no decodable frames")
    return VideoInfo(os.fspath(path), frames, width, height, fps)


def check_same_frame_count(input_info: VideoInfo, output_info: VideoInfo) -> None:
    if input_info.frames != output_info.frames:
        raise FrameCountMismatchError(input_info.path, input_info.frames, output_info.path, output_info.frames)


def fit_to_size(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop `frame` to the aspect ratio of height×width, then resize it to exactly that size.

    Used to bring an input frame onto the output's grid (the engine centre-crops and resizes its
    sources the same way), so that flow computed on inputs applies to outputs. INTER_AREA when
    shrinking (no aliasing), INTER_LINEAR when enlarging. A frame already at the size is returned as is.
    """
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    # Largest centred window with the target aspect ratio.
    if w * height > h * width:  # too wide: crop columns
        crop_w, crop_h = max(1, round(h * width / height)), h
    else:  # too tall: crop rows
        crop_w, crop_h = w, max(1, round(w * height / width))
    y0, x0 = (h - crop_h) // 2, (w - crop_w) // 2
    window = frame[y0 : y0 + crop_h, x0 : x0 + crop_w]
    shrinking = crop_w * crop_h > width * height
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
