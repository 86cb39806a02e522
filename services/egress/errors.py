"""Errors raised by sinks. Messages name the problem and the target, credentials redacted."""

from __future__ import annotations


class SinkError(Exception):
    """Base class: a sink could not be opened, written or finalised."""


class SinkPathError(SinkError):
    """The output path or directory is missing, not a directory, or not writable."""


class EncoderMissing(SinkError):
    """This FFmpeg build lacks the encoder (or muxer) the sink needs."""


class SinkUnreachable(SinkError):
    """The media server refused, dropped or did not answer the connection."""


class FrameRejected(SinkError, ValueError):
    """A frame of the wrong shape/dtype, a frame out of order, or a write after close."""


class UnsupportedRate(SinkError, ValueError):
    """A frame rate no H.264 output is written at (a source's nominal rate can be anything)."""
