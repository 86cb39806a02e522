"""Turn a decoded frame of any shape and pixel format into the S×S RGB uint8 the engine takes.

Geometry: centre-crop to the largest square (the side of min(width, height)), then resize that
square to S×S with `cv2.INTER_AREA`. INTER_AREA averages source pixels when shrinking (no
aliasing on 1080p → 512, the common case); when enlarging (a 16×16 input), OpenCV runs it as a
bilinear variant, which is allowed but of course adds no detail.

S itself must lie in [MIN_FRAME_SIZE, MAX_FRAME_SIZE] and be a multiple of FRAME_SIZE_MULTIPLE:
the TAESD VAE works on 8×8 pixel blocks and the U-Net halves the latent twice, so S must divide
by 32; 64 is the smallest size that leaves the U-Net a 2×2 bottleneck, and 2048 bounds one frame
(12 MiB) and one ring slot. Both sizes are also whole H.264 macroblocks, so encoders never pad.
"""

from __future__ import annotations

import av
import cv2
import numpy as np

from .errors import InvalidFrameSize

MIN_FRAME_SIZE = 64
MAX_FRAME_SIZE = 2048
FRAME_SIZE_MULTIPLE = 32


def validate_frame_size(size: int) -> int:
    """Return `size` if it is a supported S, else raise InvalidFrameSize naming the rule."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InvalidFrameSize(f"frame size must be an integer, got {size!r}")
    size = int(size)
    if not MIN_FRAME_SIZE <= size <= MAX_FRAME_SIZE or size % FRAME_SIZE_MULTIPLE:
        raise InvalidFrameSize(
            f"unsupported frame size {size}: S must be a multiple of {FRAME_SIZE_MULTIPLE} "
            f"between {MIN_FRAME_SIZE} and {MAX_FRAME_SIZE}"
        )
    return size


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an H×W(×C) image, as a view (no copy)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop `image` to a square and resize it to size×size (INTER_AREA). Always a new,
    C-contiguous array, so callers may keep it after the decoder reuses its buffers."""
    square = center_square(image)
    if square.shape[0] == size:
        return square.copy()
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Any decoded PyAV frame (gray, 10-bit, 4:4:4, odd size, full or limited range) → RGB uint8
    H×W×3. swscale does the conversion using the frame's own colour matrix and range tags."""
    range_tag = frame.color_range if frame.color_range in (1, 2) else None
    return frame.to_ndarray(format="rgb24", src_color_range=range_tag)


def to_model_frame(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Decoded frame → S×S×3 RGB uint8, the ring's slot format."""
    return square_resize(frame_to_rgb(frame), size)
