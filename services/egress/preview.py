"""MJPEG-over-HTTP live preview: the latest frame, for any number of browser tabs.

GET /              a tiny HTML page showing the stream
GET /stream.mjpg   multipart/x-mixed-replace JPEG stream (each viewer gets the newest frame
                   whenever it is ready for one; a slow viewer skips frames, never stalls others)
GET /snapshot.jpg  the latest frame as one JPEG (503 until the first frame)

The writer never waits on viewers: `publish()` stores a copy of the frame and wakes viewer threads.
JPEG encoding happens lazily in viewer threads, once per frame however many viewers there are,
and not at all while nobody watches. Binds to 127.0.0.1 unless told otherwise (DESIGN §7).
"""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from .errors import SinkError
from .sinks import Sink

log = logging.getLogger(__name__)

BOUNDARY = "stylecastframe"
_PAGE = b"""<!doctype html><title>StyleCast preview</title>
<body style="margin:0;background:#111"><img src="/stream.mjpg" style="max-width:100%"></body>"""


class LatestFrame:
    """The newest frame, its sequence number, and its JPEG made on first demand."""

    def __init__(self, quality: int) -> None:
        self._quality = quality
        self._changed = threading.Condition()
        self._encode_lock = threading.Lock()
        self._rgb: np.ndarray | None = None
        self._seq = 0
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self.closed = False

    def publish(self, rgb: np.ndarray) -> None:
        with self._changed:
            self._rgb = rgb.copy()  # the caller may reuse its buffer
            self._seq += 1
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_newer(self, seen_seq: int, timeout_s: float) -> int:
        """Block until a frame newer than `seen_seq` exists (or close/timeout); return the newest seq."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > seen_seq or self.closed, timeout=timeout_s)
            return self._seq

    def jpeg(self) -> tuple[int, bytes | None]:
        with self._changed:
            seq, rgb = self._seq, self._rgb
        if rgb is None:
            return 0, None
        with self._encode_lock:
            if self._jpeg_seq != seq:
                ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                          [cv2.IMWRITE_JPEG_QUALITY, self._quality])
                if not ok:
                    raise SinkError("OpenCV could not encode a JPEG")
                self._jpeg, self._jpeg_seq = buffer.tobytes(), seq
            return self._jpeg_seq, self._jpeg


class PreviewServer:
    """A threaded HTTP server serving one LatestFrame. `port=0` picks a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quality: int = 80, max_clients: int = 8,
                 client_timeout_s: float = 10.0) -> None:
        if not 1 <= quality <= 100:
            raise ValueError("JPEG quality must be in 1..100")
        self.latest = LatestFrame(quality)
        self.max_clients = max_clients
        self._clients = 0
        self._clients_lock = threading.Lock()
        handler = _make_handler(self, client_timeout_s)
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise SinkError(f"mjpeg preview: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # viewer threads end on their own once `latest` closes
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"mjpeg-preview:{self.port}", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def clients(self) -> int:
        return self._clients

    def publish(self, rgb: np.ndarray) -> None:
        self.latest.publish(rgb)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.latest.close()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _enter_client(self) -> bool:
        with self._clients_lock:
            if self._clients >= self.max_clients:
                return False
            self._clients += 1
            return True

    def _leave_client(self) -> None:
        with self._clients_lock:
            self._clients -= 1


def _make_handler(server: PreviewServer, client_timeout_s: float):
    class PreviewHandler(BaseHTTPRequestHandler):
        timeout = client_timeout_s  # a viewer that stops reading is dropped after this
        server_version = "StyleCastPreview/1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send_bytes(_PAGE, "text/html; charset=utf-8")
            elif path == "/snapshot.jpg":
                _, jpeg = server.latest.jpeg()
                if jpeg is None:
                    self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
                else:
                    self._send_bytes(jpeg, "image/jpeg")
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def _send_bytes(self, body: bytes, content_type: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _stream(self) -> None:
            if not server._enter_client():
                self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, f"preview has its maximum of {server.max_clients} viewers")
                return
            try:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                seen = 0
                while not server.latest.closed:
                    if server.latest.wait_newer(seen, timeout_s=1.0) <= seen:
                        continue
                    seen, jpeg = server.latest.jpeg()
                    if jpeg is None:
                        continue
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                        + jpeg + b"\r\n"
                    )
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the viewer went away or stopped reading
            finally:
                server._leave_client()
                self.close_connection = True

        def log_message(self, format: str, *args) -> None:  # route access logs to logging, quietly
            log.debug("preview %s: " + format, self.address_string(), *args)

    return PreviewHandler


def parse_listen_target(target: str | int) -> tuple[str, int]:
    """"8090" / ":8090" / "127.0.0.1:8090" / 8090 → (host, port); host defaults to 127.0.0.1."""
    text = str(target).strip()
    host, _, port = text.rpartition(":") if ":" in text else ("", "", text)
    try:
        port_number = int(port)
    except ValueError:
        raise SinkError(f"mjpeg preview: target must be PORT or HOST:PORT, got {text!r}") from None
    if not 0 <= port_number <= 65535:
        raise SinkError(f"mjpeg preview: port {port_number} out of range")
    return (host.strip("[]") or "127.0.0.1"), port_number


class MjpegPreviewSink(Sink):
    """The preview as a Sink: write() publishes, close() stops the server."""

    kind = "mjpeg"

    def __init__(self, target: str | int, size: int, fps: float | Fraction, *, quality: int = 80,
                 max_clients: int = 8) -> None:
        super().__init__(str(target), size, fps)
        host, port = parse_listen_target(target)
        self.server = PreviewServer(host, port, quality=quality, max_clients=max_clients)
        self.target = f"{self.server.host}:{self.server.port}"

    @property
    def url(self) -> str:
        return self.server.url

    def _write(self, frame: np.ndarray) -> None:
        self.server.publish(frame)

    def _finalise(self) -> None:
        self.server.close()
