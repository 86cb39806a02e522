"""Sinks: where stylised S×S RGB frames go. `open_sink(type, target, size=S, fps=F)` → `Sink`.

Types
- "mp4":   H.264 MP4 file, constant frame rate `fps`, `+faststart`. Written to `<target>.partial`
           and renamed to `target` by a successful close(), so `target` only ever names a
           finalised, playable file.
- "rtsp":  H.264 pushed to a media server (RTSP ANNOUNCE/RECORD over TCP), low-latency tuning.
- "hls":   H.264 MPEG-TS segments + `index.m3u8` in the directory `target`.
- "mjpeg": live MJPEG-over-HTTP preview on 127.0.0.1 (`preview.py`); target "PORT" or "HOST:PORT".

Every sink numbers frames consecutively (frame k is shown at k/fps): the frame count written is
exactly the number of write() calls. `pts` passed to write() is the frame's source timestamp; it
must increase, and is checked so that a reordering bug upstream fails loudly instead of
producing a scrambled video. close() finalises, is idempotent, and is safe after a failed write.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from services.ingest.frames import validate_frame_size
from shared.redact import redact_url, scrub

from .errors import FrameRejected, SinkError, SinkPathError, SinkUnreachable
from .h264 import H264Settings, add_h264_stream, check_frame, exact_rate, require_encoder, to_yuv_frame

log = logging.getLogger(__name__)

SINK_TYPES = ("mp4", "rtsp", "hls", "mjpeg")


class Sink(ABC):
    """Common interface. Subclasses implement `_write` and `_finalise`."""

    kind: str = "sink"

    def __init__(self, target: str, size: int, fps: float | Fraction) -> None:
        self.target = redact_url(str(target))  # display form: safe for logs and errors
        self.size = validate_frame_size(size)
        self.fps = exact_rate(fps)
        self.frames_written = 0
        self.closed = False
        self.failed: SinkError | None = None  # the first write error; later writes re-raise it
        self._last_pts: float | None = None

    def write(self, frame_rgb: np.ndarray, pts: float | int | None = None) -> None:
        """Encode one S×S×3 RGB uint8 frame. `pts` (any unit) must increase from call to call."""
        if self.closed:
            raise FrameRejected(f"{self.kind} sink {self.target}: write after close")
        if self.failed is not None:
            raise self.failed
        frame = check_frame(frame_rgb, self.size)
        if pts is not None:
            if self._last_pts is not None and pts <= self._last_pts:
                raise FrameRejected(
                    f"{self.kind} sink {self.target}: frame pts {pts} does not follow {self._last_pts} (out of order)"
                )
            self._last_pts = pts
        try:
            self._write(frame)
        except SinkError as error:
            self.failed = error
            raise
        self.frames_written += 1

    def close(self) -> None:
        """Flush and finalise. Idempotent; after a failed write it only releases resources."""
        if self.closed:
            return
        self.closed = True
        self._finalise()

    @abstractmethod
    def _write(self, frame: np.ndarray) -> None: ...

    @abstractmethod
    def _finalise(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target} {self.size}x{self.size}@{float(self.fps):g} written={self.frames_written}>"


class EncodedSink(Sink):
    """A PyAV output container with one H.264 stream; subclasses say where it goes."""

    purpose = "H.264 output"

    def __init__(self, target: str, size: int, fps: float | Fraction, settings: H264Settings,
                 encoder: dict | None = None) -> None:
        """`encoder`: the operator's H264Settings fields (preset, crf, threads) over this sink kind's defaults."""
        super().__init__(target, size, fps)
        settings = replace(settings, **(encoder or {}))
        self._muxed: set[int] = set()  # frame numbers whose packets went to the output
        self.durable_frames = 0  # frames 0..n-1 are all in the output (what a crash would keep)
        require_encoder(settings.encoder, self.purpose)
        self._secret_source = str(target)  # only for scrubbing FFmpeg's text of it
        self._container = self._open_container()
        try:
            self._stream = add_h264_stream(self._container, self.size, self.fps, settings)
            self._start()
        except BaseException:
            self._abandon()
            raise

    @abstractmethod
    def _open_container(self): ...

    def _start(self) -> None:
        """Write the header now, so a bad target fails in open_sink rather than at the first frame."""
        translated(self._container.start_encoding, lambda exc: self._error(exc, "cannot start"))

    def _write(self, frame: np.ndarray) -> None:
        def encode() -> None:
            for packet in self._stream.encode(to_yuv_frame(frame, self.frames_written)):
                self._mux(packet)

        translated(encode, lambda exc: self._error(exc, "write failed"))

    def _mux(self, packet) -> None:
        number = packet.pts  # the frame number, in the encoder's 1/fps time base (mux rescales it)
        self._container.mux(packet)
        if number is not None:  # packets come in decode order: track the contiguous prefix
            self._muxed.add(int(number))
            while self.durable_frames in self._muxed:
                self._muxed.discard(self.durable_frames)
                self.durable_frames += 1

    def _finalise(self) -> None:
        if self.failed is not None:
            self._abandon()
            return

        def drain_and_close() -> None:
            for packet in self._stream.encode(None):  # the encoder's delayed frames
                self._mux(packet)
            self._container.close()  # writes the trailer (MP4 index, HLS ENDLIST)

        try:
            translated(drain_and_close, lambda exc: self._error(exc, "finalising failed"))
        except SinkError as error:
            self.failed = error
            self._abandon()
            raise
        self._on_finalised()

    def _on_finalised(self) -> None:
        log.info("%r finalised", self)

    def _abandon(self) -> None:
        try:
            self._container.close()
        except Exception as exc:  # noqa: BLE001 - already failing; the first error is what matters
            log.debug("%s: error while abandoning output: %s", self.target, scrub(str(exc), self._secret_source))

    def _error(self, exc: BaseException, what: str) -> SinkError:
        reason = scrub(getattr(exc, "strerror", None) or str(exc), self._secret_source)
        return SinkError(f"{self.kind} sink {self.target}: {what} ({reason})")


class Mp4Sink(EncodedSink):
    """H.264 in an MP4 file that survives a crash of its writer.

    While recording, packets go to MPEG-TS segment files beside the target (`<name>.part000.ts`, …),
    flushed packet by packet: a killed writer leaves a segment that is readable up to its last packet
    (an MP4 without its index would be lost whole). `close()` remuxes every segment, without
    re-encoding, into the MP4 (+faststart) and removes them. A sink opened where a crashed writer's
    segments lie keeps them and writes its frames into the next segment, so the final file holds both;
    `salvaged_frames` says how many frames came from the predecessor.
    """

    kind = "mp4"
    purpose = "MP4 output"

    def __init__(self, path: str | os.PathLike, size: int, fps: float | Fraction,
                 settings: H264Settings | None = None, encoder: dict | None = None) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        check_writable_file(self.path)
        self.segments = sorted(self.path.parent.glob(glob_escape(self.path.name) + ".part[0-9][0-9][0-9].ts"))
        self.salvaged_frames = sum(_count_packets(p) for p in self.segments)
        if self.segments:
            log.warning("mp4 sink %s: %d frame(s) in %d segment(s) left by a previous writer are kept",
                        self.path, self.salvaged_frames, len(self.segments))
        self.segment_path = self.path.with_name(f"{self.path.name}.part{len(self.segments):03d}.ts")
        # No B-frames: packets then come in display order, so what a crash leaves is a clean prefix.
        settings = settings or H264Settings()
        super().__init__(str(self.path), size, fps, replace(settings, extra={"bf": "0", **settings.extra}), encoder)

    def _open_container(self):
        try:
            return av.open(str(self.segment_path), "w", format="mpegts", options={"flush_packets": "1"})
        except av.error.FFmpegError as exc:
            raise SinkPathError(f"mp4 sink {self.target}: cannot create file ({exc.strerror or exc})") from None

    def _on_finalised(self) -> None:
        segments = [*self.segments, self.segment_path]
        translated(lambda: _remux_segments(segments, self.partial_path, self.size, self.fps),
                   lambda exc: self._error(exc, "finalising failed"))
        try:
            os.replace(self.partial_path, self.path)
        except OSError as exc:  # a SinkError, not a crash: a restarted egress would wait for an end already sent
            raise SinkError(f"mp4 sink {self.target}: finalising failed ({exc.strerror})") from None
        for segment in segments:
            segment.unlink(missing_ok=True)
        super()._on_finalised()

    def _abandon(self) -> None:
        super()._abandon()
        self.partial_path.unlink(missing_ok=True)
        if not self.segments:  # nothing kept from a predecessor: a failed sink leaves nothing behind
            self.segment_path.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _count_packets(segment: Path) -> int:
    try:
        with av.open(str(segment), format="mpegts") as container:  # named: a short segment defeats probing
            return sum(1 for packet in container.demux(video=0) if packet.pts is not None)
    except (av.error.FFmpegError, IndexError):
        return 0  # nothing readable: an empty segment


def _remux_segments(segments: list[Path], target: Path, size: int, fps: Fraction) -> None:
    """Copy the H.264 packets of consecutive MPEG-TS segments into one MP4, each segment's timestamps
    continuing where the previous one's ended. No packets at all still gives a valid, empty MP4."""
    with av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as output:
        out_stream, offset = None, 0
        for segment in segments:
            if _count_packets(segment) == 0:
                continue
            with av.open(str(segment), format="mpegts") as source:
                if not source.streams.video:
                    continue
                in_stream = source.streams.video[0]
                if out_stream is None:
                    out_stream = output.add_stream_from_template(in_stream)
                first, end = None, offset
                for packet in source.demux(in_stream):
                    if packet.pts is None:
                        continue
                    if first is None:
                        first = packet.dts if packet.dts is not None else packet.pts
                    packet.pts = packet.pts - first + offset
                    packet.dts = None if packet.dts is None else packet.dts - first + offset
                    end = max(end, packet.pts + (packet.duration or 0))
                    packet.stream = out_stream
                    output.mux(packet)
                offset = end
        if out_stream is None:
            add_h264_stream(output, size, fps, H264Settings())
            output.start_encoding()  # the header now: a container that never started writes no file at all


class RtspSink(EncodedSink):
    """Push to an RTSP server that accepts ANNOUNCE/RECORD (MediaMTX, GStreamer RECORD mounts)."""

    kind = "rtsp"
    purpose = "RTSP push"

    def __init__(self, url: str, size: int, fps: float | Fraction, settings: H264Settings | None = None,
                 timeout_s: float = 5.0, encoder: dict | None = None) -> None:
        if not str(url).lower().startswith("rtsp://"):
            raise SinkError(f"rtsp sink: target must be an rtsp:// URL, got {redact_url(str(url))}")
        self._url, self._timeout_s = str(url), timeout_s
        fps_rate = exact_rate(fps)
        settings = settings or H264Settings(low_latency=True, gop_frames=max(1, round(2 * float(fps_rate))))
        super().__init__(self._url, size, fps, settings, encoder)

    def _open_container(self):
        options = {"rtsp_transport": "tcp", "timeout": str(int(self._timeout_s * 1e6))}
        return translated(lambda: av.open(self._url, "w", format="rtsp", options=options), self._unreachable)

    def _start(self) -> None:
        # ANNOUNCE + SETUP + RECORD happen here.
        translated(self._container.start_encoding, self._unreachable)

    def _unreachable(self, exc: BaseException) -> SinkError:
        return self._error(exc, "cannot push to the server")

    def _error(self, exc: BaseException, what: str) -> SinkError:
        # Whatever fails on a push (refused, reset, timed out, rejected) is the server's side.
        reason = scrub(getattr(exc, "strerror", None) or str(exc), self._url)
        return SinkUnreachable(f"rtsp sink {self.target}: {what} ({reason})")


class HlsSink(EncodedSink):
    """MPEG-TS segments of `segment_s` seconds and a playlist in a directory.

    `target` is the directory (playlist `index.m3u8`) or the playlist path itself (`…/name.m3u8`).

    playlist_size 0 keeps every segment in the playlist (a recording, VOD once closed); N > 0
    keeps a sliding live window of N segments and deletes older segment files.
    """

    kind = "hls"
    purpose = "HLS output"
    PLAYLIST = "index.m3u8"

    def __init__(self, directory: str | os.PathLike, size: int, fps: float | Fraction,
                 segment_s: float = 2.0, playlist_size: int = 0, settings: H264Settings | None = None,
                 encoder: dict | None = None) -> None:
        if segment_s <= 0 or playlist_size < 0:
            raise ValueError("segment_s must be positive and playlist_size >= 0")
        target = Path(directory)
        self.directory = target.parent if target.suffix == ".m3u8" else target
        self.playlist_path = target if target.suffix == ".m3u8" else self.directory / self.PLAYLIST
        self.segment_s, self.playlist_size = segment_s, playlist_size
        check_writable_directory(self.directory)
        gop = max(1, round(segment_s * float(exact_rate(fps))))
        settings = settings or H264Settings(low_latency=True, gop_frames=gop, fixed_gop=True)
        super().__init__(str(self.directory), size, fps, settings, encoder)

    def _open_container(self):
        flags = "independent_segments" + ("+delete_segments" if self.playlist_size else "")
        options = {
            "hls_time": f"{self.segment_s:g}",
            "hls_list_size": str(self.playlist_size),
            "hls_segment_filename": str(self.directory / "segment_%05d.ts"),
            "hls_flags": flags,
        }
        if self.playlist_size == 0:
            options["hls_playlist_type"] = "event"  # grows; ENDLIST on close makes it VOD
        try:
            return av.open(str(self.playlist_path), "w", format="hls", options=options)
        except av.error.FFmpegError as exc:
            raise SinkPathError(f"hls sink {self.target}: cannot create playlist ({exc.strerror or exc})") from None


def translated(action, make_error):
    """Run `action`; turn a PyAV error into `make_error(exc)`, raised outside the except block so
    the PyAV exception (whose text may hold the raw URL) is not kept as __context__."""
    try:
        return action()
    except av.error.FFmpegError as exc:
        error = make_error(exc)
    raise error


def check_writable_file(path: Path) -> None:
    """Clear errors for the usual mistakes before FFmpeg gives a vaguer one."""
    parent = path.parent
    if path.is_dir():
        raise SinkPathError(f"output path {path} is a directory")
    if not parent.exists():
        raise SinkPathError(f"output directory {parent} does not exist")
    if not parent.is_dir():
        raise SinkPathError(f"output directory {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SinkPathError(f"output directory {parent} is not writable")


def check_writable_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise SinkPathError(f"HLS output {directory} exists and is not a directory")
    if not directory.exists():
        check_writable_file(directory)  # its parent must be a writable directory
        directory.mkdir()
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SinkPathError(f"HLS output directory {directory} is not writable")


def open_sink(type: str, target: str, *, size: int, fps: float | Fraction, **options) -> Sink:
    """Build a sink. `options` go to the sink class: mp4/rtsp/hls take `settings: H264Settings` and
    `encoder` (preset / crf / threads over that kind's defaults);
    rtsp `timeout_s`; hls `segment_s`, `playlist_size`; mjpeg `quality`, `max_clients`."""
    kind = str(type).lower()
    if kind == "mp4":
        return Mp4Sink(target, size, fps, **options)
    if kind == "rtsp":
        return RtspSink(target, size, fps, **options)
    if kind == "hls":
        return HlsSink(target, size, fps, **options)
    if kind == "mjpeg":
        from .preview import MjpegPreviewSink

        return MjpegPreviewSink(target, size, fps, **options)
    raise SinkError(f"unknown sink type {type!r}: expected one of {', '.join(SINK_TYPES)}")
