"""Junk that FFmpeg's probe takes for a video ends in a named error at once, never in a crash loop.

About 1 random 4 KiB file in 2500 got past the probe: most as a raw H.263 stream (a picture start code
turns up by chance), some as Pictor images or LRC lyrics. The H.263 "video" decoded to no picture, the
run ended after 0 frames, and the egress crashed finalising an MP4 of no frames, again after each restart.
The bytes here are fixed (a header, then SHA-256 output), not random, so each case is the same every run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import av
import numpy as np
import pytest

from services.egress.errors import SinkError
from services.egress.sinks import open_sink
from services.ingest.errors import NotAVideo
from services.ingest.sources import open_source
from tests.support.service import stylecast

S = 64


def junk(size: int) -> bytes:
    """Deterministic bytes that look random (no numpy: its generators may change between versions)."""
    return b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size // 32 + 1))[:size]


# A valid H.263 picture header (start code, then QCIF, intra): enough for FFmpeg's probe of a raw stream.
H263_HEADER = bytes.fromhex("000080020800")

# Each passed the probe as a video stream that decodes to nothing.
NO_PICTURE = {
    "h263": H263_HEADER + junk(4090),  # the CI case: what random bytes are mostly taken for
    "gif": b"GIF89a" + junk(4090),
    "png": b"\x89PNG\r\n\x1a\n" + junk(4088),
    "jpeg": b"\xff\xd8\xff\xe0" + junk(4092),
    "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 " + junk(4080),
    "y4m": b"YUV4MPEG2 W64 H64 F30:1\nFRAME\n" + junk(4096),  # a 64x64 stream, its one frame cut short
}


@pytest.mark.parametrize("kind", sorted(NO_PICTURE))
def test_a_stream_without_a_picture_is_not_a_video(tmp_path, kind):
    path = tmp_path / "junk.mp4"
    path.write_bytes(NO_PICTURE[kind])
    with av.open(str(path)) as container:  # the premise: FFmpeg's probe finds a video stream in it
        assert container.streams.video
    with pytest.raises(NotAVideo) as caught:
        open_source(str(path), size=S)
    assert str(path) in str(caught.value) and "gave no picture" in str(caught.value)


def test_metadata_that_is_not_utf8_gives_the_named_error(tmp_path):
    """Random bytes that begin with '[' probe as LRC lyrics; their tag names were decoded strictly
    and UnicodeDecodeError escaped the probe instead of the error naming the file."""
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"[ar:\xb2\xfb]\n" + junk(4000))  # an artist tag that is not UTF-8
    with pytest.raises(NotAVideo, match="no video stream") as caught:
        open_source(str(path), size=S)
    assert str(path) in str(caught.value)


def test_the_first_frame_decoded_at_open_is_delivered_first(tmp_path):
    path = tmp_path / "five.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width = stream.height = S
        stream.pix_fmt = "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((S, S, 3), 40 * i + 20, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with open_source(str(path), size=S) as source:
        frames = list(source)
    assert [f.index for f in frames] == list(range(5))
    assert np.allclose([f.rgb.mean() for f in frames], [40 * i + 20 for i in range(5)], atol=3)


def test_an_mp4_sink_closed_without_frames_writes_an_empty_file(tmp_path):
    """The egress of a stream that ended before its first frame: it crashed here (FileNotFoundError on
    the rename of a .partial that was never written), and its restarts waited for an end already sent."""
    out = tmp_path / "o.mp4"
    sink = open_sink("mp4", str(out), size=S, fps=25)
    sink.close()
    with av.open(str(out)) as container:
        assert container.format.name.startswith("mov,mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]  # no segments or .partial left


@pytest.mark.parametrize("fps", [2000.0, 0.0])
def test_a_rate_no_output_takes_is_a_sink_error(tmp_path, fps):
    """A source's nominal rate can be anything (a 2000 fps file plays fine). The egress fails the stream
    on a SinkError; a ValueError crashed it, and every restart met the same rate."""
    with pytest.raises(SinkError, match="fps must be in"):
        open_sink("mp4", str(tmp_path / "o.mp4"), size=S, fps=fps)
    assert not list(tmp_path.iterdir())


def test_run_of_h263_junk_fails_fast_naming_the_file(tmp_path: Path):
    junk_file = tmp_path / "junk.mp4"
    junk_file.write_bytes(NO_PICTURE["h263"])
    started = time.monotonic()
    result = stylecast(["run", str(junk_file), "-o", str(tmp_path / "o.mp4"), "--prompt", "x", "--profile", "synthetic-tiny",
                        "--size", str(S), "--device", "cpu", "--no-progress"], tmp_path / "rt", timeout=45)
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(junk_file) in result.stderr and "not a video" in result.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / "o.mp4").exists()


def test_run_of_a_source_faster_than_any_output_is_refused_at_the_probe(tmp_path: Path):
    """A real 2000 fps file: refused before any process starts, with the rate named (the egress used to
    crash-loop on it, later to fail the stream only once it had started)."""
    fast = tmp_path / "fast.mkv"
    with av.open(str(fast), "w") as out:
        stream = out.add_stream("mpeg4", rate=2000)
        stream.width = stream.height = S
        stream.pix_fmt = "yuv420p"
        for _ in range(5):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((S, S, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode(None))
    with open_source(str(fast), size=S) as source:  # the premise: the file plays, at its 2000 fps
        assert source.fps == pytest.approx(2000, rel=0.01)
    result = stylecast(["run", str(fast), "-o", str(tmp_path / "o.mp4"), "--prompt", "x", "--profile", "synthetic-tiny",
                        "--size", str(S), "--device", "cpu", "--no-progress"], tmp_path / "rt", timeout=45)
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(fast) in result.stderr and "2000 fps" in result.stderr and "up to 1000 fps" in result.stderr
    assert not (tmp_path / "o.mp4").exists()
