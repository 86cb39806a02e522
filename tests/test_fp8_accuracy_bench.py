"""benchmarks/fp8_accuracy.py on the tiny profile (its layers made eligible): the record says how far FP8 moved."""

from __future__ import annotations

import json

from benchmarks.fp8_accuracy import main
from services.gpu import fp8


def test_fp8_accuracy_records_similarity_and_speed(tmp_path, bikes_path, capsys, monkeypatch):
    monkeypatch.setattr(fp8, "MIN_FEATURES", fp8.MIN_FEATURES)  # the script sets it from --min-features
    assert main(["--profile", "synthetic-tiny", "--clip", bikes_path, "--frames", "6", "--batch", "2",
                 "--min-features", "16", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("fp8_accuracy_synthetic-tiny_cpu_B2_*.json")
    record = json.loads(path.read_text())
    assert record["fp8_layers"] > 0 and record["parts"] == ["text_encoder", "unet"] and record["frames"] == 6
    assert 0.99 < record["latent_cosine"]["min"] < 1.0  # close, and not the same arithmetic
    assert record["frame_psnr_db"]["mean"] > 20 and not record["frames_identical"]
    assert record["fps"]["reference"] > 0 and record["fps"]["fp8"] > 0 and record["reference_dtype"] == "float32"
    assert "layers) against float32" in capsys.readouterr().out
