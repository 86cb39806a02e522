"""What the HTTP API needs from the rest of the service: the `ControlPlane` protocol and its models.

The supervisor implements `ControlPlane`; `services.api.app.create_app` turns it into HTTP routes.
Every method is synchronous and must be safe to call from several threads at once (the API calls
it from a thread pool). Methods raise the `ControlError` subclasses below for expected refusals;
anything else is treated as an internal fault (HTTP 500, logged with credentials redacted).

Credentials never leave through these models: every field that can hold a source or sink address
or an error text is redacted when the model is built (`redact_url`), whatever the implementer
passes in, `SecretUrl` included.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from shared.protocol import StreamStatus
from shared.settings import SecretUrl, SourceKind, StreamSettings, redact_url

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "PREVIEW_SIDES",
    "ControlError",
    "ControlPlane",
    "ControlUnavailable",
    "FrameCounters",
    "HealthInfo",
    "LatencyPercentiles",
    "PreviewControl",
    "PreviewSide",
    "ProcessHealth",
    "ProcessHealthState",
    "ReadyInfo",
    "SinkInfo",
    "StreamExists",
    "StreamInfo",
    "StreamRejected",
    "UnknownStream",
]


def _to_text(value: Any) -> Any:
    # A SecretUrl handed over as-is must come out redacted, not as its repr or its revealed value.
    return value.redacted if isinstance(value, SecretUrl) else value


RedactedText = Annotated[str, BeforeValidator(_to_text), AfterValidator(redact_url)]
"""Text that may quote a URL: credentials are stripped when the model is built."""


# --------------------------------------------------------------------------------------------------
# Errors the control plane raises for expected refusals (mapped to 4xx/503 by the API)
# --------------------------------------------------------------------------------------------------


class ControlError(Exception):
    """Base of the refusals a `ControlPlane` may raise. The message is shown to the API client."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_url(message))

    @property
    def message(self) -> str:
        return str(self)


class UnknownStream(ControlError):
    """No stream has this name (HTTP 404)."""

    def __init__(self, name: str) -> None:
        self.name = name
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(f"no stream named {shown!r}")


class StreamExists(ControlError):
    """A stream with this name is already running (HTTP 409)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a stream named {name!r} already exists; remove it first or choose another name")


class StreamRejected(ControlError):
    """The request is well-formed but cannot be carried out, e.g. a source or sink that cannot be
    used, an output file another stream writes, or no capacity left (HTTP 400). Say why in `message`."""


class ControlUnavailable(ControlError):
    """The control plane cannot answer now, e.g. the supervisor is starting or shutting down, or a
    process did not acknowledge in time (HTTP 503). Nothing was changed, or the message says what was."""


# --------------------------------------------------------------------------------------------------
# Models returned by the control plane
# --------------------------------------------------------------------------------------------------


class _Model(BaseModel):
    # forbid: an implementer's typo in a field name fails loudly instead of vanishing.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class SinkInfo(_Model):
    """One output of a stream."""

    type: Literal["mp4", "rtsp", "hls", "mjpeg"] = Field(description="Sink kind.")
    target: RedactedText | None = Field(
        None, description="File path, RTSP URL or host:port, credentials hidden; null for an mjpeg sink served by the API."
    )
    preview_url: str | None = Field(
        None, description="mjpeg only: URL of the browser preview page (null for other sinks or until it is up)."
    )


class FrameCounters(_Model):
    """Frames of one stream since it started."""

    frames_in: int = Field(0, ge=0, description="Frames read from the source.")
    frames_out: int = Field(0, ge=0, description="Stylised frames written to the sinks.")
    dropped: dict[str, int] = Field(
        default_factory=dict,
        description="Frames dropped, by reason (e.g. 'queue_full', 'stale_slot'); the same reasons as the "
        "`stylecast_frames_total{outcome=\"dropped_<reason>\"}` metric.",
    )


class LatencyPercentiles(_Model):
    """Capture-to-written latency of recent frames, in milliseconds; null until frames have been written."""

    p50: float | None = Field(None, ge=0, description="Median (ms).")
    p95: float | None = Field(None, ge=0, description="95th percentile (ms).")


class StreamInfo(_Model):
    """A stream as the API shows it. `source` and sink targets never contain credentials."""

    name: str = Field(description="Operator-chosen stream name.")
    source: RedactedText = Field(description="Input file path, rtsp:// URL (credentials hidden) or webcam device.")
    kind: SourceKind = Field(description="Source kind: file, rtsp or webcam.")
    prompt: str = Field(description="Style instruction in effect (or about to be, at the next batch).")
    prompt_version: int = Field(
        ge=1, description="1 for the stream's first prompt, +1 on every accepted prompt change."
    )
    state: StreamStatus = Field(description="Lifecycle state.")
    reason: RedactedText = Field("", description="Why the stream is in this state (e.g. the last source error); empty when running.")
    live: bool = Field(description="True: frames are dropped when the GPU is behind; false: the source waits.")
    sinks: list[SinkInfo] = Field(default_factory=list, description="Outputs.")
    gpu: str | None = Field(None, description="Label of the device serving this stream (e.g. 'cuda:0'); null until assigned.")
    counters: FrameCounters = Field(default_factory=FrameCounters, description="Frame counters since the stream started.")
    fps: float | None = Field(None, ge=0, description="Recent output rate in frames per second; null until measured.")
    latency_ms: LatencyPercentiles = Field(
        default_factory=LatencyPercentiles, description="Recent end-to-end latency percentiles (ms)."
    )
    started_at: datetime | None = Field(None, description="When the stream was added (UTC); null if unknown.")


class ProcessHealthState(enum.StrEnum):
    """A process as the supervisor sees it: the states of its heartbeats, plus the supervisor's verdicts."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    UNRESPONSIVE = "unresponsive"  # heartbeat overdue; a restart follows
    RESTARTING = "restarting"  # exited or killed, being started again
    FAILED = "failed"  # restarted too often within the window; given up on
    STOPPED = "stopped"


class ProcessHealth(_Model):
    """One process of the node."""

    name: str = Field(description="Process label, e.g. 'supervisor', 'gpu', 'ingest-cam1'.")
    pid: int | None = Field(None, ge=1, description="Operating-system process id; null while not running.")
    state: ProcessHealthState = Field(description="Lifecycle state.")
    heartbeat_age_s: float | None = Field(
        None, ge=0, description="Seconds since the last heartbeat; null if none was received yet."
    )
    restarts: int = Field(0, ge=0, description="Times the supervisor restarted this process in this run.")
    detail: RedactedText = Field("", description="Last problem reported by or about the process, if any.")


class HealthInfo(_Model):
    """Liveness of every process of the node (answered by the supervisor's API thread)."""

    processes: list[ProcessHealth] = Field(description="Every supervised process, the supervisor included.")


class ReadyInfo(_Model):
    """Readiness to stylise: true only once the GPU worker reports its models loaded."""

    ready: bool = Field(description="True when streams can be served.")
    reason: RedactedText = Field(description="Why not ready (e.g. 'gpu worker: loading models'), or what is ready.")


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class ControlPlane(Protocol):
    """Operations behind the HTTP API. Synchronous; the implementer makes them thread-safe.

    Stream names reaching these methods are always valid stream names (the API answers 404 for
    any other name without calling in). Every `StreamSettings` was validated by `parse_stream`.
    """

    def list_streams(self) -> list[StreamInfo]:
        """Every stream, in the order they were added."""
        ...

    def get_stream(self, name: str) -> StreamInfo:
        """The stream called `name`. Raises `UnknownStream`."""
        ...

    def add_stream(self, stream: StreamSettings) -> StreamInfo:
        """Start a stream (returns once it is accepted, typically in state 'starting').

        Raises `StreamExists`, or `StreamRejected` for a source or sink that cannot be used.
        """
        ...

    def remove_stream(self, name: str) -> None:
        """Stop a stream, draining it (accepted frames are written or counted dropped). Raises `UnknownStream`."""
        ...

    def set_prompt(self, name: str, prompt: str) -> StreamInfo:
        """Change the stream's instruction from the next batch on; `prompt_version` goes up by one on
        every accepted call. Raises `UnknownStream`, or `StreamRejected` (e.g. the prompt is too long
        for the text encoder)."""
        ...

    def health(self) -> HealthInfo:
        """State, pid, heartbeat age and restarts of every process."""
        ...

    def ready(self) -> ReadyInfo:
        """Ready only when the GPU worker reports its models loaded."""
        ...


PreviewSide = Literal["input", "output"]
PREVIEW_SIDES: tuple[str, ...] = ("input", "output")


@runtime_checkable
class PreviewControl(ControlPlane, Protocol):
    """A `ControlPlane` that can also show a stream's newest frames (the preview routes and the console).

    A separate protocol so that control planes without frames (tests, tools) still satisfy
    `ControlPlane`; `create_app` adds the preview routes only for implementations of this one.
    """

    def latest_frame(self, name: str, side: PreviewSide) -> np.ndarray | None:
        """The newest frame of the stream's input ('input': the ingested S×S frame) or output ('output':
        the stylised frame) as an S×S×3 uint8 RGB array, or None before the first one.

        Raises `UnknownStream`, or `ControlUnavailable` when it cannot look now.
        """
        ...
