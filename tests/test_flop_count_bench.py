"""benchmarks/flop_count.py on the tiny profile: stage FLOPs add up, and scale as the architecture says they must."""

from __future__ import annotations

import json

import pytest

from benchmarks.flop_count import main


@pytest.fixture(scope="module")
def records(tmp_path_factory, bikes_path):
    out = tmp_path_factory.mktemp("flops")
    found = {}
    for size in (64, 128):
        assert main(["--profile", "synthetic-tiny", "--clip", bikes_path, "--size", str(size), "--out", str(out / str(size))]) == 0
        [path] = (out / str(size)).glob(f"flop_count_synthetic-tiny_S{size}_*.json")
        found[size] = json.loads(path.read_text())
    return found


def test_stages_add_up_to_the_total_and_the_unet_families_to_the_unet(records):
    record = records[64]
    stages = record["per_frame_gflop"]
    assert sum(stages.values()) == pytest.approx(record["total_gflop_per_frame"])
    assert all(stages[k] > 0 for k in ("vae_encode", "text_encoder_vision", "text_encoder_language", "unet", "vae_decode",
                                       "refresh"))
    assert sum(record["unet_by_family_gflop"].values()) == pytest.approx(stages["unet"])
    assert record["unet_by_family_gflop"]["attention"] > 0  # the math kernel's products are counted
    assert record["once_per_process_gflop"]["system_prompt_prefix"] > 0
    assert record["text_encoder_suffix_tokens"] % 16 == 0 and record["random_weights"] is True
    assert record["floor_fps"] == pytest.approx(790e3 / record["total_gflop_per_frame"])


def test_pixel_stages_scale_with_the_frame_and_the_text_encoder_does_not(records):
    small, large = records[64]["per_frame_gflop"], records[128]["per_frame_gflop"]
    # The VAE's convolutions cover every pixel: twice the side, four times the work.
    assert large["vae_encode"] == pytest.approx(4 * small["vae_encode"])
    assert large["vae_decode"] == pytest.approx(4 * small["vae_decode"])
    # The encoder sees every frame resized to its own 256², so its work does not depend on the frame size.
    assert large["text_encoder_vision"] == pytest.approx(small["text_encoder_vision"])
    assert large["text_encoder_language"] == pytest.approx(small["text_encoder_language"])
    assert large["unet"] > 3 * small["unet"]
