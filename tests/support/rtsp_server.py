"""A real RTSP server for tests: Debian's GStreamer RTSP server in a subprocess.

Two halves in one file:
- `RtspServer` (imported by pytest, no GStreamer import): starts this file under the *system*
  Python (`/usr/bin/python3`, which has `gi`), waits for its "READY <port>" line, and stops it.
- `main()` (run in that subprocess): serves, on 127.0.0.1 and a free port,
    /stream  a test clip: an H.264 MP4 file played once in real time (each client gets a fresh
             pipeline from the first frame; the session ends with the clip), or an endless live
             test pattern when no clip is given;
    /record  a RECORD mount that accepts an RTSP push (H.264) and writes the received stream as
             an Annex B .h264 file, so a test can check what a pusher sent;
  optionally behind basic auth. It exits when its stdin closes (the test process died) or on SIGTERM.

Packages (Debian 12): python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly (x264enc).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly"
)
PLAY_MOUNT, RECORD_MOUNT = "/stream", "/record"
_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "missing = [e for e in ('x264enc', 'rtph264pay', 'rtph264depay', 'qtdemux', 'h264parse', 'videotestsrc') "
    "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
)


def gstreamer_missing_reason() -> str | None:
    """None if the GStreamer RTSP server can run here, else why not (for pytest.skip)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the GStreamer RTSP test server runs under the system Python)"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"GStreamer RTSP server not installed (apt-get install {APT_PACKAGES})"
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()} (apt-get install {APT_PACKAGES})"
    return None


class RtspServer:
    """`with RtspServer(clip=path) as server: open_source(server.url, ...)`.

    clip: an H.264 MP4 to serve, once per client (not looped: at end of clip the server sends
    RTCP BYE and the client sees end of stream); None serves an endless live 25 fps test pattern.
    user/password: require basic auth; `.url` then carries the credentials, `.url_without_auth`
    and `.url_with(user, password)` help test rejections. `.record_url` accepts an RTSP push;
    what it received lands in `.recorded_path` (Annex B H.264).
    """

    def __init__(self, clip: str | os.PathLike | None = None, user: str | None = None,
                 password: str | None = None, *, size: tuple[int, int] = (320, 240), fps: int = 25,
                 record_to: str | os.PathLike | None = None, start_timeout_s: float = 20.0,
                 port: int = 0) -> None:
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        self.clip = Path(clip) if clip is not None else None
        self.user, self.password = user, password
        self.size, self.fps = size, fps
        self.recorded_path = Path(record_to) if record_to is not None else None
        self.start_timeout_s = start_timeout_s
        self.port: int | None = port or None  # 0: the kernel picks; restart() keeps the port
        self._process: subprocess.Popen | None = None
        self._stderr_lines: list[str] = []

    # -- URLs ----------------------------------------------------------------------------------
    def url_with(self, user: str | None, password: str | None, mount: str = PLAY_MOUNT) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{mount}"

    @property
    def url(self) -> str:
        return self.url_with(self.user, self.password)

    @property
    def url_without_auth(self) -> str:
        return self.url_with(None, None)

    @property
    def record_url(self) -> str:
        return self.url_with(self.user, self.password, RECORD_MOUNT)

    # -- lifetime ------------------------------------------------------------------------------
    def start(self) -> "RtspServer":
        command = [SYSTEM_PYTHON, str(Path(__file__).resolve()), "--width", str(self.size[0]),
                   "--height", str(self.size[1]), "--fps", str(self.fps), "--port", str(self.port or 0)]
        if self.clip is not None:
            if not self.clip.is_file():
                raise FileNotFoundError(f"RTSP test clip not found: {self.clip}")
            command += ["--clip", str(self.clip)]
        if self.recorded_path is not None:
            command += ["--record-to", str(self.recorded_path)]
        env = dict(os.environ)
        if self.user is not None:  # via the environment, not argv (visible in ps)
            env["RTSP_TEST_USER"], env["RTSP_TEST_PASSWORD"] = self.user, self.password
        # A clean environment for the system Python: no venv, no PYTHONPATH meant for 3.11 packages.
        for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(key, None)
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.port = self._wait_ready()
        return self

    def _drain_stderr(self) -> None:
        for line in self._process.stderr:
            self._stderr_lines.append(line.rstrip())

    def _wait_ready(self) -> int:
        result: dict[str, str] = {}

        def read_first_line() -> None:
            result["line"] = self._process.stdout.readline()

        reader = threading.Thread(target=read_first_line, daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        line = result.get("line", "")
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"RTSP test server did not start: {line.strip()!r}; stderr: "
                               + " | ".join(self._stderr_lines[-10:]))
        return int(line.split()[1])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def pause(self) -> None:
        """Freeze the server process (SIGSTOP): connections stay open but carry nothing."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    @property
    def stderr_text(self) -> str:
        return "\n".join(self._stderr_lines)

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        if self._process is not None and self._process.poll() is None:
            self.resume()  # a stopped process ignores SIGTERM until continued
        self.stop()


# ---------------------------------------------------------------------------------------------
# The server process (system Python + GStreamer)
# ---------------------------------------------------------------------------------------------
def _pattern_launch(width: int, height: int, fps: int) -> str:
    return (f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
            f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
            f"! rtph264pay name=pay0 pt=96 config-interval=1 )")


def _clip_launch(clip: str) -> str:
    return f'( filesrc location="{clip}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'


def _record_launch(out: str) -> str:
    return (f'( rtph264depay name=depay0 ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream '
            f'! filesink location="{out}" buffer-mode=unbuffered sync=false )')


def main(argv: list[str] | None = None) -> int:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--record-to")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))  # 0: the kernel picks a free port; we report it below
    mounts = server.get_mount_points()

    play = GstRtspServer.RTSPMediaFactory()
    if args.clip:
        play.set_launch(_clip_launch(args.clip))
    else:
        play.set_launch(_pattern_launch(args.width, args.height, args.fps))
    play.set_shared(False)  # every client gets its own pipeline, from the first frame
    mounts.add_factory(PLAY_MOUNT, play)
    factories = [play]

    if args.record_to:
        record = GstRtspServer.RTSPMediaFactory()
        record.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        record.set_launch(_record_launch(args.record_to))
        mounts.add_factory(RECORD_MOUNT, record)
        factories.append(record)

    user, password = os.environ.get("RTSP_TEST_USER"), os.environ.get("RTSP_TEST_PASSWORD")
    if user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "tester")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        role = Gst.Structure.from_string(
            "tester, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0]
        for factory in factories:
            factory.add_role_from_structure(role)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print("FAILED could not bind", flush=True)
        return 1
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, lambda: loop.quit() or False)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_HUP | GLib.IO_IN | GLib.IO_ERR,
                      lambda *_: loop.quit() or False)  # parent gone (or wrote to us): stop
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
