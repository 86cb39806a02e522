"""`stylecast run`: the whole multi-process pipeline on a real clip, its summary, and its clean exit."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from services.gpu.engine import EngineConfig, StreamEngine
from tests.conftest import real_frames
from tests.support.service import (
    REPO,
    decode_video,
    frames_written,
    leftover_segments,
    processes_using,
    service_env,
    stylecast,
    trim_clip,
)

SIZE, BATCH, FRAMES = 64, 4, 30
COMMON = ["--profile", "synthetic-tiny", "--size", str(SIZE), "--batch", str(BATCH), "--no-progress"]


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, bikes_path):
    return trim_clip(bikes_path, tmp_path_factory.mktemp("clips") / "bikes30.mp4", FRAMES)


def test_run_writes_every_frame_in_order_and_cleans_up(tmp_path, short_clip, tiny_bundle):
    out = tmp_path / "out.mp4"
    runtime = tmp_path / "rt"
    result = stylecast(["run", str(short_clip), "-o", str(out), "--prompt", "make it an oil painting", *COMMON], runtime)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"frames in {FRAMES}, out {FRAMES}, dropped 0" in result.stdout
    assert "end-to-end latency p50" in result.stdout
    assert "RANDOM WEIGHTS" in result.stdout  # never presented as a stylisation
    gpu = re.search(r"gpu: (\d+) frames in (\d+) batches", result.stdout)  # the GPU worker's own account
    assert gpu and int(gpu[1]) == FRAMES and FRAMES / BATCH <= int(gpu[2]) <= FRAMES, result.stdout
    # On the CPU the refresh flows are OpenCV's, computed by the flow process the supervisor started.
    assert "(flows: opencv)" in result.stdout and list((runtime / "logs").glob("*/flow.log"))
    written, codec = decode_video(out)
    assert codec == "h264" and written.shape == (FRAMES, SIZE, SIZE, 3)
    if shutil.which("ffprobe"):
        probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                                "stream=nb_read_frames", "-of", "csv=p=0", str(out)], capture_output=True, text=True)
        assert probe.stdout.strip() == str(FRAMES)
    # The same frames through the in-process engine (same seeds: noise is keyed by frame number).
    with StreamEngine(EngineConfig(size=SIZE, batch=BATCH, hooks="down_blocks"), tiny_bundle) as engine:
        engine.open_stream("main", "make it an oil painting", seed=0)
        inputs = real_frames(str(short_clip), SIZE, FRAMES)
        expected = np.concatenate([engine.process(inputs[i : i + BATCH], "main") for i in range(0, FRAMES, BATCH)])
    diff = np.abs(written.astype(float)[:, None] - expected.astype(float)[None]).mean(axis=(2, 3, 4))
    assert (diff.argmin(axis=1) == np.arange(FRAMES)).all(), "output frames are out of order or not the engine's"
    assert np.diag(diff).max() < 8  # H.264 at crf 20 on 64² frames
    assert not processes_using(runtime) and not leftover_segments(runtime)
    assert not list((runtime / "runs").glob("*"))  # the run directory is removed


@pytest.mark.parametrize("case", ["missing", "not_a_video", "bad_size", "huge_size", "bad_batch"])
def test_bad_input_fails_fast_with_a_named_problem(tmp_path, short_clip, case):
    junk = tmp_path / "junk.mp4"
    # Fixed bytes, not os.urandom: once in CI a random 4 KiB passed the probe (most likely as raw H.263 that decodes to
    # nothing) and the egress crash-looped on the run of 0 frames; such cases are in test_junk_inputs.py.
    junk.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    args = {
        "missing": ["run", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4"), "--prompt", "x", *COMMON],
        "not_a_video": ["run", str(junk), "-o", str(tmp_path / "o.mp4"), "--prompt", "x", *COMMON],
        "bad_size": ["run", str(short_clip), "-o", str(tmp_path / "o.mp4"), "--prompt", "x", "--size", "100"],
        "huge_size": ["run", str(short_clip), "-o", str(tmp_path / "o.mp4"), "--prompt", "x", "--size", "4096"],
        "bad_batch": ["run", str(short_clip), "-o", str(tmp_path / "o.mp4"), "--prompt", "x", "--batch", "0"],
    }[case]
    expect = {"missing": "does not exist", "not_a_video": "junk.mp4", "bad_size": "engine.size: 100",
              "huge_size": "engine.size", "bad_batch": "engine.batch"}[case]
    started = time.monotonic()
    result = stylecast(args, tmp_path / "rt", timeout=60)
    assert result.returncode == 2, result.stderr
    assert expect in result.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "o.mp4").exists()


def test_unreachable_rtsp_fails_within_the_timeout(tmp_path):
    env_timeout = {"STYLECAST_INGEST__CONNECT_TIMEOUT_S": "2", "STYLECAST_INGEST__READ_TIMEOUT_S": "2"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "rtsp://user:hunter2@127.0.0.1:9/cam", "-o", str(tmp_path / "o.mp4"),
         "--prompt", "x", *COMMON], env=service_env(tmp_path / "rt", **env_timeout), cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "127.0.0.1" in result.stderr and "hunter2" not in result.stderr + result.stdout
    assert time.monotonic() - started < 20


def test_ctrl_c_drains_finalises_the_file_and_leaves_nothing(tmp_path, bikes_path):
    out = tmp_path / "out.mp4"
    runtime = tmp_path / "rt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", str(bikes_path), "-o", str(out), "--prompt", "x", "--pace", *COMMON],
        env=service_env(runtime), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until frames flow (the egress log says so)
            logs = list((runtime / "logs").glob("*/egress-main.log"))
            if any((runtime / "runs").glob("*/summary-*.json")) or (logs and proc.poll() is None and frames_written(runtime) > 10):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    written, codec = decode_video(out)  # finalised and playable
    assert codec == "h264" and 0 < len(written) < 250
    assert f"out {len(written)}" in stdout
    assert not processes_using(runtime) and not leftover_segments(runtime)


def test_run_with_flows_computed_by_the_gpu_worker(tmp_path, short_clip):
    """engine.flow_backend torch (the CUDA default): the GPU worker computes the refresh flows itself."""
    config = tmp_path / "settings.yaml"
    config.write_text("engine:\n  flow_backend: torch\n  cond_refresh: 2\n")
    out = tmp_path / "out.mp4"
    result = stylecast(["run", str(short_clip), "-o", str(out), "--prompt", "make it an oil painting", "--config",
                        str(config), *COMMON], tmp_path / "rt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"frames in {FRAMES}, out {FRAMES}, dropped 0" in result.stdout
    refreshes = re.search(r"(\d+) conditioning refreshes \(flows: (\w+)\)", result.stdout)
    assert refreshes and int(refreshes[1]) >= 3, result.stdout  # 8 batches, a refresh every second one
    assert refreshes[2] == "torch"
    assert "refresh skipped" not in result.stderr
    # The worker said so before loading its models: no flow process was started (nor flow rings made).
    assert list((tmp_path / "rt" / "logs").glob("*/gpu.log")) and not list((tmp_path / "rt" / "logs").glob("*/flow.log"))
    assert decode_video(out)[0].shape == (FRAMES, SIZE, SIZE, 3)
