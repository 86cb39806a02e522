"""`stylecast bench` runs on the CPU and records what it measured."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from services.cli import app


def test_bench_on_the_cpu_writes_a_record(tmp_path, bikes_path):
    result = CliRunner().invoke(app, [
        "bench", "--profile", "synthetic-tiny", "--device", "cpu", "--clip", bikes_path, "--size", "64", "--batch", "4",
        "--frames", "24", "--warmup-batches", "2", "--naive-frames", "2", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output
    files = list(tmp_path.glob("bench_synthetic-tiny_*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["random_weights"] is True
    assert record["config"]["batch"] == 4
    engine = record["engine"]
    assert engine["frames"] == 16 and engine["batches"] == 4  # 6 batches, 2 of warm-up
    assert engine["fps"] > 0 and engine["ratio_to_naive_steps4"] > 0 and engine["ratio_to_naive_steps1"] > 0
    assert set(record["naive"]) == {"steps4", "steps1"}
    for key in ("text_encoder_ms_per_frame", "unet_ms_per_frame", "vae_encode_ms_per_frame", "decode_ms_per_frame"):
        assert engine[key] > 0
    assert record["card"].startswith("CPU") and record["torch"]
    assert record["cpu"] and record["cpu_cores"] >= 1  # host-bound figures move with the host: it is named
    # "auto" on an uncompiled (CPU) U-Net is torch's own GroupNorm, and the record says what auto became.
    assert record["config"]["group_norm"] == "auto" and engine["group_norm"] == "native"


def test_bench_takes_the_group_norm_and_cross_attention_choices(tmp_path, bikes_path, monkeypatch):
    result = CliRunner().invoke(app, [
        "bench", "--profile", "synthetic-tiny", "--device", "cpu", "--clip", bikes_path, "--size", "64", "--batch", "2",
        "--frames", "6", "--warmup-batches", "1", "--naive-frames", "2", "--group-norm", "two_pass",
        "--cross-attention", "key_channel", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    record = json.loads(next(tmp_path.glob("bench_*.json")).read_text())
    assert record["engine"]["group_norm"] == "two_pass" and record["config"]["cross_attention"] == "key_channel"
    import services.gpu.bench

    started = []
    monkeypatch.setattr(services.gpu.bench, "bench", lambda *a, **k: started.append(a))
    bad = CliRunner().invoke(app, ["bench", "--profile", "synthetic-tiny", "--device", "cpu", "--clip", bikes_path,
                                   "--group-norm", "welford", "--out", ""])
    assert bad.exit_code == 2 and "group_norm 'welford'" in bad.output
    bad = CliRunner().invoke(app, ["bench", "--profile", "synthetic-tiny", "--device", "cpu", "--clip", bikes_path,
                                   "--cross-attention", "sparse", "--out", ""])
    assert bad.exit_code == 2 and "cross_attention 'sparse'" in bad.output
    assert not started  # refused before loading models and timing the naive pipeline


def test_bench_names_a_bad_profile(tmp_path, bikes_path):
    result = CliRunner().invoke(app, ["bench", "--profile", str(tmp_path / "nope"), "--device", "cpu", "--clip", bikes_path, "--out", ""])
    assert result.exit_code == 2
    assert "neither a synthetic profile" in result.output
