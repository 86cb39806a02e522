"""One H.264 encoder setup shared by the MP4, RTSP and HLS sinks.

Output is 8-bit 4:2:0 (yuv420p), High profile, BT.709 limited range and tagged as such: what
every browser and hardware decoder plays. The RGB → YUV conversion is done explicitly with the
BT.709 matrix so the pixels agree with the tags (swscale's default would be BT.601, untagged), and
with OpenCV rather than swscale: swscale's BT.709 path took 3–8 ms per 512² frame in the egress
process's one thread, more than the encoder's own share at the service's rate (see `to_yuv_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np

from .errors import EncoderMissing, FrameRejected, UnsupportedRate

_AVCOL_BT709 = 1  # AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace value for BT.709
_AVCOL_RANGE_MPEG = 1


@dataclass(frozen=True)
class H264Settings:
    encoder: str = "libx264"
    # superfast: a file sink must keep up with the GPU (on noise-like content, veryfast managed ~93
    # fps at 512² on a 16-core H100 host, below the engine's 134); frame threads add the rest.
    preset: str = "superfast"
    crf: int = 20
    gop_frames: int | None = None  # keyframe interval; None → encoder default (250 for x264)
    low_latency: bool = False  # tune=zerolatency: no B-frames or lookahead (live pushes)
    fixed_gop: bool = False  # keyframes only every gop_frames (HLS segments cut exactly there)
    threads: int | None = None  # encoder threads; None → 8 frame threads (files), FFmpeg's default (low latency)
    extra: dict[str, str] = field(default_factory=dict)


def require_encoder(name: str, purpose: str) -> None:
    """Raise EncoderMissing unless this FFmpeg build has `name` as an H.264 encoder."""
    try:
        codec = av.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
        raise EncoderMissing(
            f"this FFmpeg build has no {name!r} encoder, needed for {purpose} "
            f"(PyAV's wheels include libx264)"
        ) from None
    if codec.canonical_name != "h264":
        raise EncoderMissing(f"{name!r} encodes {codec.canonical_name}, not H.264, needed for {purpose}")


MAX_FPS = 1000  # the highest output rate written (the supervisor refuses faster sources at the probe)


def exact_rate(fps: float | Fraction) -> Fraction:
    """29.97 → 30000/1001, 25.0 → 25: the rational rate containers want."""
    if fps is None or not 0 < float(fps) <= MAX_FPS:
        # A SinkError: the egress fails the stream on it (a restart would meet the same rate).
        raise UnsupportedRate(f"fps must be in (0, {MAX_FPS}], got {fps}")
    return Fraction(fps).limit_denominator(1001)


def add_h264_stream(container, size: int, fps: float | Fraction, settings: H264Settings):
    """Add a configured H.264 stream of size×size at constant rate `fps` to an output container."""
    rate = exact_rate(fps)
    options = {"preset": settings.preset, "crf": str(settings.crf), "profile": "high"}
    if settings.low_latency:
        options["tune"] = "zerolatency"
    if settings.gop_frames:
        options["g"] = str(settings.gop_frames)
        if settings.fixed_gop:
            options["keyint_min"] = str(settings.gop_frames)
            options["sc_threshold"] = "0"  # no extra keyframes at scene cuts
    options.update(settings.extra)
    stream = container.add_stream(settings.encoder, rate=rate, options=options)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.time_base = Fraction(rate.denominator, rate.numerator)
    codec = stream.codec_context
    if not settings.low_latency:
        codec.thread_type = "AUTO"  # frame threads: throughput for files and HLS; zerolatency keeps slices
        # 8 by default: x264's own default (1.5 per core) × streams oversubscribes; at B=16 on an H100 host the
        # encoder of random-weight (noise-like) output was the service's wall, so it can be raised per sink.
        codec.thread_count = settings.threads or 8
    elif settings.threads:
        codec.thread_count = settings.threads
    codec.color_primaries = codec.color_trc = codec.colorspace = _AVCOL_BT709
    codec.color_range = _AVCOL_RANGE_MPEG
    return stream


def check_frame(frame: np.ndarray, size: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (size, size, 3):
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise FrameRejected(f"expected an RGB uint8 frame of shape ({size}, {size}, 3), got {got}")
    return np.ascontiguousarray(frame)


def _bt709_limited_matrix() -> np.ndarray:
    """3×4 affine map from full-range R'G'B' (0–255) to limited-range Y'CbCr (Y 16–235, Cb/Cr 16–240)."""
    kr, kb = 0.2126, 0.0722
    kg = 1.0 - kr - kb
    luma = np.array([kr, kg, kb])
    cb = (np.array([0.0, 0.0, 1.0]) - luma) / (2 * (1 - kb))
    cr = (np.array([1.0, 0.0, 0.0]) - luma) / (2 * (1 - kr))
    rows = [luma * 219 / 255, cb * 224 / 255, cr * 224 / 255]
    return np.column_stack([np.array(rows), [16.0, 128.0, 128.0]]).astype(np.float32)


_BT709 = _bt709_limited_matrix()


def rgb_to_yuv420(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3), H and W even → I420 planes stacked as one (H·3/2, W) uint8 array: Y, then
    Cb and Cr at half size, each the BT.709 limited-range value of the 2×2 block's mean colour
    (centre-sited chroma). ≈ 0.6 ms at 512² on one core: cv2.transform is vectorised for 3×4 maps on
    3-channel images only, so the chroma rows are computed as a full 3-channel transform too."""
    height, width = rgb.shape[:2]
    if height % 2 or width % 2:
        raise FrameRejected(f"4:2:0 output needs an even frame size, got {width}×{height}")
    planes = np.empty((height * 3 // 2, width), np.uint8)
    cv2.extractChannel(cv2.transform(rgb, _BT709), 0, planes[:height])
    # The map is affine, so the mean colour's chroma is the mean of the chroma (up to rounding).
    half = cv2.transform(cv2.resize(rgb, (width // 2, height // 2), interpolation=cv2.INTER_AREA), _BT709)
    chroma = planes.reshape(-1)[height * width:]  # Cb's plane then Cr's, each (H/2)·(W/2) bytes
    chroma[:chroma.size // 2] = cv2.extractChannel(half, 1).reshape(-1)
    chroma[chroma.size // 2:] = cv2.extractChannel(half, 2).reshape(-1)
    return planes


def to_yuv_frame(rgb: np.ndarray, index: int) -> av.VideoFrame:
    """RGB uint8 → yuv420p BT.709 limited-range VideoFrame with pts = index (time base 1/fps)."""
    frame = av.VideoFrame.from_ndarray(rgb_to_yuv420(rgb), format="yuv420p")
    frame.pts = index
    return frame
