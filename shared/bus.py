"""ZeroMQ helpers: endpoints, sockets with sane options, protocol messages with timeouts.

    bus = Bus(settings.service, run, process="gpu")
    frames = bus.socket("PULL", "frames", bind=True)
    msg = frames.recv(timeout_s=0.1)          # a validated Message, or None on timeout
    styled = bus.socket("PUB", "styled", bind=True)
    styled.send(Styled(...), topic="cam1")
    bus.close()

Endpoints are well-known names (`ENDPOINTS`): `ipc://<run dir>/<name>.sock` by default, or
`tcp://<bus_tcp_host>:<bus_tcp_base_port + index>` when `service.bus_transport` is tcp.
Multipart layouts: PUB/SUB `[topic, body]` (topic = stream name, '' for all), ROUTER `[peer id,
body]`, every other kind `[body]`. A malformed, oversized or unexpected message is counted
(`Channel.rejected`, metric `stylecast_bus_rejected_messages_total`) and skipped; it never raises.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import zmq

from shared.protocol import Message, ProtocolError, decode, encode
from shared.runtime import Run, RuntimeDirError, ensure_private_dir
from shared.settings import ServiceSettings

log = logging.getLogger("stylecast.bus")

# Append only: a name's index is its tcp port offset.
ENDPOINTS = (
    "control",  # supervisor ROUTER <- DEALER of every process: commands and acks
    "events",  # supervisor PUB -> api SUB: stream states, errors
    "heartbeat",  # every process PUSH -> supervisor PULL
    "frames",  # ingest PUSH -> gpu PULL
    "flow_requests",  # gpu PUSH -> flow PULL
    "flow_ready",  # flow PUSH -> gpu PULL
    "styled",  # gpu PUB -> egress SUB (topic = stream)
    "drops",  # any stage PUSH -> supervisor PULL: FrameDropped accounting
)
SOCKET_KINDS = {
    "PUSH": zmq.PUSH,
    "PULL": zmq.PULL,
    "PUB": zmq.PUB,
    "SUB": zmq.SUB,
    "ROUTER": zmq.ROUTER,
    "DEALER": zmq.DEALER,
}
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_LOG_EVERY_S = 5.0


class BusError(RuntimeError):
    """A socket could not be set up as asked (bad endpoint, address in use, …)."""


def ensure_runtime_dir(path: str | os.PathLike[str]) -> Path:
    """Create the private runtime directory (mode 0700) and verify it; raises `RuntimeDirError`."""
    return ensure_private_dir(path)


def endpoint(name: str, service: ServiceSettings, run: Run, worker: int = 0) -> str:
    """The address of a well-known endpoint for this run and transport.

    `worker` selects the copy of a per-GPU-worker endpoint (frames, styled, flow_*): worker 0 keeps the
    plain name, worker k gets `<name>-k` (ipc) or its own block of ports (tcp).
    """
    if name not in ENDPOINTS:
        raise BusError(f"unknown bus endpoint {name!r}; known: {', '.join(ENDPOINTS)}")
    if worker < 0:
        raise BusError(f"worker index {worker} is negative")
    if service.bus_transport == "tcp":
        return f"tcp://{service.bus_tcp_host}:{service.bus_tcp_base_port + worker * len(ENDPOINTS) + ENDPOINTS.index(name)}"
    path = run.dir / (f"{name}.sock" if worker == 0 else f"{name}-{worker}.sock")
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise BusError(
            f"ipc socket path {path} is longer than {_UNIX_PATH_MAX} bytes; choose a shorter service.runtime_dir"
        )
    return f"ipc://{path}"


class Channel:
    """One ZeroMQ socket that sends and receives protocol messages."""

    def __init__(self, sock: zmq.Socket, kind: str, address: str, *, max_bytes: int, process: str) -> None:
        self.sock = sock
        self.kind = kind
        self.address = address
        self.max_bytes = max_bytes
        self.process = process
        self.rejected: collections.Counter[str] = collections.Counter()
        self._last_log: dict[str, float] = {}

    # ---- sending --------------------------------------------------------------------------------

    def send(self, msg: Message, *, topic: str = "", to: bytes | None = None, timeout_s: float | None = 1.0) -> bool:
        """Send `msg`; False if it could not be queued within `timeout_s` (peer gone or queue full).

        `topic` is for PUB (subscribers filter on it), `to` the peer id for ROUTER. `timeout_s=None`
        blocks until it can be queued; 0 never waits. Raises ProtocolError for an oversized message.
        """
        body = encode(msg, self.max_bytes)
        if self.kind == "PUB":
            frames = [topic.encode(), body]
        elif self.kind == "ROUTER":
            if to is None:
                raise ValueError("a ROUTER send needs the peer id (`to`)")
            frames = [to, body]
        else:
            frames = [body]
        if timeout_s is not None and not self.sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
            return False
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK if timeout_s is not None else 0)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # ROUTER_MANDATORY: unknown or departed peer
                return False
            raise
        return True

    # ---- receiving ------------------------------------------------------------------------------

    def recv(self, timeout_s: float | None = None, expect: tuple[type[Message], ...] | None = None) -> Message | None:
        """The next valid message, or None after `timeout_s` (None: wait forever; 0: don't wait).

        Invalid messages are counted and skipped.
        """
        got = self.recv_from(timeout_s, expect)
        return None if got is None else got[1]

    def recv_from(
        self, timeout_s: float | None = None, expect: tuple[type[Message], ...] | None = None
    ) -> tuple[bytes, Message] | None:
        """Like `recv`, with the sender: the peer id for ROUTER, the topic for SUB, else b''."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.sock.poll(None if remaining is None else int(remaining * 1000)):
                return None
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                continue
            got = self._accept(frames, expect)
            if got is not None:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _accept(self, frames: list[bytes], expect: tuple[type[Message], ...] | None) -> tuple[bytes, Message] | None:
        want = 2 if self.kind in ("SUB", "ROUTER") else 1
        try:
            if len(frames) != want:
                raise ProtocolError("bad_frames", f"{len(frames)} message parts on a {self.kind} socket, expected {want}")
            return (frames[0] if want == 2 else b""), decode(frames[-1], self.max_bytes, expect)
        except ProtocolError as exc:
            self._reject(exc)
            return None

    def _reject(self, exc: ProtocolError) -> None:
        self.rejected[exc.reason] += 1
        try:
            from shared.metrics import get_metrics

            get_metrics().count_rejected(self.process, exc.reason)
        except Exception:  # metrics must never take the receiver down
            log.debug("could not count a rejected message", exc_info=True)
        now = time.monotonic()
        if now - self._last_log.get(exc.reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log[exc.reason] = now
            log.warning("%s: rejected a message on %s (%s, %d so far): %s", self.process, self.address, exc.reason, self.rejected[exc.reason], exc)

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (waiting up to the socket's linger for queued messages)."""
        if not self.sock.closed:
            self.sock.close(linger=linger_ms)


class Bus:
    """A ZeroMQ context and the options every socket of one process shares."""

    def __init__(self, service: ServiceSettings, run: Run, *, process: str, context: zmq.Context | None = None) -> None:
        self.service = service
        self.run = run
        self.process = process
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.channels: list[Channel] = []
        if service.bus_transport == "ipc":
            try:
                ensure_private_dir(run.runtime_dir)
                ensure_private_dir(run.dir)
            except RuntimeDirError as exc:
                raise BusError(str(exc)) from None

    def socket(
        self,
        kind: str,
        name: str,
        *,
        bind: bool,
        subscribe: Iterable[str] = ("",),
        identity: bytes | None = None,
        worker: int = 0,
    ) -> Channel:
        """A configured socket of `kind` (PUSH, PULL, PUB, SUB, ROUTER, DEALER) bound or connected to `name`.

        SUB sockets subscribe to `subscribe` topics ('' = everything); DEALERs may set an `identity`.
        """
        if kind not in SOCKET_KINDS:
            raise BusError(f"unknown socket kind {kind!r}; use one of {', '.join(SOCKET_KINDS)}")
        address = endpoint(name, self.service, self.run, worker)
        sock = self.context.socket(SOCKET_KINDS[kind])
        svc = self.service
        try:
            sock.setsockopt(zmq.LINGER, svc.bus_linger_ms)
            sock.setsockopt(zmq.SNDHWM, svc.bus_high_water_mark)
            sock.setsockopt(zmq.RCVHWM, svc.bus_high_water_mark)
            # zmq drops (and disconnects) senders of larger frames before they cost memory here.
            sock.setsockopt(zmq.MAXMSGSIZE, svc.max_message_bytes)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(svc.heartbeat_interval_s * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(svc.heartbeat_timeout_s * 1000))
            if kind == "ROUTER":
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # report unknown peers instead of dropping silently
            if identity is not None:
                sock.setsockopt(zmq.IDENTITY, identity)
            if kind == "SUB":
                for topic in subscribe:
                    sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
            if bind:
                sock.bind(address)
                if address.startswith("ipc://"):
                    with contextlib.suppress(OSError):  # defence in depth: the run dir is 0700 already
                        os.chmod(address[len("ipc://") :], 0o600)
            else:
                # Queue only to completed connections: with the peer gone, send() reports False
                # instead of silently piling messages up for a process that may never come back.
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            verb = "bind" if bind else "connect"
            raise BusError(f"cannot {verb} {kind} socket to {address}: {exc.strerror}") from None
        channel = Channel(sock, kind, address, max_bytes=svc.max_message_bytes, process=self.process)
        self.channels.append(channel)
        return channel

    def close(self, linger_ms: int | None = None) -> None:
        """Close every socket of this bus, then the context if the bus created it."""
        for channel in self.channels:
            channel.close(linger_ms)
        self.channels.clear()
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_readable(channels: Sequence[Channel], timeout_s: float | None) -> list[Channel]:
    """The channels with a message waiting, after at most `timeout_s` (None: until one has)."""
    poller = zmq.Poller()
    for channel in channels:
        poller.register(channel.sock, zmq.POLLIN)
    ready = dict(poller.poll(None if timeout_s is None else int(timeout_s * 1000)))
    return [c for c in channels if ready.get(c.sock)]
