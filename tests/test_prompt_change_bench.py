"""benchmarks/prompt_change.py: a live prompt change on a running engine (CPU, toy size, uncompiled), and its checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.prompt_change import parse_args
from tests.support.service import REPO


def test_prompt_change_records_each_mode(tmp_path, bikes_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "benchmarks/prompt_change.py", "--profile", "synthetic-tiny", "--batch", "2", "--frames", "10",
           "--clip", bikes_path, "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("prompt_change_synthetic-tiny_*_B2_S64_*.json")
    record = json.loads(path.read_text())
    assert record["card"].startswith("CPU") and record["compile"] == "none" and set(record["modes"]) == {"dynamic", "static"}
    for mode, expected_unet in (("dynamic", {"short": 104, "long": 136}), ("static", {"short": 128, "long": 256})):
        row = record["modes"][mode]
        prompts = record["prompts"]
        assert {k: row["unet_tokens"][prompts[k]] for k in prompts} == expected_unet, mode
        assert row["steady"]["frames"] == 4 and row["steady"]["fps"] > 0  # 5 batches of 2, the first 3 untimed
        assert row["idle_batch_s"] > 0 and row["change_batch_s"] > 0 and row["change_back_batch_s"] > 0
        assert row["graphs_traced_on_change"] == 0  # nothing is compiled on the CPU
        assert row["long_prompt_fps"] > 0


def test_prompt_change_refuses_an_unknown_mode(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--modes", "dynamic,ragged"])
    assert "unknown mode" in capsys.readouterr().err
