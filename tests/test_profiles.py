"""Model profiles: real architectures at the documented sizes, and the checkpoint loader's round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.gpu.engine import EngineConfig, StreamEngine
from services.gpu.profiles import (
    UNET_FULL,
    ProfileError,
    _qwen_config,
    load_checkpoint,
    load_profile,
    resolve_device,
    save_checkpoint,
)
from tests.conftest import real_frames

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "weights"


def test_synthetic_full_has_the_real_parameter_counts():
    from diffusers import DreamLiteUNetModel
    from transformers import Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        unet = DreamLiteUNetModel(**UNET_FULL)
        encoder = Qwen3VLForConditionalGeneration(_qwen_config(tiny=False))
    assert sum(p.numel() for p in unet.parameters()) == 389_968_388
    assert sum(p.numel() for p in encoder.parameters()) == 2_127_532_032  # tied embeddings counted once


def test_synthetic_profiles_say_they_are_random(tiny_bundle):
    assert tiny_bundle.random_weights
    assert "RANDOM WEIGHTS" in tiny_bundle.describe()


def test_synthetic_weights_are_reproducible():
    a = load_profile("synthetic-tiny", "cpu", "float32", seed=4)
    b = load_profile("synthetic-tiny", "cpu", "float32", seed=4)
    for (name, pa), (_, pb) in zip(a.unet.named_parameters(), b.unet.named_parameters()):
        assert torch.equal(pa, pb), name


def _style(bundle, frames):
    with StreamEngine(EngineConfig(size=64, batch=2, hooks="none", keep_latents=True), bundle) as engine:
        engine.open_stream("s", "oil painting", seed=1)
        return engine.submit(frames, "s").result()


def test_checkpoint_round_trip_gives_the_same_outputs(tiny_bundle, tmp_path, bikes_path):
    root = save_checkpoint(tiny_bundle, tmp_path / "ckpt")
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "DreamLiteMobilePipeline"
    assert index["unet"] == ["diffusers", "DreamLiteUNetModel"]
    loaded = load_checkpoint(root, torch.device("cpu"), torch.float32)
    assert not loaded.random_weights
    frames = real_frames(bikes_path, 64, 2)
    expected, got = _style(tiny_bundle, frames), _style(loaded, frames)
    assert np.array_equal(expected.frames, got.frames)
    torch.testing.assert_close(got.latents, expected.latents, atol=0, rtol=0)
    assert loaded.vision == tiny_bundle.vision


def test_checkpoint_errors_name_the_problem(tiny_bundle, tmp_path):
    cpu = torch.device("cpu")
    with pytest.raises(ProfileError, match="neither a synthetic profile"):
        load_checkpoint(tmp_path / "nowhere", cpu, torch.float32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProfileError, match="model_index.json is missing"):
        load_checkpoint(empty, cpu, torch.float32)
    (empty / "model_index.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_checkpoint(empty, cpu, torch.float32)
    (empty / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "DreamLiteUNetModel"]}))
    with pytest.raises(ProfileError, match=r"lacks component folder\(s\) \['unet', 'vae'"):
        load_checkpoint(empty, cpu, torch.float32)


def test_unknown_dtype_and_missing_cuda_are_reported():
    from services.gpu.profiles import resolve_dtype

    with pytest.raises(ProfileError, match="float16"):
        resolve_dtype("float16", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ProfileError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared/data/weights (TAESDXL) is not present")
def test_taesdxl_weights_load_and_round_trip_a_real_frame(bikes_path):
    from services.gpu.taesd import load_taesdxl

    vae = load_taesdxl(SHARED_WEIGHTS, torch.device("cpu"), torch.float32)
    frame = torch.from_numpy(real_frames(bikes_path, 256, 1)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        decoded = vae.decode(vae.encode(frame).latents).sample.clamp(-1, 1)
    mse = ((decoded - frame) / 2).pow(2).mean().item()
    psnr = 10 * np.log10(1 / mse)
    assert psnr > 20, f"TAESDXL round trip PSNR {psnr:.1f} dB"


def test_taesdxl_folder_without_weights_is_named(tmp_path):
    from services.gpu.taesd import TaesdError, load_taesdxl

    with pytest.raises(TaesdError, match="taesdxl_encoder.safetensors"):
        load_taesdxl(tmp_path, torch.device("cpu"), torch.float32)
