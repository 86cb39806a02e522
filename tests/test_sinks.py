"""services.egress: MP4, HLS, RTSP push (to the GStreamer RECORD mount) and MJPEG preview."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from services.egress.errors import EncoderMissing, FrameRejected, SinkError, SinkPathError, SinkUnreachable
from services.egress.h264 import H264Settings
from services.egress.sinks import open_sink
from services.ingest.errors import InvalidFrameSize
from tests.support import media
from tests.support.rtsp_server import RtspServer, gstreamer_missing_reason

S = 128
REPO = Path(__file__).resolve().parents[1]


def decoded_numbers(path: str | Path) -> list[int]:
    with av.open(str(path)) as container:
        return [media.read_frame_number(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def write_numbered(sink, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        sink.write(media.numbered_frame(index, sink.size), pts=index)


# -- MP4 ------------------------------------------------------------------------------------
def test_a_killed_mp4_writer_loses_nothing_it_muxed(tmp_path):
    """A writer that dies mid-file leaves a readable segment; the next sink on the path keeps it."""
    path = tmp_path / "out.mp4"
    first = open_sink("mp4", str(path), size=S, fps=25)
    write_numbered(first, 40)
    durable = first.durable_frames
    assert 0 < durable <= 40  # the encoder holds a few frames back
    del first  # no close(): as if the process had been killed
    second = open_sink("mp4", str(path), size=S, fps=25)
    assert second.salvaged_frames == durable
    write_numbered(second, 20, start=durable)
    second.close()
    assert decoded_numbers(path) == list(range(durable + 20))
    assert not list(tmp_path.glob("out.mp4.part*"))



def test_mp4_holds_exactly_the_frames_written_in_order(tmp_path):
    path = tmp_path / "out.mp4"
    with open_sink("mp4", str(path), size=S, fps=30000 / 1001) as sink:
        write_numbered(sink, 45)
        assert not path.exists()  # only the crash-safe segment until finalised
        assert (tmp_path / "out.mp4.part000.ts").stat().st_size > 0
    assert sink.frames_written == 45
    assert not (tmp_path / "out.mp4.partial").exists() and not list(tmp_path.glob("out.mp4.part*"))
    assert decoded_numbers(path) == list(range(45))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        assert (codec.name, codec.profile, codec.pix_fmt) == ("h264", "High", "yuv420p")
        assert (stream.width, stream.height, stream.frames) == (S, S, 45)
        assert stream.average_rate == Fraction(30000, 1001)
        assert codec.colorspace == 1 and codec.color_range == 1  # tagged BT.709, limited range
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: playable while downloading


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def _x264_options(path: Path) -> dict[str, str]:
    """The options x264 wrote into its SEI message in the stream ('... options: cabac=1 ... crf=20.0 ...')."""
    text = path.read_bytes().split(b"options: ", 1)[1].split(b"\x00", 1)[0].decode("ascii", "replace")
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def test_encoder_options_reach_x264_and_the_defaults_stay_otherwise(tmp_path):
    """The operator's preset / crf / threads go into the encoder; a sink without them keeps the defaults."""
    chosen, default = tmp_path / "chosen.mp4", tmp_path / "default.mp4"
    with open_sink("mp4", str(chosen), size=S, fps=25, encoder={"preset": "ultrafast", "crf": 31, "threads": 3}) as sink:
        write_numbered(sink, 12)
    with open_sink("mp4", str(default), size=S, fps=25) as sink:
        write_numbered(sink, 12)
    got, base = _x264_options(chosen), _x264_options(default)
    assert (got["crf"], got["threads"], got["cabac"]) == ("31.0", "3", "0")  # ultrafast turns CABAC off
    assert (base["crf"], base["threads"], base["cabac"]) == ("20.0", "8", "1")
    assert got["bframes"] == base["bframes"] == "0"  # the MP4 sink's crash-safety setting survives an override
    assert decoded_numbers(chosen) == list(range(12))


def test_mp4_ffprobe_agrees(tmp_path):
    path = tmp_path / "out.mp4"
    with open_sink("mp4", str(path), size=S, fps=25) as sink:
        write_numbered(sink, 30)
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name,profile,pix_fmt,nb_read_frames,avg_frame_rate", "-of", "json",
                            str(path)], capture_output=True, text=True, check=True)
    stream = json.loads(probe.stdout)["streams"][0]
    assert stream == {"codec_name": "h264", "profile": "High", "pix_fmt": "yuv420p",
                      "avg_frame_rate": "25/1", "nb_read_frames": "30"}


def test_mp4_close_is_idempotent_and_writes_after_close_are_refused(tmp_path):
    sink = open_sink("mp4", str(tmp_path / "a.mp4"), size=S, fps=25)
    write_numbered(sink, 3)
    sink.close()
    sink.close()
    with pytest.raises(FrameRejected, match="after close"):
        sink.write(media.numbered_frame(3, S))
    assert decoded_numbers(tmp_path / "a.mp4") == [0, 1, 2]


def test_mp4_finalised_on_sigterm_by_a_caller_that_closes(tmp_path):
    path = tmp_path / "term.mp4"
    script = textwrap.dedent(f"""
        import signal, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from services.egress.sinks import open_sink
        from tests.support.media import numbered_frame
        sink = open_sink("mp4", {str(path)!r}, size=64, fps=25)
        def stop(*_):
            sink.close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        index = 0
        while True:
            sink.write(numbered_frame(index, 64), pts=index)
            index += 1
            if index == 10:
                print("WRITING", flush=True)
            time.sleep(0.005)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "WRITING"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    numbers = decoded_numbers(path)
    assert len(numbers) >= 10 and numbers == list(range(len(numbers)))


def test_failed_write_then_close_is_safe(tmp_path, monkeypatch):
    path = tmp_path / "broken.mp4"
    sink = open_sink("mp4", str(path), size=S, fps=25)
    write_numbered(sink, 2)

    def disk_full(packet):
        raise av.error.OSError(28, "No space left on device")

    monkeypatch.setattr(sink, "_container", _MuxFails(sink._container, disk_full))
    with pytest.raises(SinkError, match="write failed.*No space left"):
        write_numbered(sink, 30, start=2)  # the encoder emits packets after its lookahead fills
    with pytest.raises(SinkError, match="No space left"):  # later writes report the same failure
        sink.write(media.numbered_frame(99, S))
    sink.close()  # releases, does not raise again
    sink.close()
    assert not path.exists() and not (tmp_path / "broken.mp4.partial").exists()
    assert not list(tmp_path.glob("broken.mp4.part*"))


class _MuxFails:
    def __init__(self, container, mux):
        self._container, self.mux = container, mux

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.mark.parametrize(
    "frame, pts, words",
    [
        (np.zeros((S, S, 3), np.float32), None, "uint8"),
        (np.zeros((S, S + 2, 3), np.uint8), None, "shape"),
        (np.zeros((S, S), np.uint8), None, "shape"),
        (np.zeros((S, S, 3), np.uint8), 5, "out of order"),
    ],
)
def test_bad_frames_are_rejected(tmp_path, frame, pts, words):
    with open_sink("mp4", str(tmp_path / "x.mp4"), size=S, fps=25) as sink:
        sink.write(media.numbered_frame(0, S), pts=5)
        with pytest.raises(FrameRejected, match=words):
            sink.write(frame, pts=pts)


def test_unwritable_paths_are_named(tmp_path):
    with pytest.raises(SinkPathError, match="does not exist") as caught:
        open_sink("mp4", str(tmp_path / "no" / "such" / "dir.mp4"), size=S, fps=25)
    assert str(tmp_path / "no" / "such") in str(caught.value)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SinkPathError, match="not a directory"):
        open_sink("mp4", str(a_file / "out.mp4"), size=S, fps=25)
    with pytest.raises(SinkPathError, match="is a directory"):
        open_sink("mp4", str(tmp_path), size=S, fps=25)


@pytest.mark.parametrize("encoder, words", [("no_such_h264_encoder", "no 'no_such_h264_encoder' encoder"),
                                            ("mjpeg", "not H.264")])
def test_missing_encoder_is_named(tmp_path, encoder, words):
    with pytest.raises(EncoderMissing, match=words):
        open_sink("mp4", str(tmp_path / "x.mp4"), size=S, fps=25, settings=H264Settings(encoder=encoder))
    assert not list(tmp_path.iterdir())


def test_unknown_type_and_bad_size(tmp_path):
    with pytest.raises(SinkError, match="unknown sink type 'webm'"):
        open_sink("webm", str(tmp_path / "x.webm"), size=S, fps=25)
    with pytest.raises(InvalidFrameSize):
        open_sink("mp4", str(tmp_path / "x.mp4"), size=100, fps=25)


# -- HLS ------------------------------------------------------------------------------------
def test_hls_writes_playlist_and_decodable_segments(tmp_path):
    directory = tmp_path / "hls"
    with open_sink("hls", str(directory), size=S, fps=25, segment_s=1.0) as sink:
        write_numbered(sink, 60)
    playlist = (directory / "index.m3u8").read_text()
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    assert segments == ["segment_00000.ts", "segment_00001.ts", "segment_00002.ts"]
    assert "#EXT-X-ENDLIST" in playlist and "#EXT-X-TARGETDURATION:1" in playlist
    numbers = []
    for name in segments:  # each segment decodes on its own (starts with a keyframe)
        segment_numbers = decoded_numbers(directory / name)
        assert segment_numbers
        numbers += segment_numbers
    assert numbers == list(range(60))
    assert decoded_numbers(directory / "index.m3u8") == list(range(60))


def test_hls_live_window_deletes_old_segments(tmp_path):
    directory = tmp_path / "live"
    with open_sink("hls", str(directory), size=64, fps=25, segment_s=0.4, playlist_size=2) as sink:
        write_numbered(sink, 60)
    playlist = (directory / "index.m3u8").read_text()
    assert playlist.count("#EXTINF") == 2
    assert len(list(directory.glob("segment_*.ts"))) <= 3  # the window (+1 kept by FFmpeg for late readers)


# -- RTSP push --------------------------------------------------------------------------------
@pytest.mark.skipif(bool(gstreamer_missing_reason()), reason=gstreamer_missing_reason() or "")
def test_rtsp_push_reaches_the_server(tmp_path):
    recorded = tmp_path / "received.h264"
    with RtspServer(user="pub", password="pub-secret", record_to=recorded) as server:
        with pytest.raises(SinkUnreachable, match="401 Unauthorized") as caught:
            open_sink("rtsp", server.url_with("pub", "bad-secret", "/record"), size=S, fps=25)
        assert "bad-secret" not in str(caught.value)
        with open_sink("rtsp", server.record_url, size=S, fps=25) as sink:
            assert "pub-secret" not in repr(sink) and "***@" in sink.target
            for index in range(40):
                sink.write(media.numbered_frame(index, S), pts=index)
                # At the stream's own rate, as a live push runs: the test server's RECORD pipeline keeps nothing
                # of a push torn down before it has started (≈ 0.5 s; 0.3 s pushes came out empty every time).
                time.sleep(1 / 25)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and recorded.stat().st_size == 0:
            time.sleep(0.05)
        time.sleep(0.3)  # let the server flush the tail
    numbers = decoded_numbers(recorded)
    # The Annex B recording may repeat the first picture once (parameter sets re-sent by the parser).
    assert sorted(set(numbers)) == list(range(40)) and numbers == sorted(numbers)


def test_rtsp_push_to_nobody_is_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SinkUnreachable, match="cannot push") as caught:
        open_sink("rtsp", f"rtsp://pub:pub-secret@127.0.0.1:{port}/out", size=S, fps=25, timeout_s=2)
    assert "pub-secret" not in str(caught.value) and caught.value.__context__ is None


# -- MJPEG preview ------------------------------------------------------------------------------
def _read_parts(port: int, count: int, out: list, timeout_s: float = 10.0) -> None:
    """Read `count` JPEG parts from /stream.mjpg into `out`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    connection.request("GET", "/stream.mjpg")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("multipart/x-mixed-replace")
    while len(out) < count:
        line = response.readline()
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            response.readline()  # blank line ending the part headers
            out.append(response.read(length))
    connection.close()


def test_mjpeg_preview_serves_two_viewers_at_once():
    with open_sink("mjpeg", "127.0.0.1:0", size=S, fps=25) as sink:
        port = sink.server.port
        parts: list[list[bytes]] = [[], []]
        viewers = [threading.Thread(target=_read_parts, args=(port, 5, out)) for out in parts]
        for viewer in viewers:
            viewer.start()
        deadline = time.monotonic() + 10
        index = 0
        while any(v.is_alive() for v in viewers) and time.monotonic() < deadline:
            sink.write(media.numbered_frame(index, S), pts=index)
            index += 1
            time.sleep(0.02)
        for viewer in viewers:
            viewer.join(timeout=1)
        # A viewer that left is noticed at the next frame sent to it, and its slot freed.
        deadline = time.monotonic() + 3
        while sink.server.clients and time.monotonic() < deadline:
            sink.write(media.numbered_frame(index, S), pts=index)
            index += 1
            time.sleep(0.05)
        assert sink.server.clients == 0
    for out in parts:
        assert len(out) == 5
        numbers = [media.read_frame_number(cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                                                        cv2.COLOR_BGR2RGB)) for jpeg in out]
        assert numbers == sorted(numbers) and len(set(numbers)) == 5  # newest frames, in order


def test_mjpeg_snapshot_and_errors():
    with open_sink("mjpeg", "0", size=64, fps=25) as sink:
        connection = http.client.HTTPConnection("127.0.0.1", sink.server.port, timeout=5)
        connection.request("GET", "/snapshot.jpg")
        assert connection.getresponse().status == 503  # nothing published yet
        sink.write(media.numbered_frame(321, 64))
        connection = http.client.HTTPConnection("127.0.0.1", sink.server.port, timeout=5)
        connection.request("GET", "/snapshot.jpg")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
        assert media.read_frame_number(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)) == 321
        connection = http.client.HTTPConnection("127.0.0.1", sink.server.port, timeout=5)
        connection.request("GET", "/nothing")
        assert connection.getresponse().status == 404
        port = sink.server.port
    with pytest.raises(ConnectionRefusedError):  # closed means closed
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_mjpeg_writer_never_waits_for_a_stuck_viewer():
    with open_sink("mjpeg", "0", size=256, fps=25, max_clients=2) as sink:
        stuck = socket.create_connection(("127.0.0.1", sink.server.port))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)  # big JPEGs fill buffers fast
        started = time.monotonic()
        for index in range(200):
            frame = noise.copy()
            frame[:8, :8] = index % 256
            sink.write(frame)
            time.sleep(0.001)
        assert time.monotonic() - started < 2.0
        third = http.client.HTTPConnection("127.0.0.1", sink.server.port, timeout=5)
        second = http.client.HTTPConnection("127.0.0.1", sink.server.port, timeout=5)
        second.request("GET", "/stream.mjpg")
        assert second.getresponse().status == 200
        third.request("GET", "/stream.mjpg")
        assert third.getresponse().status == 503  # max_clients=2
        stuck.close()
