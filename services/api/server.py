"""Serve an ASGI app with uvicorn from a background thread of another program (the supervisor).

    server = ApiServer(create_app(control, settings.service), settings.service.api_host, settings.service.api_port)
    server.start()          # returns once the socket listens; ApiServerError naming host:port if it cannot
    print(server.url)       # http://127.0.0.1:8080
    server.stop()           # graceful: in-flight requests get `shutdown_timeout_s` to finish

The socket is bound here, before uvicorn starts, so that a taken port fails in `start()` with a
clear message instead of inside the server thread. Uvicorn's logging setup is disabled: the host
program's logging configuration stays as it is. Signals stay with the host program (uvicorn only
installs handlers on the main thread, and this one is not).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


class ApiServerError(RuntimeError):
    """The API server could not start (or stop) as asked."""


def _describe(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A socket bound to host:port and listening; ApiServerError naming host:port if that fails."""
    where = _describe(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ApiServerError(f"cannot listen on {where}: {host!r} does not resolve ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # REUSEADDR lets a restarted supervisor rebind while old connections sit in TIME_WAIT; it
        # does not let two servers listen on one port (Linux refuses that without REUSEPORT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ApiServerError(
                f"cannot listen on {where}: the address is already in use (another StyleCast or another "
                "program holds it; stop it or set service.api_port)"
            ) from None
        if exc.errno == errno.EACCES:
            raise ApiServerError(f"cannot listen on {where}: permission denied (ports below 1024 need privileges)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ApiServerError(f"cannot listen on {where}: no local interface has this address") from None
        raise ApiServerError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class ApiServer:
    """An ASGI app served by uvicorn on a daemon thread. `port=0` picks a free port."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 5.0,
        access_log: bool = False,
        backlog: int = 128,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0..65535")
        self._app = app
        self._host = host
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._access_log = access_log
        self._backlog = backlog
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._port: int | None = None

    # ---- addresses ----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port actually listened on (the chosen one when constructed with 0)."""
        if self._port is None:
            raise ApiServerError("the API server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. 'http://127.0.0.1:8080' ('http://[::1]:8080' for IPv6)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and serve; return once requests are accepted. Raises ApiServerError naming host:port."""
        if self._thread is not None:
            raise ApiServerError("the API server was already started; create a new ApiServer to start again")
        sock = _listening_socket(self._host, self._requested_port, self._backlog)
        self._socket = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,  # keep the host program's logging configuration
            access_log=self._access_log,
            lifespan="auto",
            timeout_graceful_shutdown=max(1, round(self._shutdown_timeout_s)),
            backlog=self._backlog,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"api-server-{self._port}", daemon=True)
        self._thread.start()

        deadline = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                self._close_socket()
                why = f": {self._failure!r}" if self._failure is not None else ""
                raise ApiServerError(f"the API server on {_describe(self._host, self._port)} stopped while starting{why}")
            if time.monotonic() > deadline:
                self.stop()
                raise ApiServerError(
                    f"the API server on {_describe(self._host, self._port)} did not start within {self._startup_timeout_s:g} s"
                )
            time.sleep(0.005)
        log.info("control API listening on %s", self.url)

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - SystemExit from uvicorn's startup included; reported by start()
            self._failure = exc
            log.error("control API server thread ended with %r", exc)

    def stop(self) -> bool:
        """Stop accepting, let in-flight requests finish (bounded), close the socket.

        Returns True once the server thread has ended; False if it is still running after the bound
        (a request stuck in the control plane), which is logged. Safe to call more than once.
        """
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return True
        server.should_exit = True
        thread.join(self._shutdown_timeout_s + 2.0)  # uvicorn ticks every 0.1 s, then waits out its graceful timeout
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        self._close_socket()
        if thread.is_alive():
            log.error("control API server on %s did not stop within %.1f s", self.url, self._shutdown_timeout_s + 4.0)
            return False
        return True

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
