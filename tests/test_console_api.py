"""Preview routes (.jpg, .mjpg), the console page, their token handling, and SupervisorControl.latest_frame
reading real shared-memory rings."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.console.page import CONSOLE_HTML
from services.api.control import ControlUnavailable, PreviewControl, UnknownStream
from services.api.server import ApiServer
from services.control import SupervisorControl
from shared.ring import Ring
from shared.runtime import new_run_id
from shared.settings import ServiceSettings
from tests.test_api import FakeControl, stream_body

TOKEN = "console-t0ken-0123456789"
BOUNDARY = b"--stylecastframe"


def frame(value: int, size: int = 32) -> np.ndarray:
    """A frame JPEG keeps recognisable: a gradient offset by `value`."""
    ramp = np.linspace(0, 160, size, dtype=np.float32)
    rgb = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 60.0)], -1)
    return np.clip(rgb + value, 0, 255).astype(np.uint8)


def decode(jpeg: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "not a JPEG"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class PreviewFake(FakeControl):
    """FakeControl plus frames: `frames[(name, side)]` is a list served one per call, the last one repeated;
    `vanish_after` calls of a stream make it unknown (as if removed)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: dict[tuple[str, str], list[np.ndarray]] = {}
        self.frame_calls = 0
        self.vanish_after: int | None = None
        self.busy = False

    def latest_frame(self, name: str, side: str) -> np.ndarray | None:
        self.frame_calls += 1
        self.get_stream(name)  # UnknownStream for a name never added
        if self.vanish_after is not None and self.frame_calls > self.vanish_after:
            raise UnknownStream(name)
        if self.busy:
            raise ControlUnavailable("busy")
        queue = self.frames.get((name, side), [])
        if not queue:
            return None
        return queue.pop(0) if len(queue) > 1 else queue[0]


def make(control, token: str | None = None) -> TestClient:
    return TestClient(create_app(control, ServiceSettings(runtime_dir="/tmp/x", token=token)))


@pytest.fixture
def control() -> PreviewFake:
    fake = PreviewFake()
    fake.add_stream(_stream("cam"))
    return fake


def _stream(name: str):
    from shared.settings import parse_stream

    return parse_stream(stream_body(name))


# --------------------------------------------------------------------------------------------------
# Single frames
# --------------------------------------------------------------------------------------------------


def test_jpg_serves_the_newest_frame_of_each_side(control: PreviewFake) -> None:
    client = make(control)
    control.frames[("cam", "input")] = [frame(0)]
    control.frames[("cam", "output")] = [frame(80)]
    answers = {side: client.get(f"/streams/cam/preview/{side}.jpg") for side in ("input", "output")}
    for side, expected in (("input", frame(0)), ("output", frame(80))):
        r = answers[side]
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "no-store"
        assert np.abs(decode(r.content).astype(int) - expected).mean() < 3, side


def test_jpg_refusals(control: PreviewFake) -> None:
    client = make(control)
    early = client.get("/streams/cam/preview/output.jpg")
    assert early.status_code == 503 and early.json()["error"] == "no_frame" and early.headers["retry-after"] == "1"
    assert client.get("/streams/nope/preview/input.jpg").json()["error"] == "unknown_stream"
    for path in ("/streams/cam/preview/flow.jpg", "/streams/cam/preview/input.png", "/streams/Bad!/preview/input.jpg"):
        assert client.get(path).status_code == 404, path
    control.busy = True
    control.frames[("cam", "input")] = [frame(0)]
    assert client.get("/streams/cam/preview/input.jpg").json()["error"] == "control_unavailable"


def test_preview_routes_exist_only_for_a_preview_control() -> None:
    plain = FakeControl()
    assert not isinstance(plain, PreviewControl) and isinstance(PreviewFake(), PreviewControl)
    plain.add_stream(_stream("cam"))
    assert make(plain).get("/streams/cam/preview/input.jpg").json()["error"] == "not_found"


# --------------------------------------------------------------------------------------------------
# MJPEG
# --------------------------------------------------------------------------------------------------


def _parts(body: bytes) -> list[bytes]:
    jpegs = []
    for chunk in body.split(BOUNDARY)[1:]:
        head, _, rest = chunk.partition(b"\r\n\r\n")
        assert b"Content-Type: image/jpeg" in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        jpegs.append(rest[:length])
    return jpegs


def test_mjpg_sends_changed_frames_and_ends_when_the_stream_goes(control: PreviewFake) -> None:
    client = make(control)
    control.frames[("cam", "output")] = [frame(0), frame(0), frame(100), frame(100), frame(100), frame(40)]
    control.vanish_after = 12
    r = client.get("/streams/cam/preview/output.mjpg?fps=30")
    assert r.status_code == 200 and r.headers["content-type"] == "multipart/x-mixed-replace; boundary=stylecastframe"
    jpegs = _parts(r.content)
    assert len(jpegs) == 3  # repeats are not sent again
    for jpeg, expected in zip(jpegs, (frame(0), frame(100), frame(40))):
        assert np.abs(decode(jpeg).astype(int) - expected).mean() < 3


def test_mjpg_refusals(control: PreviewFake) -> None:
    client = make(control)
    assert client.get("/streams/nope/preview/output.mjpg").status_code == 404
    bad_fps = client.get("/streams/cam/preview/output.mjpg?fps=0")
    assert bad_fps.status_code == 422 and bad_fps.json()["problems"][0].startswith("query.fps")


def test_mjpg_stops_reading_frames_when_the_viewer_leaves(control: PreviewFake) -> None:
    control.frames[("cam", "input")] = [frame(i) for i in range(0, 200, 5)]
    with ApiServer(create_app(control, ServiceSettings(runtime_dir="/tmp/x")), "127.0.0.1", 0) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client, client.stream("GET", "/streams/cam/preview/input.mjpg?fps=20") as r:
            assert r.status_code == 200
            received = b""
            for chunk in r.iter_bytes():
                received += chunk
                if received.count(BOUNDARY) >= 3:
                    break
        time.sleep(0.5)  # the server notices the disconnect within a tick
        calls = control.frame_calls
        time.sleep(0.5)
        assert control.frame_calls == calls, "the preview kept polling for a viewer that left"


# --------------------------------------------------------------------------------------------------
# Token: header or ?token= on preview and console; header only on the JSON routes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/streams/cam/preview/input.jpg", "/console"])
def test_token_by_header_or_query(control: PreviewFake, path: str) -> None:
    control.frames[("cam", "input")] = [frame(0)]
    client = make(control, TOKEN)
    for kwargs, status in [
        ({}, 401),
        ({"params": {"token": TOKEN + "x"}}, 401),
        ({"headers": {"Authorization": "Bearer wrong-token-123456"}, "params": {"token": TOKEN}}, 401),  # the header wins
        ({"params": {"token": TOKEN}}, 200),
        ({"headers": {"Authorization": f"Bearer {TOKEN}"}}, 200),
    ]:
        r = client.get(path, **kwargs)
        assert r.status_code == status, (path, kwargs)
        if status == 401:
            assert r.json()["error"] == "unauthorized" and TOKEN not in r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert "token=" in client.get(path).json()["detail"]  # says how to pass it


def test_json_routes_still_want_the_header(control: PreviewFake) -> None:
    client = make(control, TOKEN)
    assert client.get("/streams", params={"token": TOKEN}).status_code == 401


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------


def test_console_page_is_self_contained_and_locked_down(control: PreviewFake) -> None:
    r = make(control).get("/console")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.content == CONSOLE_HTML
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert r.headers["referrer-policy"] == "no-referrer"
    text = r.text
    for outside in ("http://", "https://", "//cdn", 'rel="stylesheet"', "<script src", 'src="http'):
        assert outside not in text, outside
    assert "innerHTML" not in text  # operator input goes in as text only
    for hook in ('id="add-form"', "/preview/${side}.jpg", "/prompt", 'fetch("/metrics"'):
        assert hook in text, hook


def test_console_is_not_in_the_schema_but_previews_are(control: PreviewFake) -> None:
    schema = make(control, TOKEN).get("/openapi.json").json()
    assert "/console" not in schema["paths"]
    jpg = schema["paths"]["/streams/{name}/preview/{side}.jpg"]["get"]
    mjpg = schema["paths"]["/streams/{name}/preview/{side}.mjpg"]["get"]
    assert "image/jpeg" in jpg["responses"]["200"]["content"]
    assert "multipart/x-mixed-replace" in mjpg["responses"]["200"]["content"]
    assert {"401", "404", "503"} <= set(jpg["responses"]) and "422" not in jpg["responses"]
    assert mjpg["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ValidationErrorBody")
    assert {p["name"] for p in jpg["parameters"]} == {"name", "side", "token"}


# --------------------------------------------------------------------------------------------------
# SupervisorControl.latest_frame on real rings
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def rings():
    run = new_run_id()
    made = [Ring.create(run, "cam", kind, slots=4, shape=(8, 8, 3), dtype="u1") for kind in ("in", "out")]
    yield made
    for ring in made:
        ring.unlink()


def _supervisor(rings, thread_calls: list | None = None):
    def call(fn, timeout_s):
        if thread_calls is not None:
            thread_calls.append(timeout_s)
        return fn()

    return SimpleNamespace(streams={"cam": SimpleNamespace(rings=rings), "failed": SimpleNamespace(rings=[])}, call=call)


def test_latest_frame_reads_the_newest_slot_of_each_ring(rings) -> None:
    calls: list = []
    control = SupervisorControl(_supervisor(rings, calls))
    assert isinstance(control, PreviewControl)
    assert control.latest_frame("cam", "input") is None  # nothing written yet
    ring_in, ring_out = rings
    for i in range(6):  # wraps around the 4 slots
        ring_in.write(np.full((8, 8, 3), i, np.uint8), seq=i)
    ring_out.write(np.full((8, 8, 3), 200, np.uint8), seq=0)
    assert control.latest_frame("cam", "input")[0, 0, 0] == 5
    assert control.latest_frame("cam", "output")[0, 0, 0] == 200
    assert calls and all(t <= 2.0 for t in calls)  # a short wait: the preview never queues behind long calls
    assert control.latest_frame("failed", "output") is None
    with pytest.raises(UnknownStream):
        control.latest_frame("gone", "input")
    with pytest.raises(ValueError, match="input"):
        control.latest_frame("cam", "flow")


def test_latest_frame_skips_a_slot_being_written(rings) -> None:
    ring_in = rings[0]
    for i in range(3):
        ring_in.write(np.full((8, 8, 3), i, np.uint8), seq=i)
    control = SupervisorControl(_supervisor(rings))
    newest = (ring_in.written - 1) % ring_in.slots
    ring_in._gens[newest] += 1  # the writer is mid-write in the newest slot (odd generation)
    assert control.latest_frame("cam", "input")[0, 0, 0] == 1  # the one before it
    for slot in range(ring_in.slots):
        if ring_in._gens[slot] % 2 == 0 and ring_in._gens[slot] > 0:
            ring_in._gens[slot] += 1  # every written slot changing
    with pytest.raises(ControlUnavailable, match="overwritten while read"):
        control.latest_frame("cam", "input")


def test_latest_frame_answers_while_another_thread_writes(rings) -> None:
    control = SupervisorControl(_supervisor(rings))
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            rings[1].write(np.full((8, 8, 3), i % 250, np.uint8), seq=i)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            try:
                got = control.latest_frame("cam", "output")
            except ControlUnavailable:
                continue  # the writer lapped the reader: allowed, never torn data
            assert got is None or (got == got[0, 0, 0]).all(), "a torn frame"
    finally:
        stop.set()
        thread.join()


def test_mjpg_viewers_are_capped(control: PreviewFake, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.api.console import preview

    monkeypatch.setattr(preview, "MAX_MJPEG_VIEWERS", 0)
    control.frames[("cam", "input")] = [frame(0)]
    r = make(control).get("/streams/cam/preview/input.mjpg")
    assert r.status_code == 503 and r.json()["error"] == "too_many_viewers"
