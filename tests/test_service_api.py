"""`stylecast serve`: the long-lived service through its HTTP API, with a real RTSP camera beside a file."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.support.rtsp_server import RtspServer, gstreamer_missing_reason
from tests.support.service import (
    REPO, decode_video, free_port, leftover_segments, metric_value, processes_using, service_env, wait_for,
)


@pytest.fixture()
def service(tmp_path, bikes_path):
    port = free_port()
    config = {
        "model": {"profile": "synthetic-tiny"},
        "engine": {"size": 64, "batch": 4},
        "service": {"api_port": port, "runtime_dir": str(tmp_path / "rt")},
        "streams": [{"name": "main", "source": str(bikes_path), "prompt": "make it an oil painting", "pace": True,
                     "sinks": [{"type": "mp4", "target": str(tmp_path / "main.mp4")}]}],
    }
    (tmp_path / "stylecast.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--config", str(tmp_path / "stylecast.yaml")],
                            env=service_env(tmp_path / "rt"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        yield proc, client, tmp_path
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_service_api_metrics_prompt_change_and_rtsp(service):
    proc, client, tmp_path = service
    ready_codes = []

    def health_up():
        try:
            if client.get("/healthz").status_code == 200:
                ready_codes.append(client.get("/readyz").status_code)
                return True
        except httpx.TransportError:
            return False

    wait_for(health_up, 60, "/healthz")
    wait_for(lambda: ready_codes.append(client.get("/readyz").status_code) or ready_codes[-1] == 200, 120, "/readyz")
    assert 503 in ready_codes, "readyz must say 'not ready' while the models load"

    wait_for(lambda: client.get("/streams/main").json()["counters"]["frames_out"] > 8, 60, "frames out")
    first = client.get("/metrics").text
    for name, labels in (("stylecast_frames_total", {"stream": "main", "stage": "egress", "outcome": "processed"}),
                         ("stylecast_end_to_end_latency_seconds_count", {"stream": "main"}),
                         ("stylecast_stage_latency_seconds_count", {"stream": "main", "stage": "main"})):
        start = metric_value(first, name, **labels)
        assert start > 0, name
        wait_for(lambda: metric_value(client.get("/metrics").text, name, **labels) > start, 30, f"{name} to grow")

    answer = client.put("/streams/main/prompt", json={"prompt": "a charcoal sketch"})
    assert answer.status_code == 200 and answer.json()["prompt_version"] == 2
    wait_for(lambda: metric_value(client.get("/metrics").text, "stylecast_prompt_version", stream="main") == 2, 10,
          "the encoder to take the new prompt at the next batch")
    assert client.get("/streams/main").json()["prompt"] == "a charcoal sketch"

    if (reason := gstreamer_missing_reason()) is not None:
        pytest.skip(reason)
    with RtspServer(user="viewer", password="t0p-secret") as camera:
        answer = client.post("/streams", json={"name": "cam", "source": camera.url, "prompt": "watercolour",
                                               "sinks": [{"type": "mp4", "target": str(tmp_path / "cam.mp4")}]})
        assert answer.status_code == 201, answer.text
        assert "t0p-secret" not in answer.text
        wait_for(lambda: client.get("/streams/cam").json()["counters"]["frames_out"] > 10, 60, "RTSP frames out")
        info = client.get("/streams/cam").json()
        assert info["state"] == "running" and info["live"] and info["latency_ms"]["p50"] is not None
        assert metric_value(client.get("/metrics").text, "stylecast_frames_total", stream="cam", stage="ingest") > 10
        assert client.get("/streams/main").json()["state"] in ("running", "stopped")  # the file stream was not disturbed
        assert client.delete("/streams/cam").status_code == 204
    cam, codec = decode_video(tmp_path / "cam.mp4")
    assert codec == "h264" and len(cam) > 10
    assert client.get("/streams/cam").status_code == 404

    gpu_logs = list((tmp_path / "rt" / "logs").glob("*/gpu.log"))
    assert gpu_logs and re.search(r"stream main: prompt version 2 from the next batch", gpu_logs[0].read_text())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    main, _ = decode_video(tmp_path / "main.mp4")  # finalised on stop
    assert len(main) > 8
    runtime = tmp_path / "rt"
    assert not processes_using(runtime) and not leftover_segments(runtime)
    logs = "".join(p.read_text() for p in (runtime / "logs").glob("*/*.log"))
    assert "t0p-secret" not in logs


def test_bad_stream_is_refused_and_the_others_keep_running(service):
    proc, client, tmp_path = service
    wait_for(lambda: _safe_status(client, "/readyz") == 200, 120, "/readyz")
    bad = client.post("/streams", json={"name": "bad", "source": str(tmp_path / "stylecast.yaml"), "prompt": "x"})
    assert bad.status_code == 400 and "stylecast.yaml" in bad.json()["detail"]
    missing = client.post("/streams", json={"name": "gone", "source": str(tmp_path / "nope.mp4"), "prompt": "x"})
    assert missing.status_code == 422 and "does not exist" in missing.text
    wait_for(lambda: client.get("/streams/main").json()["counters"]["frames_out"] > 8, 60, "the good stream to keep going")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def _safe_status(client, path):
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return None
