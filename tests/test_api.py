"""Control API routes against an in-memory ControlPlane: status codes, bodies, token, redaction, 422
lines, metrics, OpenAPI completeness, and random bodies that must never cause a 500."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.api.app import create_app
from services.api.control import (
    ControlPlane,
    ControlUnavailable,
    FrameCounters,
    HealthInfo,
    ProcessHealth,
    ReadyInfo,
    SinkInfo,
    StreamExists,
    StreamInfo,
    StreamRejected,
    UnknownStream,
)
from shared.settings import SecretUrl, ServiceSettings, StreamSettings

REPO = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-of-at-least-16-chars"
SECRET = "s3cr3tpw"
SECRET_SOURCE = f"rtsp://user:{SECRET}@camera.example/x"
UNREACHABLE_HOST = "unreachable.example"


class FakeControl:
    """In-memory ControlPlane: enough behaviour to exercise every route and every refusal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, StreamInfo] = {}
        self.is_ready = False
        self.calls: list[str] = []
        self.fault: Exception | None = None  # raised by every method when set

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        if self.fault is not None:
            raise self.fault

    def list_streams(self) -> list[StreamInfo]:
        self._enter("list_streams")
        with self._lock:
            return list(self._streams.values())

    def get_stream(self, name: str) -> StreamInfo:
        self._enter("get_stream")
        with self._lock:
            if name not in self._streams:
                raise UnknownStream(name)
            return self._streams[name]

    def add_stream(self, stream: StreamSettings) -> StreamInfo:
        self._enter("add_stream")
        if urlsplit(stream.source.reveal()).hostname == UNREACHABLE_HOST:
            # Deliberately quotes the real URL, as a careless implementer might: the API must redact it.
            raise StreamRejected(f"cannot connect to {stream.source.reveal()}: connection refused")
        with self._lock:
            if stream.name in self._streams:
                raise StreamExists(stream.name)
            info = StreamInfo(
                name=stream.name,
                source=stream.source,  # a SecretUrl: the model must redact it
                kind=stream.kind,
                prompt=stream.prompt,
                prompt_version=1,
                state="starting",
                live=bool(stream.live),
                sinks=[
                    SinkInfo(type=s.type, target=s.target, preview_url="http://127.0.0.1:1/p" if s.type == "mjpeg" else None)
                    for s in stream.sinks
                ],
                gpu="cuda:0",
                counters=FrameCounters(frames_in=3, frames_out=2, dropped={"queue_full": 1}),
                started_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
            )
            self._streams[stream.name] = info
            return info

    def remove_stream(self, name: str) -> None:
        self._enter("remove_stream")
        with self._lock:
            if self._streams.pop(name, None) is None:
                raise UnknownStream(name)

    def set_prompt(self, name: str, prompt: str) -> StreamInfo:
        self._enter("set_prompt")
        if "forbidden" in prompt:
            raise StreamRejected("the text encoder refuses this prompt")
        with self._lock:
            if name not in self._streams:
                raise UnknownStream(name)
            old = self._streams[name]
            new = old.model_copy(update={"prompt": prompt, "prompt_version": old.prompt_version + 1})
            self._streams[name] = new
            return new

    def health(self) -> HealthInfo:
        self._enter("health")
        return HealthInfo(
            processes=[
                ProcessHealth(name="supervisor", pid=os.getpid(), state="ready", heartbeat_age_s=0.0),
                ProcessHealth(name="gpu", pid=None, state="restarting", heartbeat_age_s=7.5, restarts=2,
                              detail=f"exited after {SECRET_SOURCE} failed"),
            ]
        )

    def ready(self) -> ReadyInfo:
        self._enter("ready")
        return ReadyInfo(ready=self.is_ready, reason="models loaded" if self.is_ready else "gpu worker: loading models")


def make_client(control: FakeControl, token: str | None = None) -> TestClient:
    service = ServiceSettings(runtime_dir="/tmp/stylecast-api-tests", token=token)
    return TestClient(create_app(control, service), raise_server_exceptions=False)


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def client(control: FakeControl) -> TestClient:
    return make_client(control)


def stream_body(name: str = "cam", source: str = SECRET_SOURCE, **extra) -> dict:
    return {"name": name, "source": source, "prompt": "make it an oil painting", **extra}


# --------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------


def test_protocol_is_satisfied_and_create_app_refuses_other_objects() -> None:
    assert isinstance(FakeControl(), ControlPlane)
    with pytest.raises(TypeError, match="ControlPlane"):
        create_app(object(), ServiceSettings(runtime_dir="/tmp/x"))  # type: ignore[arg-type]


def test_healthz_reports_every_process(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    processes = {p["name"]: p for p in r.json()["processes"]}
    assert processes["supervisor"]["state"] == "ready" and processes["supervisor"]["pid"] == os.getpid()
    assert processes["gpu"] == {
        "name": "gpu", "pid": None, "state": "restarting", "heartbeat_age_s": 7.5, "restarts": 2,
        "detail": "exited after rtsp://***@camera.example/x failed",
    }


def test_readyz_flips_from_503_to_200(client: TestClient, control: FakeControl) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"ready": False, "reason": "gpu worker: loading models"}
    control.is_ready = True
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


def test_stream_lifecycle(client: TestClient, control: FakeControl) -> None:
    assert client.get("/streams").json() == []

    r = client.post("/streams", json=stream_body(sinks=[{"type": "mjpeg"}]))
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/streams/cam"
    info = r.json()
    assert info["name"] == "cam" and info["kind"] == "rtsp" and info["live"] is True
    assert info["source"] == "rtsp://***@camera.example/x"
    assert info["prompt_version"] == 1 and info["state"] == "starting" and info["gpu"] == "cuda:0"
    assert info["sinks"] == [{"type": "mjpeg", "target": None, "preview_url": "http://127.0.0.1:1/p"}]
    assert info["counters"] == {"frames_in": 3, "frames_out": 2, "dropped": {"queue_full": 1}}
    assert info["latency_ms"] == {"p50": None, "p95": None} and info["fps"] is None
    assert info["started_at"].startswith("2025-01-01T00:00:00")

    assert [s["name"] for s in client.get("/streams").json()] == ["cam"]
    assert client.get("/streams/cam").json() == info

    r = client.put("/streams/cam/prompt", json={"prompt": "watercolour"})
    assert r.status_code == 200 and r.json()["prompt"] == "watercolour" and r.json()["prompt_version"] == 2
    r = client.put("/streams/cam/prompt", json={"prompt": "charcoal"})
    assert r.json()["prompt_version"] == 3 and client.get("/streams/cam").json()["prompt"] == "charcoal"

    r = client.delete("/streams/cam")
    assert r.status_code == 204 and r.content == b""
    assert client.get("/streams/cam").status_code == 404
    assert client.get("/streams").json() == []


def test_refusals_map_to_status_codes(client: TestClient, control: FakeControl) -> None:
    assert client.post("/streams", json=stream_body()).status_code == 201

    r = client.post("/streams", json=stream_body())
    assert r.status_code == 409 and r.json()["error"] == "stream_exists" and "'cam'" in r.json()["detail"]

    r = client.post("/streams", json=stream_body("other", f"rtsp://u:{SECRET}@{UNREACHABLE_HOST}/x"))
    assert r.status_code == 400 and r.json()["error"] == "stream_rejected"
    assert r.json()["detail"] == f"cannot connect to rtsp://***@{UNREACHABLE_HOST}/x: connection refused"

    r = client.put("/streams/cam/prompt", json={"prompt": "something forbidden"})
    assert r.status_code == 400 and r.json() == {"error": "stream_rejected", "detail": "the text encoder refuses this prompt"}

    for method, path, body in [("get", "/streams/nope", None), ("delete", "/streams/nope", None),
                               ("put", "/streams/nope/prompt", {"prompt": "x"})]:
        r = client.request(method, path, json=body)
        assert r.status_code == 404, (method, path)
        assert r.json() == {"error": "unknown_stream", "detail": "no stream named 'nope'"}

    control.fault = ControlUnavailable("the supervisor is shutting down")
    r = client.get("/streams")
    assert r.status_code == 503 and r.json() == {"error": "control_unavailable", "detail": "the supervisor is shutting down"}


def test_invalid_names_are_404_without_reaching_the_control_plane(client: TestClient, control: FakeControl) -> None:
    for name in ["Upper", "with space", "x" * 65, "dots.dots"]:
        assert client.get(f"/streams/{name}").status_code == 404
        assert client.delete(f"/streams/{name}").status_code == 404
        assert client.put(f"/streams/{name}/prompt", json={"prompt": "x"}).status_code == 404
    assert control.calls == []


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.patch("/streams")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed" and "allow" in r.headers


# --------------------------------------------------------------------------------------------------
# Token
# --------------------------------------------------------------------------------------------------

CONTROL_REQUESTS = [
    ("get", "/streams", None),
    ("post", "/streams", stream_body("tok")),
    ("get", "/streams/cam", None),
    ("put", "/streams/cam/prompt", {"prompt": "new"}),
    ("delete", "/streams/cam", None),
]


def test_token_guards_every_stream_route(control: FakeControl) -> None:
    client = make_client(control, token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/streams", json=stream_body(), headers=good).status_code == 201
    control.calls.clear()

    for headers, expected_detail in [
        ({}, "missing bearer token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "wrong bearer token"),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "wrong bearer token"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token"),
        ({"Authorization": "Bearer"}, "missing bearer token"),
        ({"Authorization": "Bearer caf\u00e9".encode("latin-1")}, "wrong bearer token"),
    ]:
        for method, path, body in CONTROL_REQUESTS:
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"] == "unauthorized" and r.json()["detail"].startswith(expected_detail)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in r.text
    assert control.calls == []  # nothing reached the control plane

    expected = [200, 201, 200, 200, 204]
    for (method, path, body), status in zip(CONTROL_REQUESTS, expected):
        assert client.request(method, path, json=body, headers=good).status_code == status, (method, path)
    assert client.request("get", "/streams", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_probes_metrics_and_schema_stay_open_with_a_token(control: FakeControl) -> None:
    client = make_client(control, token=TOKEN)
    control.is_ready = True
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"]:
        assert client.get(path).status_code == 200, path


def test_without_a_token_the_control_routes_are_open(client: TestClient) -> None:
    expected = [200, 201, 200, 200, 204]
    for (method, path, body), status in zip(CONTROL_REQUESTS, expected):
        r = client.request(method, path.replace("/cam", "/tok"), json=body)
        assert r.status_code == status, (method, path, r.text)


# --------------------------------------------------------------------------------------------------
# Credentials never leave
# --------------------------------------------------------------------------------------------------


def test_source_password_never_appears_in_any_answer(control: FakeControl, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(control)
    sinks = [{"type": "rtsp", "target": f"rtsp://pub:{SECRET}@server.example/out"}]
    answers = [
        client.post("/streams", json=stream_body(source=SECRET_SOURCE, sinks=sinks)),
        client.post("/streams", json=stream_body(source=SECRET_SOURCE)),  # 409
        client.get("/streams"),
        client.get("/streams/cam"),
        client.put("/streams/cam/prompt", json={"prompt": "new"}),
        client.post("/streams", json=stream_body("bad", f"rtsp://u:{SECRET}@{UNREACHABLE_HOST}/x")),  # 400
        client.post("/streams", json=stream_body("bad", f"rtsp://u:{SECRET}@host:99999/x")),  # 422 bad port
        client.post("/streams", json=stream_body("bad", f"http://u:{SECRET}@host/x")),  # 422 bad scheme
        client.post("/streams", json=stream_body("bad", f"rtsp://h/x?token={SECRET}", live=False)),  # 422 quoting the URL
        client.get("/healthz"),
    ]
    assert [a.status_code for a in answers] == [201, 409, 200, 200, 200, 400, 422, 422, 422, 200]
    assert answers[0].json()["sinks"][0]["target"] == "rtsp://***@server.example/out"
    control.fault = RuntimeError(f"bus send failed for {SECRET_SOURCE}")
    with caplog.at_level(logging.ERROR, logger="services.api"):
        answers.append(client.get("/streams"))
    assert answers[-1].status_code == 500
    for answer in answers:
        assert SECRET not in answer.text, answer.text
        assert SECRET not in str(answer.headers)
    assert "bus send failed" in caplog.text and SECRET not in caplog.text


def test_models_redact_whatever_the_implementer_passes() -> None:
    base = dict(name="cam", kind="rtsp", prompt="p", prompt_version=1, state="running", live=True)
    for source in [SECRET_SOURCE, SecretUrl(SECRET_SOURCE)]:
        info = StreamInfo(source=source, reason=f"lost {SECRET_SOURCE}", **base)
        assert SECRET not in info.model_dump_json() and info.source == "rtsp://***@camera.example/x"
    assert SECRET not in str(StreamRejected(f"cannot open {SECRET_SOURCE}"))
    assert SECRET not in ReadyInfo(ready=False, reason=f"{SECRET_SOURCE} down").reason


def test_internal_faults_answer_500_with_a_request_id_only(control: FakeControl, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(control)
    control.fault = KeyError("some internal detail")
    with caplog.at_level(logging.ERROR, logger="services.api"):
        r = client.get("/healthz")
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal_error" and "some internal detail" not in r.text
    request_id = body["detail"].split("request id ")[1].split(")")[0]
    assert request_id in caplog.text and "some internal detail" in caplog.text


# --------------------------------------------------------------------------------------------------
# Bodies: 422 lines name the field; bounded, strict JSON
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected_line",
    [
        (stream_body(prompt=""), "streams.prompt: must not be empty"),
        (stream_body(prompt="   "), "streams.prompt: must not be empty"),
        ({"source": SECRET_SOURCE, "prompt": "p"}, "streams.name: required field is missing"),
        (stream_body(name="Bad Name"), "streams.name: 'Bad Name' is not a valid stream name"),
        (stream_body(colour="red"), "streams.colour: unknown field"),
        (stream_body(promt="x"), "streams.promt: unknown field (did you mean 'prompt'?)"),
        (stream_body(modell="x"), "streams.modell: unknown field"),  # no hint from the config's sections
        ({**stream_body(), "[": 1}, "streams.[: unknown field"),  # crashed parse_stream's formatter
        (stream_body(sinks=[{"typ": "mp4"}]), "streams.sinks.0.typ: unknown field (did you mean 'type'?)"),
        (stream_body(source="/no/such/file.mp4"), "streams.source: '/no/such/file.mp4' does not exist"),
        (stream_body(live=False), "streams.live: false is not possible for rtsp source"),
        (stream_body(sinks=[{"type": "mp4"}]), "streams.sinks.0.target: is required for an mp4 sink"),
        (stream_body(sinks=[{"type": "mjpeg", "target": "nope"}]), "streams.sinks.0.target: 'nope' is not host:port"),
        (stream_body(seed=-1), "streams.seed: got -1: input should be greater than or equal to 0"),
        (stream_body(source="/" + "a" * 5000), "streams: a file path in this stream cannot be used"),
        ([stream_body()], "body: expected a JSON object, got an array"),
    ],
)
def test_post_stream_422_lines_name_the_field(client: TestClient, control: FakeControl, body, expected_line: str) -> None:
    r = client.post("/streams", json=body)
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["error"] == "invalid_request"
    assert any(line.startswith(expected_line) for line in answer["problems"]), answer["problems"]
    assert not any("did you mean 'model'" in line for line in answer["problems"])
    assert answer["detail"] == "; ".join(answer["problems"])
    assert control.calls == []


def test_every_problem_gets_its_own_line(client: TestClient) -> None:
    r = client.post("/streams", json={"name": "Bad!", "prompt": "", "extra": 1})
    lines = r.json()["problems"]
    assert len(lines) == 4
    assert [line.split(":")[0] for line in lines] == ["streams.name", "streams.source", "streams.prompt", "streams.extra"]


@pytest.mark.parametrize(
    "body, expected_line",
    [
        ({"prompt": ""}, "prompt: must not be empty"),
        ({"prompt": " \t"}, "prompt: must not be empty"),
        ({"prompt": 5}, "prompt: input should be a valid string"),
        ({"prompt": "x" * 2001}, "prompt: string should have at most 2000 characters"),
        ({}, "prompt: required field is missing"),
        ({"prompt": "x", "style": 1}, "style: unknown field"),
        ("just text", "body: expected a JSON object, got a string"),
    ],
)
def test_put_prompt_422_lines_name_the_field(client: TestClient, body, expected_line: str) -> None:
    client.post("/streams", json=stream_body())
    r = client.put("/streams/cam/prompt", json=body)
    assert r.status_code == 422, r.text
    assert any(line.startswith(expected_line) for line in r.json()["problems"]), r.json()["problems"]
    assert client.get("/streams/cam").json()["prompt_version"] == 1


@pytest.mark.parametrize(
    "raw, expected_line",
    [
        (b"", "body: is empty"),
        (b"{", "body: not valid JSON (Expecting property name"),
        (b'{"name": "a", "name": "b"}', "body: not valid JSON (duplicate key 'name')"),
        (b'{"prompt": NaN}', "body: not valid JSON (NaN is not allowed"),
        (b'{"prompt": "\\ud800"}', "body: contains an unpaired surrogate"),
        (b"\xff\xfe\x00", "body: not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "body: nested too deeply"),
    ],
)
def test_malformed_json_is_422(client: TestClient, raw: bytes, expected_line: str) -> None:
    client.post("/streams", json=stream_body())
    for path, method in [("/streams", "post"), ("/streams/cam/prompt", "put")]:
        if len(raw) > 64 * 1024:
            continue  # over the size limit: covered by the 413 test
        r = client.request(method, path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["problems"][0].startswith(expected_line), r.json()


def test_deep_nesting_within_the_size_limit_is_422(client: TestClient) -> None:
    raw = b"[" * 30_000 + b"]" * 30_000
    r = client.post("/streams", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["problems"] in (["body: nested too deeply"], ["body: expected a JSON object, got an array"])


def test_oversized_and_non_json_bodies(client: TestClient, control: FakeControl) -> None:
    big = json.dumps(stream_body(prompt="x" * 70_000)).encode()
    r = client.post("/streams", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks():
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/streams", content=chunks(), headers={"content-type": "application/json"})  # no Content-Length
    assert r.status_code == 413

    r = client.post("/streams", content=b"name=cam", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = client.post("/streams", content=json.dumps(stream_body()).encode(), headers={"content-type": "application/vnd.x+json"})
    assert r.status_code == 201
    assert control.calls == ["add_stream"]


# --------------------------------------------------------------------------------------------------
# /metrics
# --------------------------------------------------------------------------------------------------

_METRICS_SCRIPT = """
import sys
from fastapi.testclient import TestClient
from shared.metrics import init_metrics_dir, get_metrics
init_metrics_dir(sys.argv[1], fresh=True)
get_metrics().count_frames("apicam", "gpu", "processed", 7)
from services.api.app import create_app
from shared.settings import ServiceSettings
from tests.test_api import FakeControl
r = TestClient(create_app(FakeControl(), ServiceSettings(runtime_dir=sys.argv[1], token="x" * 16))).get("/metrics")
sys.stdout.write(f"{r.status_code}\\n{r.headers['content-type']}\\n{r.text}")
"""


def test_metrics_serves_the_multiprocess_samples(tmp_path: Path) -> None:
    # A fresh interpreter: multi-process mode must be chosen before any metric exists in the process.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", _METRICS_SCRIPT, str(tmp_path / "metrics")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    status, content_type, text = out.stdout.split("\n", 2)
    assert status == "200" and content_type.startswith("text/plain; version=0.0.4")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert samples[("stylecast_frames_total", (("outcome", "processed"), ("stage", "gpu"), ("stream", "apicam")))] == 7.0


# --------------------------------------------------------------------------------------------------
# OpenAPI
# --------------------------------------------------------------------------------------------------

EXPECTED_OPERATIONS = {
    ("/healthz", "get"): {"200", "500", "503"},
    ("/readyz", "get"): {"200", "500", "503"},
    ("/metrics", "get"): {"200", "500"},
    ("/streams", "get"): {"200", "401", "500", "503"},
    ("/streams", "post"): {"201", "400", "401", "409", "413", "415", "422", "500", "503"},
    ("/streams/{name}", "get"): {"200", "401", "404", "500", "503"},
    ("/streams/{name}", "delete"): {"204", "401", "404", "500", "503"},
    ("/streams/{name}/prompt", "put"): {"200", "400", "401", "404", "413", "415", "422", "500", "503"},
}


def _refs(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


@pytest.mark.parametrize("token", [None, TOKEN])
def test_openapi_documents_every_route_status_and_model(control: FakeControl, token: str | None) -> None:
    schema = make_client(control, token).get("/openapi.json").json()
    operations = {(path, method): op for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert set(operations) == set(EXPECTED_OPERATIONS)
    for key, op in operations.items():
        expected = EXPECTED_OPERATIONS[key] - (set() if token else {"401"})
        assert set(op["responses"]) == expected, key
        assert op["operationId"] and op["summary"]
        if key[0].startswith("/streams"):
            assert (op.get("security") is not None) == (token is not None), key
    components = schema["components"]["schemas"]
    for name in ["StreamInfo", "SinkInfo", "FrameCounters", "LatencyPercentiles", "HealthInfo", "ProcessHealth",
                 "ReadyInfo", "ErrorBody", "ValidationErrorBody", "StreamSettings", "SinkSettings", "PromptUpdate"]:
        assert name in components, name
    for ref in _refs(schema):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref
    body = operations[("/streams", "post")]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/StreamSettings"}
    assert operations[("/streams/{name}/prompt", "put")]["requestBody"]["required"] is True
    assert operations[("/streams", "post")]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ValidationErrorBody")
    assert operations[("/readyz", "get")]["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].endswith("ReadyInfo")
    assert "text/plain" in operations[("/metrics", "get")]["responses"]["200"]["content"]
    assert set(components["StreamInfo"]["required"]) >= {"name", "source", "kind", "prompt", "prompt_version", "state", "live"}
    if token:
        assert schema["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"


# --------------------------------------------------------------------------------------------------
# Random bodies never cause a 500
# --------------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_field_values = st.one_of(
    _json_values,
    st.sampled_from(["", " ", "cam", "Cam", "/dev/video0", "/dev/video", SECRET_SOURCE, "rtsp://", "rtsp://[::1",
                     "rtsp://h:99999/x", "http://x", "~nouser/x.mp4", "x\x00y", "/" + "a" * 300, "mp4", "mjpeg",
                     "rtsp", "hls", "h:1", "/tmp/out.mp4", "/tmp", "\ud800"]),
)
_stream_like = st.fixed_dictionaries(
    {},
    optional={
        "name": _field_values, "source": _field_values, "prompt": _field_values, "live": _field_values,
        "pace": _field_values, "seed": _field_values,
        "sinks": st.lists(st.fixed_dictionaries({}, optional={"type": _field_values, "target": _field_values}), max_size=2)
        | _field_values,
        "extra": _field_values,
    },
)


def _send_json(client: TestClient, method: str, path: str, body) -> int:
    raw = json.dumps(body, ensure_ascii=True).encode()  # \ud800 travels as an escape, as a client could send it
    return client.request(method, path, content=raw, headers={"content-type": "application/json"}).status_code


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(_stream_like, _json_values))
def test_random_stream_bodies_never_cause_a_500(body) -> None:
    client = _fuzz_client()
    status = _send_json(client, "post", "/streams", body)
    assert status in (201, 400, 409, 422), (status, body)
    if status == 201:
        client.delete(f"/streams/{body['name']}")


@settings(max_examples=100, deadline=None)
@given(body=st.one_of(st.fixed_dictionaries({}, optional={"prompt": _field_values, "x": _field_values}), _json_values),
       name=st.sampled_from(["cam", "nope", "Bad"]))
def test_random_prompt_bodies_never_cause_a_500(body, name: str) -> None:
    client = _fuzz_client()
    status = _send_json(client, "put", f"/streams/{name}/prompt", body)
    assert status in (200, 400, 404, 422), (status, body)


_FUZZ: dict[str, TestClient] = {}


def _fuzz_client() -> TestClient:
    if "client" not in _FUZZ:
        control = FakeControl()
        client = make_client(control)
        assert client.post("/streams", json=stream_body(source="/dev/video0")).status_code == 201
        _FUZZ["client"] = client
    return _FUZZ["client"]
