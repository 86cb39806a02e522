"""Video sources: `open_source(spec, size=S, ...)` → a `Source` that yields S×S RGB frames.

Kinds (see `spec.py`): a local file FFmpeg can read, an RTSP URL (TCP transport), or a V4L2
webcam (`/dev/videoN` or `webcam:N`). Every frame is centre-cropped to a square and resized to
S×S with INTER_AREA (`frames.py`). Decoding goes on past corrupt packets, which are counted. A file
is decoded up to its first picture when opened: one without any is refused as NotAVideo.
Errors are `SourceError` subclasses (`errors.py`) whose messages never contain credentials.

Timeouts. RTSP gets FFmpeg's socket `timeout` option (the larger of the two, in µs) and
PyAV's interrupt callback enforces each phase on its own: `connect_timeout_s` bounds the whole
open (TCP connect, RTSP handshake, stream probing; exceeding it raises SourceUnreachable), and
`read_timeout_s` bounds each packet read afterwards (exceeding it raises SourceTimeout).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, NamedTuple

import av
import numpy as np

from .av_errors import ffmpeg_reason, translate_av_error
from .errors import NotAVideo, SourceError, SourceNotFound, SourceUnreachable, UnsupportedSource
from .frames import to_model_frame, validate_frame_size
from .pacing import Pacer
from .spec import SourceKind, SourceSpec, parse_spec

log = logging.getLogger(__name__)

# After this many read errors in a row with no good packet between them, the input is taken to
# be unreadable from here on (a file would otherwise loop on the same broken spot forever).
MAX_CONSECUTIVE_READ_ERRORS = 32


class SourceFrame(NamedTuple):
    rgb: np.ndarray  # S×S×3 uint8, RGB, C-contiguous, owned by the caller
    capture_ts: float  # wall clock (time.time()) when the frame was decoded / released by pacing
    pts_s: float | None  # presentation time in the source's own timeline, seconds; None if unknown
    index: int  # 0-based position among the frames this source delivered


@dataclass
class SourceCounters:
    decoded: int = 0  # frames decoded and delivered
    corrupt_skipped: int = 0  # packets, reads or decoder-flagged frames that were corrupt and skipped


class Source:
    """An opened source. Iterate it for `SourceFrame`s; close it (or use `with`) when done.

    A file's iteration ends at end of file. A live source's iteration ends when the server ends
    the stream; a stall longer than the read timeout raises SourceTimeout. The caller reconnects.
    """

    def __init__(self, spec: SourceSpec, container: av.container.InputContainer, *, size: int,
                 live: bool, pace: bool, read_timeout_s: float) -> None:
        self._spec = spec
        self._container = container
        self._stream = container.streams.video[0]
        self._pacer = Pacer() if pace else None
        self._read_timeout_s = read_timeout_s
        self._iterating = False
        self._pictures = self._decoded()  # one decoding pass for the source's life
        self._first: av.VideoFrame | None = None  # decoded by open_source, delivered first
        self.size = size
        self.live = live
        self.paced = pace
        self.counters = SourceCounters()
        self.closed = False

    # -- what the source is ------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The spec with credentials redacted: safe for logs, metrics labels excepted (DESIGN §6)."""
        return self._spec.display

    @property
    def kind(self) -> SourceKind:
        return self._spec.kind

    @property
    def fps(self) -> float | None:
        """Nominal frame rate from the container (average, else guessed); None when unknown."""
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    @property
    def original_size(self) -> tuple[int, int]:
        """(width, height) of the stream before cropping and resizing."""
        return self._stream.codec_context.width, self._stream.codec_context.height

    @property
    def frame_count(self) -> int | None:
        """Frames the container says it holds (files only); None when it does not say."""
        frames = self._stream.frames
        return int(frames) if frames and self.kind is SourceKind.FILE else None

    def __repr__(self) -> str:
        return f"<Source {self.kind.value} {self.name} {self.size}x{self.size} live={self.live}>"

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[SourceFrame]:
        if self.closed:
            raise SourceError(f"{self.name}: source is closed")
        if self._iterating:
            raise SourceError(f"{self.name}: source is already being iterated")
        self._iterating = True
        try:
            yield from self._frames()
        finally:
            self._iterating = False

    def _frames(self) -> Iterator[SourceFrame]:
        time_base = self._stream.time_base
        if self._first is not None:
            first, self._first = self._first, None
            yield self._deliver(first, time_base)
        for frame in self._pictures:
            yield self._deliver(frame, time_base)
        self._note_early_end()

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """Decoded pictures; corrupt packets and concealed frames are skipped and counted."""
        for packet in self._packets():
            try:
                decoded = self._stream.decode(packet)
            except av.error.FFmpegError as exc:
                self.counters.corrupt_skipped += 1
                log.debug("%s: skipped a corrupt packet (%s)", self.name, ffmpeg_reason(exc, self._spec))
                continue
            for frame in decoded:
                if frame.is_corrupt:
                    # Concealed garbage (e.g. a damaged slice): the engine is better off without it.
                    self.counters.corrupt_skipped += 1
                    continue
                yield frame

    def _decode_first(self) -> None:
        """Decode up to the first picture now (iteration delivers it first); a file without one is not a video.

        FFmpeg's probe takes a few bytes that merely look like a header for a video stream: a GIF or PNG
        signature followed by junk, or an H.263 start code that turns up by chance in random bytes (a few
        random 4 KiB files in 10 000). Such a "video" decodes to nothing, and a run of it would end after 0 frames."""
        self._first = next(self._pictures, None)
        if self._first is None:
            skipped = self.counters.corrupt_skipped
            raise NotAVideo(f"{self.name}: not a video FFmpeg can decode (its {self._stream.codec_context.name} stream "
                            f"gave no picture{f'; {skipped} corrupt packet(s) skipped' if skipped else ''})")

    def _note_early_end(self) -> None:
        expected = self.frame_count
        if expected and self.counters.decoded < expected:
            log.warning("%s: ended after %d of the %d frames its header announces (truncated or damaged file?)",
                        self.name, self.counters.decoded, expected)

    def _deliver(self, frame: av.VideoFrame, time_base: Fraction | None) -> SourceFrame:
        index = self.counters.decoded
        pts_s = float(frame.pts * time_base) if frame.pts is not None and time_base else None
        rgb = to_model_frame(frame, self.size)
        late = 0.0
        if self._pacer is not None:
            fps = self.fps or 25.0
            late = self._pacer.wait_for(pts_s if pts_s is not None else index / fps)
        self.counters.decoded += 1
        return SourceFrame(rgb, time.time() - late, pts_s, index)  # a late frame keeps its due time

    def _packets(self) -> Iterator[av.Packet]:
        """Demuxed packets of the video stream. A demux generator dies with its first exception,
        so a read error that is not fatal starts a new one at the reader's current position."""
        consecutive_errors = 0
        while True:
            fatal: SourceError | None = None
            try:
                for packet in self._container.demux(self._stream):
                    consecutive_errors = 0
                    yield packet
                return
            except av.error.InvalidDataError as exc:
                # Corrupt or truncated data: skip it and read on. Anything else ends the source.
                self.counters.corrupt_skipped += 1
                consecutive_errors += 1
                reason = ffmpeg_reason(exc, self._spec)
                log.debug("%s: skipped unreadable data (%s)", self.name, reason)
                if consecutive_errors >= MAX_CONSECUTIVE_READ_ERRORS:
                    fatal = SourceError(f"{self.name}: gave up after {consecutive_errors} read errors in a row ({reason})")
            except av.error.FFmpegError as exc:
                fatal = translate_av_error(exc, self._spec, "read", self._read_timeout_s)
            if fatal is not None:
                raise fatal  # outside the except block: no __context__ holding the raw URL

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the decoder and connection. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._pictures.close()  # its demuxer before the container it reads
        try:
            self._container.close()
        except av.error.FFmpegError as exc:  # closing an RTSP session can fail on a dead link
            log.debug("%s: error while closing (%s)", self.name, ffmpeg_reason(exc, self._spec))

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_source(spec: str, *, size: int, live: bool | None = None, pace: bool = False,
                connect_timeout_s: float = 5.0, read_timeout_s: float = 5.0) -> Source:
    """Open a file path, `rtsp://` URL or `/dev/videoN` / `webcam:N` as a Source of size×size frames.

    live: None means "by kind": RTSP and webcams are live, a file is live when paced. Live only
    tells the caller how to treat backpressure (drop vs wait); an RTSP or webcam source cannot be
    made non-live. pace: release a file's frames at its native rate (ignored for RTSP and webcams,
    which run at their own rate anyway).
    """
    size = validate_frame_size(size)
    if connect_timeout_s <= 0 or read_timeout_s <= 0:
        raise ValueError("connect_timeout_s and read_timeout_s must be positive")
    parsed = parse_spec(spec)
    if parsed.kind is SourceKind.FILE:
        is_live = pace if live is None else live
    else:
        if live is False:
            raise UnsupportedSource(f"{parsed.display}: a {parsed.kind.value} source is always live")
        is_live, pace = True, False

    container = _open_container(parsed, connect_timeout_s, read_timeout_s)
    try:
        _check_video_stream(container, parsed)
        _tune_decoder(container.streams.video[0], live=is_live)
        source = Source(parsed, container, size=size, live=is_live, pace=pace, read_timeout_s=read_timeout_s)
        if parsed.kind is SourceKind.FILE:  # a camera's first picture may be a GOP away: it is not waited for here
            source._decode_first()
    except BaseException:
        container.close()
        raise
    log.info("opened %r (%dx%d, %s fps)", source, *source.original_size, source.fps)
    return source


def _open_container(spec: SourceSpec, connect_timeout_s: float, read_timeout_s: float):
    if spec.kind is SourceKind.FILE:
        _precheck_file(spec)
    options: dict[str, str] = {}
    fmt = None
    if spec.kind is SourceKind.RTSP:
        socket_timeout_us = int(max(connect_timeout_s, read_timeout_s) * 1e6)
        options = {
            "rtsp_transport": "tcp",
            "timeout": str(socket_timeout_us),
            "allowed_media_types": "video",  # don't set up audio tracks we would discard
        }
    elif spec.kind is SourceKind.WEBCAM:
        fmt = "v4l2"  # device defaults for size/rate/pixel format; untested here (no camera)
    started = time.monotonic()
    try:
        # Metadata text is only shown, never used: junk that probes as e.g. LRC lyrics has keys that are not
        # UTF-8, and strict decoding raised UnicodeDecodeError instead of the named error below.
        return av.open(spec.location, mode="r", format=fmt, options=options, metadata_errors="replace",
                       timeout=(connect_timeout_s, read_timeout_s))
    except av.error.FFmpegError as exc:
        if spec.kind is not SourceKind.FILE and time.monotonic() - started >= 0.95 * connect_timeout_s:
            # Our interrupt fired; FFmpeg may report it as whatever the cut-off read produced.
            error: SourceError = SourceUnreachable(
                f"{spec.display}: no answer within {connect_timeout_s:g} s while connecting")
        else:
            error = translate_av_error(exc, spec, "open", connect_timeout_s)
    # Raised outside the except block so that the PyAV exception (its text and .filename hold the
    # raw URL) is not even kept as __context__.
    raise error


def _precheck_file(spec: SourceSpec) -> None:
    """Cheap checks that give a clearer message than FFmpeg's for the common mistakes."""
    import os
    import stat

    try:
        info = os.stat(spec.location)
    except FileNotFoundError:
        raise SourceNotFound(f"{spec.display}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{spec.display}: cannot access ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise NotAVideo(f"{spec.display}: is a directory, not a video file")
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        raise NotAVideo(f"{spec.display}: file is empty (0 bytes)")


def _check_video_stream(container, spec: SourceSpec) -> None:
    if not container.streams.video:
        found = sorted({s.type for s in container.streams}) or ["none"]
        raise NotAVideo(f"{spec.display}: has no video stream (streams found: {', '.join(found)})")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise UnsupportedSource(f"{spec.display}: this FFmpeg build has no decoder for its video codec")


def _tune_decoder(stream, *, live: bool) -> None:
    # Frame threading adds a frame of latency per thread; a live stream keeps to slice threads.
    stream.thread_type = "SLICE" if live else "AUTO"
