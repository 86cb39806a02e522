"""benchmarks/live_cameras.py runs end to end (CPU, toy size) and records each camera's latency and drops."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.service import REPO, service_env


def test_live_cameras_benchmark_records_latency_and_drops(tmp_path, bikes_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "benchmarks/live_cameras.py", "--profile", "synthetic-tiny", "--clip", str(bikes_path),
           "--size", "64", "--batch", "4", "--buckets", "1,2", "--cameras", "1", "--seconds", "2", "--fps", "10",
           "--naive-frames", "0", "--set", "engine.cond_refresh=1", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, env=service_env(tmp_path / "rt"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("live_cameras_synthetic-tiny_*_1cams_B4_*.json")
    record = json.loads(path.read_text())
    assert record["note"].startswith("random weights")
    assert record["card"].startswith("CPU") and record["torch"]  # named without the naive run
    (run,) = record["runs"]
    assert run["cameras"] == 1 and run["frames_in"] == 20
    assert run["frames_out"] + run["dropped"] == 20  # every frame written or counted
    cam = run["streams"]["cam0"]
    assert cam["state"] == "stopped"
    assert 0 < cam["latency_ms"]["p50"] <= cam["latency_ms"]["p95"] <= cam["latency_ms"]["max"]
    gpu = run["gpu"]["gpu"]
    assert sum(row[0] for row in gpu["series"]["rows"]) == run["frames_out"] and len(gpu["series"]["rows"]) == gpu["batches"]
    # --set reached the service: every batch after the first rebuilds the conditioning
    assert record["config"]["overrides"] == {"engine.cond_refresh": 1}
    assert gpu["refreshes"] + gpu["refresh_failures"] == gpu["batches"] - 1
