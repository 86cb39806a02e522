"""FP8 linears (opt-in): close to the layer they replace, hooks kept, undone on close, refused where unsupported."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from services.gpu import fp8
from services.gpu.engine import EngineConfig, EngineError
from services.gpu.fp8 import Fp8Linear, quantise_rows, restore_linears, use_fp8
from tests.conftest import real_frames
from tests.support.fp8_runs import fp8_against_reference


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def test_rows_are_scaled_to_the_e4m3_range_and_back():
    x = torch.randn(5, 64) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 7.0]).view(-1, 1)
    values, scale = quantise_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (5, 1)
    assert torch.allclose(values.float().abs().amax(dim=1), torch.full((5,), fp8.E4M3_MAX))  # each row's peak
    back = values.float() * scale
    assert ((back - x).abs() <= x.abs().amax(dim=1, keepdim=True) / 16).all()  # 3 mantissa bits: ≤ 1/16 of the peak


def test_a_converted_layer_stays_close_keeps_its_hooks_and_can_be_undone(monkeypatch):
    monkeypatch.setattr(fp8, "MIN_FEATURES", 16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24), nn.Linear(24, 16))  # 24: not a multiple of 16
    x = torch.randn(3, 7, 64)
    want = model(x)
    seen = []
    model[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    layer = model[0]
    assert use_fp8(model) == ["0"]
    assert model[0] is layer and type(layer) is Fp8Linear and type(model[2]) is nn.Linear
    got = model(x)
    assert got.shape == want.shape and seen == [(3, 7, 64)]
    assert cosine(got, want) > 0.995
    assert not torch.equal(got, want)  # it is an approximation, not the same arithmetic
    assert restore_linears(model) == 1 and type(model[0]) is nn.Linear
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_small_layers_stay_as_they_are():
    model = nn.Sequential(nn.Linear(64, 64))  # below MIN_FEATURES
    assert use_fp8(model) == [] and type(model[0]) is nn.Linear


def test_engine_with_fp8_stays_close_and_gives_its_modules_back(tiny_bundle, bikes_path, monkeypatch):
    monkeypatch.setattr(fp8, "MIN_FEATURES", 16)  # the tiny profile's layers are 32–128 wide
    similarity, layers = fp8_against_reference(tiny_bundle, real_frames(bikes_path, 64, 4), batch=2, compile_mode="none")
    assert layers[0] == 0 and layers[1] > 0
    assert 0.98 < similarity < 1.0, similarity
    converted = [m for m in (*tiny_bundle.unet.modules(), *tiny_bundle.text_encoder.modules()) if type(m) is Fp8Linear]
    assert not converted  # restored on close: the bundle is shared


def test_unknown_parts_and_old_gpus_are_refused(monkeypatch):
    with pytest.raises(EngineError, match=r"fp8 \['vae'\] unknown"):
        EngineConfig(fp8=("vae",)).validate()
    assert fp8.fp8_problem(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    problem = fp8.fp8_problem(torch.device("cuda:0"))
    assert problem and "8.9 or newer" in problem and "8.0" in problem


def test_output_dtype_follows_the_input():
    layer = nn.Linear(512, 512).to(torch.bfloat16)
    use_fp8(layer)
    with torch.no_grad():
        out = layer(torch.randn(4, 512, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (4, 512) and torch.isfinite(out).all()
