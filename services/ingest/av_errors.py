"""Translate PyAV/FFmpeg exceptions into the SourceError hierarchy, with credential-free text."""

from __future__ import annotations

import errno
from typing import Literal

import av

from shared.redact import scrub

from .errors import (
    NotAVideo,
    SourceAuthFailed,
    SourceError,
    SourceNotFound,
    SourceTimeout,
    SourceUnreachable,
    UnsupportedSource,
)
from .spec import SourceKind, SourceSpec

Phase = Literal["open", "read"]

_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EHOSTDOWN,
    errno.EPIPE,
    errno.EIO,  # FFmpeg reports a failed host-name lookup as EIO
}


def ffmpeg_reason(exc: BaseException, spec: SourceSpec) -> str:
    """FFmpeg's own wording (e.g. 'Connection refused'), without the echoed URL or credentials."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return scrub(str(reason), spec.location)


def translate_av_error(exc: BaseException, spec: SourceSpec, phase: Phase, timeout_s: float) -> SourceError:
    """The SourceError for a PyAV exception met while opening or reading. Raise it outside the
    `except` block, so the PyAV exception (which holds the raw URL) is not kept as __context__."""
    where = spec.display
    reason = ffmpeg_reason(exc, spec)
    network = spec.kind is SourceKind.RTSP

    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):
        # ExitError: PyAV's interrupt callback fired (our open/read timeout); ETIMEDOUT: FFmpeg's socket timeout.
        if phase == "open":
            return SourceUnreachable(f"{where}: no answer within {timeout_s:g} s while connecting")
        return SourceTimeout(f"{where}: stalled, no data for {timeout_s:g} s")
    if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
        return SourceAuthFailed(f"{where}: the server rejected the credentials ({reason})")
    if isinstance(exc, av.error.HTTPNotFoundError):
        return SourceNotFound(f"{where}: the server has no such stream ({reason})")
    if isinstance(exc, av.error.HTTPError):
        return SourceUnreachable(f"{where}: the server answered with an error ({reason})")
    if isinstance(exc, av.error.FileNotFoundError):
        return SourceNotFound(f"{where}: no such file or device")
    if isinstance(exc, av.error.IsADirectoryError):
        return NotAVideo(f"{where}: is a directory, not a video file")
    if isinstance(exc, av.error.PermissionError):
        return SourceError(f"{where}: permission denied")
    if isinstance(exc, (av.error.DemuxerNotFoundError, av.error.ProtocolNotFoundError)):
        return UnsupportedSource(f"{where}: this FFmpeg build cannot read it ({reason})")
    if isinstance(exc, av.error.InvalidDataError):
        if network:
            return SourceUnreachable(f"{where}: the server's answer is not a valid RTSP stream ({reason})")
        return NotAVideo(f"{where}: not a video FFmpeg can read ({reason})")
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS and (network or phase == "read"):
        if phase == "open":
            return SourceUnreachable(f"{where}: cannot connect ({reason})")
        return SourceUnreachable(f"{where}: connection lost ({reason})")
    return SourceError(f"{where}: {phase} failed ({type(exc).__name__}: {reason})")
