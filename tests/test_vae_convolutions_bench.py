"""benchmarks/vae_convolutions.py: the shapes it counts, the stages it times are the engine's, its comparison, its refusal."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.vae_convolutions import compare, conv_shapes, main, stage_functions


def test_shapes_cover_every_convolution_and_its_flops():
    from diffusers import AutoencoderTiny

    from services.gpu.profiles import VAE_FULL

    vae = AutoencoderTiny(**VAE_FULL).eval()
    shapes = conv_shapes(vae, batch=16, size=128)
    # TAESDXL: 35 convolutions in the encoder, 35 in the decoder.
    assert sum(s["count"] for s in shapes) == 70
    full = {(s["in"], s["out"], s["stride"], s["height"]): s for s in shapes}
    # The thin ends: RGB in at full resolution, RGB out at full resolution; 4 latent channels at 1/8.
    assert full[(3, 64, 1, 128)]["count"] == 1 and full[(64, 3, 1, 128)]["count"] == 1
    assert full[(64, 4, 1, 16)]["count"] == 1 and full[(4, 64, 1, 16)]["count"] == 1
    # Three full-resolution 64-channel convolutions in the encoder's first block, four in the decoder's last stage.
    assert full[(64, 64, 1, 128)]["count"] == 7
    # 263.7 GFLOP per 512² frame (benchmarks/flop_count.py's VAE encode + decode), scaled by area.
    assert sum(s["gflop_per_frame"] for s in shapes) == pytest.approx(263.675 / 16, rel=1e-4)


def test_the_timed_stages_are_the_engines_own(tiny_bundle):
    from services.gpu.engine import EngineConfig, StreamEngine

    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    encode, decode = stage_functions(tiny_bundle.vae)
    with StreamEngine(EngineConfig(size=64, batch=2, hooks="none"), tiny_bundle) as engine, torch.no_grad():
        latents = engine._vae_encode_fn(frames)
        assert torch.equal(encode(frames), latents)
        image, out = decode(latents)
        ref_image, ref_out = engine.denoiser.decode(latents)
    assert torch.equal(image, ref_image) and torch.equal(out, ref_out)
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8


def test_compare_reports_what_moved():
    latents = torch.randn(2, 4, 8, 8)
    frames = torch.randint(0, 250, (2, 64, 64, 3), dtype=torch.uint8)
    same = {"vae_encode": [latents], "decode": [None, frames]}
    exact = compare(same, same)
    assert exact["latent_cosine"] == pytest.approx(1.0) and exact["latent_max_abs"] == 0
    assert exact["frame_max_grey_levels"] == 0 and exact["frame_mean_grey_levels"] == 0
    moved = frames.clone()
    moved[0, 0, 0, 0] += 3
    other = compare({"vae_encode": [latents + 0.01], "decode": [None, moved]}, same)
    assert other["latent_max_abs"] == pytest.approx(0.01, abs=1e-6)
    assert other["frame_max_grey_levels"] == 3
    assert other["frame_mean_grey_levels"] == pytest.approx(3 / frames.numel())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_each_shape_and_mode_is_timed_and_compared(tmp_path):
    assert main(["--batch", "2", "--size", "64", "--modes", "eager", "compiled", "--repeats", "3", "--trace", "1",
                 "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("vae_convolutions_*_B2_S64_*.json")
    record = json.loads(path.read_text())
    assert sum(s["count"] for s in record["shapes"]) == 70
    assert all(s["heuristic_ms"] > 0 and s["benchmarked_tflops"] > 0 for s in record["shapes"])
    eager, compiled = record["modes"]
    assert eager["reference"] and set(eager["stages"]) == {"vae_encode", "decode"}
    # Compiled bf16 differs from eager only in the order of its sums.
    assert compiled["against_eager"]["latent_cosine"] > 0.999
    assert compiled["against_eager"]["frame_max_grey_levels"] <= 2
