"""Bus messages: pydantic schemas, msgpack bodies, a versioned envelope. Ids and timestamps, never pixels.

Wire format: `msgpack({"v": PROTOCOL_VERSION, "t": "<type>", "b": {<fields>}})`. Pixels travel in
shared-memory rings (`shared.ring`); a message names the slot and generation to read.

`decode` is the only way in and is total: any input either yields a validated message or raises
`ProtocolError` (with a short machine `reason` and a one-line message naming the problem). No pickle.

Clock: every timestamp is `now()` (`time.monotonic()`, seconds): system-wide on Linux, so stage
latencies can be subtracted across the processes of one node.
"""

from __future__ import annotations

import enum
import time
from typing import Annotated, Any, ClassVar, Literal

import msgpack
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.settings import StreamName, StreamSettings, redact_url

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 65536
MAX_BATCH = 64


def now() -> float:
    """The protocol clock (CLOCK_MONOTONIC seconds, shared by the processes of a node)."""
    return time.monotonic()


class ProtocolError(ValueError):
    """A message that cannot be accepted. `reason` is one of `REJECT_REASONS` (a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


REJECT_REASONS = (
    "not_bytes", "oversized", "malformed", "bad_envelope", "bad_version", "unknown_type", "invalid_body",
    "unexpected_type", "bad_frames",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------------

Seq = Annotated[int, Field(ge=0, lt=2**63, description="Per-stream frame number, from 0, strictly increasing.")]
Slot = Annotated[int, Field(ge=0, lt=65536, description="Ring slot index.")]
BatchId = Annotated[int, Field(ge=0, lt=2**63, description="GPU batch number.")]
Timestamp = Annotated[float, Field(description="`now()` seconds (CLOCK_MONOTONIC).")]
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Correlates a control request with its Ack.")]
ProcessName = Annotated[str, Field(pattern=r"^[a-z0-9_.:-]{1,96}$", description="Process label, e.g. 'gpu', 'ingest-cam1'.")]
Reason = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,48}$")]


def _check_generation(value: int) -> int:
    if value % 2:
        raise ValueError(f"generation {value} is odd: the slot was being written")
    return value


Generation = Annotated[int, Field(ge=0, lt=2**63), AfterValidator(_check_generation)]
# Free text may quote a URL from an error: credentials are stripped at construction, on both sides.
FreeText = Annotated[str, Field(max_length=2000), AfterValidator(redact_url)]
Prompt = Annotated[str, Field(min_length=1, max_length=2000)]


class FrameFlags(enum.IntFlag):
    """Bits of `Frame.flags` / `Styled.flags`."""

    NONE = 0
    DISCONTINUITY = 1  # first frame after a (re)connect or seek: temporal state must restart
    SCENE_CUT = 2  # ingest saw a cut: refresh the conditioning
    LAST = 4  # last frame of a finite source


class StreamStatus(enum.StrEnum):
    """Lifecycle of a stream as the API and metrics show it."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    STOPPED = "stopped"


class ProcessState(enum.StrEnum):
    """Lifecycle of a process as its heartbeat reports it."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"


Stage = Literal["ingest", "flow", "gpu", "egress"]


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Message]] = {}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False, hide_input_in_errors=True)


class Message(_Strict):
    """Base of every bus message. Subclasses set `TYPE`, the envelope's `t`."""

    TYPE: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = cls.__dict__.get("TYPE")
        if name is None:
            return
        if name in _REGISTRY:
            raise TypeError(f"message type {name!r} is defined twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        _REGISTRY[name] = cls


class SlotRef(_Strict):
    """One frame in a ring: its sequence number and where it lies."""

    seq: Seq
    slot: Slot
    generation: Generation


class Frame(Message):
    """ingest → gpu/flow: a new input frame is in the stream's input ring."""

    TYPE: ClassVar[str] = "frame"
    stream: StreamName
    seq: Seq
    slot: Slot
    generation: Generation
    t_capture: Timestamp
    t_ingest: Timestamp
    flags: int = Field(0, ge=0, lt=2**16, description="FrameFlags bits.")
    pts: float | None = Field(None, description="Presentation time in the source's own timeline (s), when it has one.")


class Styled(Message):
    """gpu → egress: a stylised frame is in the stream's output ring."""

    TYPE: ClassVar[str] = "styled"
    stream: StreamName
    seq: Seq
    slot: Slot
    generation: Generation
    batch_id: BatchId
    t_capture: Timestamp
    t_ingest: Timestamp
    t_batch_start: Timestamp
    t_side_done: Timestamp
    t_main_done: Timestamp
    flags: int = Field(0, ge=0, lt=2**16)
    pts: float | None = None
    prompt_version: int = Field(0, ge=0, lt=2**31, description="Which of the stream's prompts styled this frame (bumps on each change).")


class FrameDropped(Message):
    """Any stage → egress/supervisor: frame `seq` will never arrive (keeps drain accounting exact)."""

    TYPE: ClassVar[str] = "frame_dropped"
    stream: StreamName
    seq: Seq
    stage: Stage
    reason: Reason


class FlowRequest(Message):
    """gpu → flow: backward flows from `source` (previous batch's last input) to each target input."""

    TYPE: ClassVar[str] = "flow_request"
    stream: StreamName
    batch_id: BatchId
    source: SlotRef
    targets: list[SlotRef] = Field(min_length=1, max_length=MAX_BATCH)


class FlowReady(Message):
    """flow → gpu: flows are in the flow ring (`targets[i]`: target seq and its flow slot), or `failed`."""

    TYPE: ClassVar[str] = "flow_ready"
    stream: StreamName
    batch_id: BatchId
    source_seq: Seq
    targets: list[SlotRef] = Field(default_factory=list, max_length=MAX_BATCH)
    failed: FreeText | None = Field(None, description="Why no flow was computed (e.g. a stale input slot).")

    @model_validator(mode="after")
    def _targets_or_failure(self) -> FlowReady:
        if self.failed is None and not self.targets:
            raise ValueError("a successful flow_ready needs at least one target")
        return self


class Heartbeat(Message):
    """Every process → supervisor, every `service.heartbeat_interval_s`."""

    TYPE: ClassVar[str] = "heartbeat"
    process: ProcessName
    pid: int = Field(ge=1, lt=2**31)
    time: Timestamp
    state: Annotated[ProcessState, Field(strict=False)]
    detail: FreeText = ""


class AddStream(Message):
    """api → supervisor: start a stream. The body carries the real source URL (the bus is private)."""

    TYPE: ClassVar[str] = "add_stream"
    request_id: RequestId | None = None
    stream: StreamSettings


class RemoveStream(Message):
    """api → supervisor: stop a stream (draining it)."""

    TYPE: ClassVar[str] = "remove_stream"
    request_id: RequestId | None = None
    stream: StreamName


class SetPrompt(Message):
    """api → supervisor → gpu: new instruction, applied at the next batch boundary."""

    TYPE: ClassVar[str] = "set_prompt"
    request_id: RequestId | None = None
    stream: StreamName
    prompt: Prompt


class Stop(Message):
    """supervisor → process: shut down; with `drain`, finish or count every accepted frame first."""

    TYPE: ClassVar[str] = "stop"
    request_id: RequestId | None = None
    drain: bool = True
    reason: FreeText = ""


class StreamState(Message):
    """Any → supervisor/api: a stream changed state."""

    TYPE: ClassVar[str] = "stream_state"
    stream: StreamName
    state: Annotated[StreamStatus, Field(strict=False)]
    reason: FreeText = ""
    time: Timestamp


class Ack(Message):
    """Answer to a control request."""

    TYPE: ClassVar[str] = "ack"
    request_id: RequestId | None = None
    ok: bool
    error: FreeText | None = None


class Error(Message):
    """A process reports a problem it handled (the supervisor logs and counts it)."""

    TYPE: ClassVar[str] = "error"
    process: ProcessName
    code: Reason
    message: FreeText
    stream: StreamName | None = None
    seq: Seq | None = None


def message_types() -> dict[str, type[Message]]:
    """Envelope type name → message class, for every registered message."""
    return dict(_REGISTRY)


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def encode(msg: Message, max_bytes: int | None = None) -> bytes:
    """Envelope + msgpack body. With `max_bytes`, refuse (ProtocolError 'oversized') what a receiver would."""
    if not isinstance(msg, Message) or type(msg).__dict__.get("TYPE") is None:
        raise TypeError(f"encode needs a protocol Message, got {type(msg).__name__}")
    body = msg.model_dump(mode="json", context={"reveal_secrets": True})
    data = msgpack.packb({"v": PROTOCOL_VERSION, "t": msg.TYPE, "b": body}, use_bin_type=True)
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError("oversized", f"{msg.TYPE} message of {len(data)} bytes exceeds the limit of {max_bytes}")
    return data


def _error_summary(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)) or "(body)"
        exc_obj = (err.get("ctx") or {}).get("error")
        text = str(exc_obj) if err["type"] == "value_error" and exc_obj is not None else err["msg"]
        parts.append(f"{loc}: {text}")
    more = exc.error_count() - limit
    return redact_url("; ".join(parts) + (f"; and {more} more" if more > 0 else ""))


def decode(data: Any, max_bytes: int = DEFAULT_MAX_BYTES, expect: tuple[type[Message], ...] | None = None) -> Message:
    """Validate and return the message in `data`; raise `ProtocolError` for anything else, never another error.

    Rejects non-bytes, more than `max_bytes`, malformed msgpack, a bad envelope, another protocol
    version, an unknown type, a body that fails its schema, or (with `expect`) another message type.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("not_bytes", f"expected bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size == 0:
        raise ProtocolError("malformed", "empty message")
    if size > max_bytes:
        raise ProtocolError("oversized", f"message of {size} bytes exceeds the limit of {max_bytes}")
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types (ExtraData, ValueError, StackError, ...)
        raise ProtocolError("malformed", f"not a msgpack message ({type(exc).__name__})") from None

    if not isinstance(envelope, dict):
        raise ProtocolError("bad_envelope", f"envelope must be a map, got {type(envelope).__name__}")
    if set(envelope) != {"v", "t", "b"}:
        keys = sorted(str(k)[:20] for k in envelope)[:8]
        raise ProtocolError("bad_envelope", f"envelope needs exactly the keys v, t, b; got {keys}")
    version, type_name, body = envelope["v"], envelope["t"], envelope["b"]
    if type(version) is not int:
        raise ProtocolError("bad_envelope", f"version must be an integer, got {type(version).__name__}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {version} is not supported (this build speaks {PROTOCOL_VERSION})")
    if not isinstance(type_name, str):
        raise ProtocolError("bad_envelope", f"message type must be a string, got {type(type_name).__name__}")
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {type_name[:64]!r}")
    if not isinstance(body, dict):
        raise ProtocolError("bad_envelope", f"{type_name} body must be a map, got {type(body).__name__}")
    try:
        msg = cls.model_validate(body)
    except ValidationError as exc:
        raise ProtocolError("invalid_body", f"invalid {type_name} message: {_error_summary(exc)}") from None
    except Exception as exc:  # a validator bug must still not crash a receiver
        raise ProtocolError("invalid_body", f"invalid {type_name} message ({type(exc).__name__})") from None
    if expect is not None and not isinstance(msg, expect):
        wanted = ", ".join(c.TYPE for c in expect)
        raise ProtocolError("unexpected_type", f"got a {type_name} message where {wanted} was expected")
    return msg
