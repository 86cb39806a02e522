"""benchmarks/encoder_cost.py on a few small frames: both kinds encoded, the record written with the host."""

from __future__ import annotations

import json

from benchmarks.encoder_cost import main


def test_encoder_cost_records_natural_and_noise(tmp_path, bikes_path, capsys):
    assert main(["--clip", bikes_path, "--frames", "6", "--size", "128", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("encoder_cost_S128_*.json")
    record = json.loads(path.read_text())
    for kind in ("natural", "noise"):
        assert record[kind]["frames"] == 6 and record[kind]["fps"] > 0
    # Noise carries far more bits than a natural clip at the same quality setting: the point of the benchmark.
    assert record["noise"]["bytes_per_frame"] > 3 * record["natural"]["bytes_per_frame"]
    assert set(record["conversion_ms_per_frame"]) == {"swscale_bt709", "egress"}
    assert all(ms > 0 for ms in record["conversion_ms_per_frame"].values())
    assert record["cpu_cores"] >= 1 and record["settings"]["preset"] == "superfast"
    assert "noise" in capsys.readouterr().out
