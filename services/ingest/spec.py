"""Classify a source spec string: a local file, an RTSP URL or a V4L2 webcam device."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.redact import redact_url

from .errors import UnsupportedSource


class SourceKind(str, Enum):
    FILE = "file"
    RTSP = "rtsp"
    WEBCAM = "webcam"


_WEBCAM_DEVICE = re.compile(r"^/dev/video\d+$")
_WEBCAM_ALIAS = re.compile(r"^webcam:(\d+)$")  # "webcam:0" → /dev/video0
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_RTSP_SCHEMES = ("rtsp", "rtsps")


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    location: str  # what FFmpeg opens: a path, a device node or the full URL (may hold credentials)
    display: str  # the same with credentials redacted: the only form used in messages and logs

    def __repr__(self) -> str:  # dataclass' default repr would print `location`
        return f"SourceSpec(kind={self.kind.value!r}, display={self.display!r})"


def parse_spec(spec: str) -> SourceSpec:
    if not isinstance(spec, str) or not spec.strip():
        raise UnsupportedSource(f"source spec must be a non-empty string, got {redact_url(repr(spec))}")
    spec = spec.strip()
    display = redact_url(spec)

    webcam = _WEBCAM_ALIAS.match(spec)
    if webcam:
        device = f"/dev/video{webcam.group(1)}"
        return SourceSpec(SourceKind.WEBCAM, device, device)
    if _WEBCAM_DEVICE.match(spec):
        return SourceSpec(SourceKind.WEBCAM, spec, spec)

    scheme = _URL_SCHEME.match(spec)
    if scheme:
        name = scheme.group(1).lower()
        if name in _RTSP_SCHEMES:
            if not urlsplit(spec).hostname:
                raise UnsupportedSource(f"RTSP URL has no host: {display}")
            return SourceSpec(SourceKind.RTSP, spec, display)
        if name == "file":
            path = unquote(urlsplit(spec).path)
            return SourceSpec(SourceKind.FILE, path, path)
        raise UnsupportedSource(
            f"unsupported source scheme {name!r} in {display}: use a file path, rtsp:// URL or /dev/videoN"
        )
    return SourceSpec(SourceKind.FILE, str(Path(spec).expanduser()), display)
