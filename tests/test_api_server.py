"""ApiServer: real sockets, real HTTP, clean start/stop, clear errors for a taken port."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import pytest

from services.api.app import create_app
from services.api.server import ApiServer, ApiServerError
from shared.settings import ServiceSettings
from tests.test_api import FakeControl, stream_body

SERVICE = ServiceSettings(runtime_dir="/tmp/stylecast-api-tests")


class SlowControl(FakeControl):
    """list_streams blocks until released, to have a request in flight while the server stops."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def list_streams(self):
        self.entered.set()
        self.release.wait(30)
        return super().list_streams()


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on the port (as ApiServer binds: connections of the old one
    lingering in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen(1)
        except OSError:
            return False
        return True


def test_serves_real_requests_on_a_free_port_and_frees_it() -> None:
    server = ApiServer(create_app(FakeControl(), SERVICE), "127.0.0.1", 0)
    root_handlers = list(logging.getLogger().handlers)
    server.start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert not port_is_free(server.port)
        with httpx.Client(base_url=server.url, timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            r = http.post("/streams", json=stream_body(source="/dev/video0"))
            assert r.status_code == 201 and r.json()["name"] == "cam"
            assert [s["name"] for s in http.get("/streams").json()] == ["cam"]
    finally:
        started = time.monotonic()
        assert server.stop() is True
    assert time.monotonic() - started < 3.0
    assert not server.running
    assert port_is_free(server.port)
    with ApiServer(create_app(FakeControl(), SERVICE), "127.0.0.1", server.port) as again:
        assert httpx.get(again.url + "/healthz", timeout=5).status_code == 200
    assert logging.getLogger().handlers == root_handlers  # uvicorn left the host's logging alone
    assert server.stop() is True  # idempotent


def test_a_taken_port_fails_with_a_message_naming_it() -> None:
    with ApiServer(create_app(FakeControl(), SERVICE)) as first:
        second = ApiServer(create_app(FakeControl(), SERVICE), "127.0.0.1", first.port)
        with pytest.raises(ApiServerError, match=rf"127\.0\.0\.1:{first.port}: the address is already in use"):
            second.start()
        assert not second.running
        with httpx.Client(timeout=5) as http:  # the first one is unaffected
            assert http.get(first.url + "/healthz").status_code == 200


def test_unresolvable_host_is_a_clear_error() -> None:
    with pytest.raises(ApiServerError, match=r"cannot listen on no-such-host\.invalid:0"):
        ApiServer(create_app(FakeControl(), SERVICE), "no-such-host.invalid", 0).start()


def test_stop_lets_an_in_flight_request_finish() -> None:
    control = SlowControl()
    server = ApiServer(create_app(control, SERVICE), shutdown_timeout_s=5)
    server.start()
    answers: list[int] = []

    def call() -> None:
        with httpx.Client(timeout=10) as http:
            answers.append(http.get(server.url + "/streams").status_code)

    caller = threading.Thread(target=call)
    caller.start()
    assert control.entered.wait(5)
    threading.Timer(0.3, control.release.set).start()  # the request completes while stop() waits
    assert server.stop() is True
    caller.join(5)
    assert answers == [200]
    assert port_is_free(server.port)


def test_stop_is_bounded_when_a_request_hangs() -> None:
    control = SlowControl()
    server = ApiServer(create_app(control, SERVICE), shutdown_timeout_s=1)
    server.start()
    caller = threading.Thread(target=lambda: httpx.get(server.url + "/streams", timeout=10), daemon=True)
    caller.start()
    try:
        assert control.entered.wait(5)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 6.0  # 1 s graceful + uvicorn's ticks, well under the 30 s hang
        assert port_is_free(server.port)
    finally:
        control.release.set()


def test_lifecycle_misuse_is_refused() -> None:
    server = ApiServer(create_app(FakeControl(), SERVICE))
    with pytest.raises(ApiServerError, match="not been started"):
        _ = server.url
    with pytest.raises(ValueError, match="port 70000"):
        ApiServer(create_app(FakeControl(), SERVICE), port=70000)
    with server:
        with pytest.raises(ApiServerError, match="already started"):
            server.start()
