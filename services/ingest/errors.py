"""Errors raised while opening or reading a video source.

Every message names the problem and the source, with any credentials in the source URL
replaced by `***` (see `redact.py`). They are raised outside the `except` block that caught the
PyAV exception, so it is neither chained nor kept as __context__: its text and `filename` carry
the raw URL, and a traceback or error reporter walking the chain would print it.
"""

from __future__ import annotations


class SourceError(Exception):
    """Base class: a source could not be opened or stopped delivering frames."""


class SourceNotFound(SourceError):
    """The file, device or RTSP path does not exist (ENOENT, HTTP/RTSP 404)."""


class NotAVideo(SourceError):
    """The input exists but holds no decodable video stream (empty, garbage, audio-only)."""


class SourceUnreachable(SourceError):
    """The host refused, dropped or did not answer the connection within the connect timeout."""


class SourceAuthFailed(SourceError):
    """The server rejected the credentials (RTSP 401/403)."""


class SourceTimeout(SourceError):
    """An opened source delivered nothing for longer than the read timeout (a stall)."""


class UnsupportedSource(SourceError):
    """The spec names a kind of source or an option this service does not handle."""


class InvalidFrameSize(ValueError):
    """The requested output size S is outside the supported range (see `frames.py`)."""
