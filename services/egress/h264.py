"""One H.264 encoder setup shared by the MP4, RTSP and HLS sinks.

Output is 8-bit 4:2:0 (yuv420p), High profile, BT.709 limited range and tagged as such: what
every browser and hardware decoder plays. The RGB → YUV conversion is done explicitly with the
BT.709 matrix so the pixels agree with the tags (swscale's default would be BT.601, untagged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from .errors import EncoderMissing, FrameRejected

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


def exact_rate(fps: float | Fraction) -> Fraction:
    """29.97 → 30000/1001, 25.0 → 25: the rational rate containers want."""
    if fps is None or not 0 < float(fps) <= 1000:
        raise ValueError(f"fps must be in (0, 1000], got {fps!r}")
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


def to_yuv_frame(rgb: np.ndarray, index: int) -> av.VideoFrame:
    """RGB uint8 → yuv420p BT.709 limited-range VideoFrame with pts = index (time base 1/fps)."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame = frame.reformat(format="yuv420p", src_colorspace=Colorspace.ITU709, dst_colorspace=Colorspace.ITU709,
                           src_color_range=ColorRange.JPEG, dst_color_range=ColorRange.MPEG)
    frame.pts = index
    return frame
