"""Protocol: every message round-trips; anything else is a ProtocolError, never a crash."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import shared.protocol as protocol
from shared.protocol import (
    PROTOCOL_VERSION,
    REJECT_REASONS,
    Ack,
    AddStream,
    Error,
    FlowReady,
    FlowRequest,
    Frame,
    FrameDropped,
    FrameFlags,
    Heartbeat,
    Message,
    ProcessState,
    ProtocolError,
    RemoveStream,
    SetPrompt,
    SlotRef,
    Stop,
    StreamState,
    StreamStatus,
    Styled,
    decode,
    encode,
    message_types,
    now,
)
from shared.settings import StreamSettings

SECRET = "pa55word"


def examples() -> list[Message]:
    t = now()
    return [
        Frame(stream="cam", seq=0, slot=3, generation=2, t_capture=t, t_ingest=t, flags=FrameFlags.DISCONTINUITY, pts=0.04),
        Styled(stream="cam", seq=9, slot=1, generation=10, batch_id=4, t_capture=t, t_ingest=t, t_batch_start=t, t_side_done=t, t_main_done=t),
        FrameDropped(stream="cam", seq=5, stage="gpu", reason="queue_full"),
        FlowRequest(stream="cam", batch_id=3, source=SlotRef(seq=7, slot=7, generation=2), targets=[SlotRef(seq=8, slot=0, generation=4)]),
        FlowReady(stream="cam", batch_id=3, source_seq=7, targets=[SlotRef(seq=8, slot=2, generation=6)]),
        FlowReady(stream="cam", batch_id=4, source_seq=7, failed="input slot was overwritten"),
        Heartbeat(process="ingest-cam", pid=1234, time=t, state=ProcessState.READY),
        AddStream(request_id="r1", stream=StreamSettings(name="cam", source=f"rtsp://u:{SECRET}@h/x", prompt="oil painting")),
        RemoveStream(request_id="r2", stream="cam"),
        SetPrompt(stream="cam", prompt="watercolour"),
        Stop(drain=True, reason="SIGTERM"),
        StreamState(stream="cam", state=StreamStatus.RECONNECTING, reason="read timeout", time=t),
        Ack(request_id="r1", ok=False, error="no such stream"),
        Error(process="gpu", code="cuda_oom", message="out of memory", stream="cam", seq=3),
    ]


def test_examples_cover_every_message_type() -> None:
    assert {type(m).TYPE for m in examples()} == set(message_types())


@pytest.mark.parametrize("msg", examples(), ids=lambda m: type(m).TYPE)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    envelope = msgpack.unpackb(data)
    assert set(envelope) == {"v", "t", "b"} and envelope["v"] == PROTOCOL_VERSION and envelope["t"] == msg.TYPE
    assert decode(data) == msg
    assert decode(bytearray(data)) == msg and decode(memoryview(data)) == msg


def test_add_stream_carries_the_real_source_but_prints_it_redacted() -> None:
    msg = next(m for m in examples() if isinstance(m, AddStream))
    assert decode(encode(msg)).stream.source.reveal() == f"rtsp://u:{SECRET}@h/x"
    assert SECRET not in repr(msg) and SECRET not in str(msg)


def test_free_text_is_redacted_at_construction() -> None:
    state = StreamState(stream="cam", state="failed", reason=f"cannot open rtsp://admin:{SECRET}@cam/x", time=1.0)
    assert state.reason == "cannot open rtsp://***@cam/x"
    assert SECRET not in decode(encode(state)).reason


def test_messages_are_immutable() -> None:
    frame = examples()[0]
    with pytest.raises(ValidationError, match="frozen"):
        frame.seq = 5  # type: ignore[misc]


def pack(v: object = PROTOCOL_VERSION, t: object = "frame", b: object = None) -> bytes:
    return msgpack.packb({"v": v, "t": t, "b": {} if b is None else b})


GOOD_FRAME = {"stream": "cam", "seq": 1, "slot": 0, "generation": 2, "t_capture": 1.0, "t_ingest": 1.5}


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        ("text", "not_bytes", "expected bytes, got str"),
        (b"", "malformed", "empty"),
        (b"\xc1", "malformed", "not a msgpack message"),
        (msgpack.packb({"v": 1, "t": "frame", "b": {}}) + b"\x00", "malformed", "not a msgpack message"),
        (msgpack.packb([1, "frame", {}]), "bad_envelope", "envelope must be a map"),
        (msgpack.packb({"v": 1, "t": "frame"}), "bad_envelope", "exactly the keys v, t, b"),
        (msgpack.packb({"v": 1, "t": "frame", "b": {}, "x": 1}), "bad_envelope", "exactly the keys v, t, b"),
        (msgpack.packb({1: 1}), "malformed", "not a msgpack message"),  # non-string map key
        (pack(v=True), "bad_envelope", "version must be an integer"),
        (pack(v=2), "bad_version", "protocol version 2 is not supported"),
        (pack(t="launch_missiles"), "unknown_type", "unknown message type 'launch_missiles'"),
        (pack(t=7), "bad_envelope", "message type must be a string"),
        (pack(b=[1]), "bad_envelope", "frame body must be a map"),
        (pack(b={**GOOD_FRAME, "seq": -1}), "invalid_body", "seq:"),
        (pack(b={**GOOD_FRAME, "seq": "1"}), "invalid_body", "seq:"),  # strict: no coercion
        (pack(b={**GOOD_FRAME, "seq": True}), "invalid_body", "seq:"),
        (pack(b={**GOOD_FRAME, "generation": 3}), "invalid_body", "generation 3 is odd"),
        (pack(b={**GOOD_FRAME, "t_capture": float("nan")}), "invalid_body", "t_capture:"),
        (pack(b={**GOOD_FRAME, "stream": "rtsp://u:p@h/x"}), "invalid_body", "stream:"),
        (pack(b={**GOOD_FRAME, "pixels": b"\x00" * 16}), "invalid_body", "pixels:"),
        (pack(b={k: v for k, v in GOOD_FRAME.items() if k != "slot"}), "invalid_body", "slot: Field required"),
        (pack(t="heartbeat", b={"process": "gpu", "pid": 1, "time": 1.0, "state": "dancing"}), "invalid_body", "state:"),
        (pack(t="flow_ready", b={"stream": "cam", "batch_id": 1, "source_seq": 1}), "invalid_body", "needs at least one target"),
        (b"\x91" * 70000, "oversized", "70000 bytes exceeds the limit of 65536"),
    ],
)
def test_rejections_name_the_problem(data: object, reason: str, words: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        decode(data)
    assert exc.value.reason == reason and exc.value.reason in REJECT_REASONS
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)


def test_body_errors_never_echo_credentials() -> None:
    body = {"stream": {"name": "cam", "source": f"rtsp://u:{SECRET}@h:99999/x", "prompt": "p"}}
    with pytest.raises(ProtocolError) as exc:
        decode(pack(t="add_stream", b=body))
    assert exc.value.reason == "invalid_body" and SECRET not in str(exc.value)


def test_max_bytes_and_expected_type() -> None:
    data = encode(examples()[0])
    with pytest.raises(ProtocolError, match="exceeds the limit of 10") as exc:
        decode(data, max_bytes=10)
    assert exc.value.reason == "oversized"
    with pytest.raises(ProtocolError, match="got a frame message where heartbeat, stop was expected") as exc:
        decode(data, expect=(Heartbeat, Stop))
    assert exc.value.reason == "unexpected_type"
    assert isinstance(decode(data, expect=(Frame,)), Frame)
    with pytest.raises(ProtocolError, match="exceeds the limit") as exc:
        encode(SetPrompt(stream="cam", prompt="x" * 2000), max_bytes=1024)
    with pytest.raises(TypeError):
        encode({"v": 1})  # type: ignore[arg-type]


def test_no_pickle_anywhere() -> None:
    shared = Path(protocol.__file__).parent
    for name in ("protocol.py", "bus.py", "ring.py", "settings.py", "metrics.py", "runtime.py"):
        source = (shared / name).read_text()
        assert not re.search(r"import pickle|from pickle|\bpickle\.[a-z]|_pyobj\(", source), name


# ---- property tests: the decoder is total --------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_reject(data: object) -> None:
    try:
        msg = decode(data)
    except ProtocolError as exc:
        assert exc.reason in REJECT_REASONS
        assert str(exc)
    else:
        assert isinstance(msg, Message)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    decode_or_reject(data)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=20),
)  # fmt: skip
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=30,
)


@FUZZ
@given(structures)
def test_random_msgpack_structures_never_crash(value: object) -> None:
    decode_or_reject(msgpack.packb(value, use_bin_type=True))


field_names = st.sampled_from(sorted({n for cls in message_types().values() for n in cls.model_fields} | {"x"}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(message_types())),
    st.dictionaries(field_names, structures, max_size=8),
)
def test_random_bodies_of_real_types_never_crash(type_name: str, body: dict) -> None:
    decode_or_reject(pack(t=type_name, b=body))


@FUZZ
@given(st.sampled_from(examples()), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_corrupted_valid_messages_never_crash(msg: Message, position: int, byte: int) -> None:
    data = bytearray(encode(msg))
    data[position % len(data)] = byte
    decode_or_reject(bytes(data))
    decode_or_reject(bytes(data[: position % len(data)]))


@FUZZ
@given(
    st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=0, max_value=65535),
    st.integers(min_value=0, max_value=2**62 - 1).map(lambda g: 2 * g),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=7),
)
def test_valid_frames_round_trip_exactly(stream: str, seq: int, slot: int, generation: int, t: float, flags: int) -> None:
    msg = Frame(stream=stream, seq=seq, slot=slot, generation=generation, t_capture=t, t_ingest=t, flags=flags)
    assert decode(encode(msg)) == msg
