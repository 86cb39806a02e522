"""Bad input against a running service: each gets a clear error naming the problem (or, where the input
is merely unusual, is styled like any other), and nothing else stops. Rows go to RELIABILITY.md."""

from __future__ import annotations

import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import zmq

from tests.support import media
from tests.support.rtsp_server import RtspServer, gstreamer_missing_reason
from tests.support.service import REPO, Service, metric_value, service_env, wait_for

GOOD_FRAMES = 250


def _vfr_video(path: Path, frames: int = 20) -> Path:
    """Frames at irregular times (10 to 70 ms apart): variable frame rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(media.numbered_frame(i, 96, 64), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += 10 + (i * 37) % 61
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    numbered = media.make_numbered_video(d / "numbered.mp4", frames=30)
    (d / "zero.mp4").write_bytes(b"")
    return {
        "zero-byte file": d / "zero.mp4",
        "random bytes named .mp4": media.make_random_bytes(d / "random.mp4"),
        "truncated MP4 (moov lost)": media.make_truncated(
            media.make_numbered_video(d / "tail_moov.mp4", frames=30, faststart=False), d / "truncated.mp4"),
        "audio-only file": media.make_audio_only(d / "audio.mp4"),
        "corrupt packets mid-file": media.make_corrupt_packets_video(d / "corrupt.mkv"),
        "grayscale video": media.make_grayscale_video(d / "gray.mkv"),
        "10-bit video": media.make_10bit_video(d / "tenbit.mp4"),
        "variable frame rate": _vfr_video(d / "vfr.mp4"),
        "tiny 16x16 frames": media.make_tiny_video(d / "tiny.mp4"),
        "huge 7680x4320 frames": media.make_numbered_video(d / "huge.mp4", frames=3, width=7680, height=4320),
        "odd dimensions": media.make_odd_size_video(d / "odd.mp4"),
        "numbered": numbered,
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory, bikes_path):
    tmp = tmp_path_factory.mktemp("svc")
    svc = Service(tmp, [{"name": "good", "source": str(bikes_path), "prompt": "make it an oil painting", "pace": True,
                         "sinks": [{"type": "mp4", "target": str(tmp / "good.mp4")}]}],
                  ingest={"connect_timeout_s": 2.0, "read_timeout_s": 2.0})
    svc.wait_ready()
    yield svc
    svc.stop()
    svc.kill()


REJECTED = ["zero-byte file", "random bytes named .mp4", "truncated MP4 (moov lost)", "audio-only file"]
STYLED = ["corrupt packets mid-file", "grayscale video", "10-bit video", "variable frame rate", "tiny 16x16 frames",
          "huge 7680x4320 frames", "odd dimensions"]


def _post(svc: Service, name: str, source: str, prompt: str = "oil painting", **extra):
    return svc.client.post("/streams", json={"name": name, "source": source, "prompt": prompt, **extra})


@pytest.mark.parametrize("case", REJECTED)
def test_unusable_files_are_refused_by_name(service, inputs, case, reliability):
    path = inputs[case]
    answer = _post(service, "bad", str(path))
    assert answer.status_code == 400, answer.text
    assert path.name in answer.json()["detail"]
    assert service.client.get("/streams/bad").status_code == 404
    assert service.stream("good")["state"] != "failed"
    reliability.record("bad input", case, f"400: {answer.json()['detail'][:90]}", frames_lost=0,
                       detail="the running stream beside it continued")


@pytest.mark.parametrize("case", STYLED)
def test_unusual_but_valid_files_are_styled_to_the_last_frame(service, inputs, case, reliability, tmp_path):
    path = inputs[case]
    expected = len(list(av.open(str(path)).decode(video=0))) if case != "corrupt packets mid-file" else None
    name = "x" + str(abs(hash(case)) % 10**6)
    answer = _post(service, name, str(path), sinks=[{"type": "mp4", "target": str(tmp_path / "out.mp4")}])
    assert answer.status_code == 201, answer.text
    wait_for(lambda: service.stream(name)["state"] in ("stopped", "failed"), 120, f"{case} to finish")
    info = service.stream(name)
    assert info["state"] == "stopped", info
    written = len(list(av.open(str(tmp_path / "out.mp4")).decode(video=0)))
    detail = f"{written} frames styled"
    if case == "corrupt packets mid-file":
        corrupt = metric_value(service.metrics(), "stylecast_frames_total", stream=name, outcome="dropped_corrupt")
        assert corrupt > 0 and written >= 40 - 4 - 1  # decoding went on past the damage, and counted it
        detail += f", {int(corrupt)} corrupt packet(s) skipped and counted"
    else:
        assert written == expected
    assert service.stream("good")["state"] != "failed"
    reliability.record("bad input", case, "styled, stream ended normally", frames_lost=0, detail=detail)


@pytest.mark.parametrize("prompt,status", [("", 422), ("x" * 10_000, 422), ("油絵のように、筆致を残して", 201)])
def test_prompts_empty_huge_and_non_latin(service, inputs, prompt, status, reliability):
    answer = _post(service, "p", str(inputs["numbered"]), prompt=prompt)
    assert answer.status_code == status, answer.text
    if status == 422:
        assert "prompt" in answer.text
    else:
        wait_for(lambda: service.stream("p")["state"] == "stopped", 60, "non-Latin prompt stream")
        assert service.client.delete("/streams/p").status_code == 204
    label = {0: "empty prompt", 10_000: "10,000-character prompt"}.get(len(prompt), "non-Latin prompt")
    reliability.record("bad input", label, f"{status}", detail=answer.text[:90] if status != 201 else "styled")


def test_unreachable_host_is_refused_within_the_timeout(service, reliability):
    started = time.monotonic()
    answer = _post(service, "far", "rtsp://admin:pa55word@127.0.0.1:9/stream")
    took = time.monotonic() - started
    assert answer.status_code == 400 and "127.0.0.1" in answer.text and "pa55word" not in answer.text
    assert took < 10
    reliability.record("bad input", "unreachable RTSP host", "400 within the connect timeout", recovery_s=took,
                       detail=answer.json()["detail"][:90])


@pytest.mark.skipif(gstreamer_missing_reason() is not None, reason=str(gstreamer_missing_reason()))
def test_rtsp_401_is_named(service, reliability):
    with RtspServer(user="viewer", password="right-one") as camera:
        answer = _post(service, "cam", camera.url_with("viewer", "wrong-one"))
    assert answer.status_code == 400 and "wrong-one" not in answer.text
    assert "auth" in answer.text.lower() or "401" in answer.text
    reliability.record("bad input", "RTSP 401 (wrong password)", "400", detail=answer.json()["detail"][:90])


def test_malformed_and_oversized_bus_messages_are_counted_not_fatal(service, reliability):
    before = metric_value(service.metrics(), "stylecast_bus_rejected_messages_total", process="gpu")
    sock_path = next((service.runtime / "runs").glob("*/frames.sock"))
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(f"ipc://{sock_path}")
    rng = np.random.default_rng(5)
    garbage = [rng.bytes(n) for n in (1, 17, 300, 4000)] + [b"\x81\xa1v\x02", b"\x93\x01\x02\x03", b"\xc1"]
    for body in garbage:
        push.send(body)
    push.send(b"x" * (1 << 20))  # over max_message_bytes: zmq drops it and this connection
    push.close()
    context.term()
    wait_for(lambda: metric_value(service.metrics(), "stylecast_bus_rejected_messages_total", process="gpu")
             >= before + len(garbage), 20, "rejections to be counted")
    assert service.stream("good")["state"] != "failed"
    assert service.status("/healthz") == 200
    reliability.record("bad input", "malformed bus messages injected into the GPU worker", "counted, ignored",
                       detail=f"{len(garbage)} malformed rejected and counted; a 1 MiB one dropped by zmq")


def test_the_good_stream_lost_nothing(service, reliability):
    wait_for(lambda: service.stream("good")["state"] == "stopped", 120, "the good stream to finish")
    out = service.tmp / "good.mp4"
    written = len(list(av.open(str(out)).decode(video=0)))
    assert written == GOOD_FRAMES
    reliability.record("bad input", "all of the above beside a running stream", "the stream was never disturbed",
                       frames_lost=GOOD_FRAMES - written)


@pytest.mark.parametrize("yaml_text,field", [
    ("engine: {size: big}\n", "engine.size"), ("engine: {batch: 0}\n", "engine.batch"),
    ("service: {api_port: 70000}\n", "service.api_port"), ("model: {dtype: float16}\n", "model.dtype"),
    ("engine: {size: 500}\n", "engine.size: 500"),
])
def test_invalid_config_is_named(tmp_path, yaml_text, field, reliability):
    (tmp_path / "bad.yaml").write_text(yaml_text)
    result = subprocess.run([sys.executable, "-m", "services.cli", "serve", "--config", str(tmp_path / "bad.yaml")],
                            env=service_env(tmp_path / "rt"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and field in result.stderr, result.stderr
    reliability.record("bad input", f"invalid config: {yaml_text.strip()}", "exit 2", detail=result.stderr.strip().splitlines()[-1][:90])
