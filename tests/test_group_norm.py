"""The two-pass GroupNorm computes torch's GroupNorm; the engine uses it only where asked (or compiled) and gives it back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from services.gpu import group_norm as group_norm_module
from services.gpu.engine import EngineConfig, EngineError, StreamEngine
from services.gpu.group_norm import (
    TwoPassGroupNorm,
    resolve_group_norm,
    restore_group_norms,
    two_pass_group_norm,
    use_two_pass_group_norm,
)
from tests.conftest import real_frames
from tests.support.graph_recorder import GraphRecorder


def _two_pass(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """The per-channel-sums computation with `norm`'s parameters (what inductor traces)."""
    return two_pass_group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def _pair(channels: int, groups: int = 8, affine: bool = True, dtype=torch.float32):
    torch.manual_seed(0)
    native = nn.GroupNorm(groups, channels, eps=1e-6, affine=affine)
    if affine:
        nn.init.normal_(native.weight)
        nn.init.normal_(native.bias)
    twin = nn.GroupNorm(groups, channels, eps=1e-6, affine=affine)
    twin.load_state_dict(native.state_dict())
    use_two_pass_group_norm(twin)
    return native.to(dtype), twin.to(dtype)


@pytest.mark.parametrize("shape, channels_last", [((2, 64, 8, 16), False), ((2, 64, 8, 16), True), ((3, 32, 5, 7), True),
                                                  ((2, 64, 10), False)])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_torch_group_norm_in_float32(shape, channels_last, affine):
    native, twin = _pair(shape[1], affine=affine)
    x = torch.randn(*shape) * 3 + 5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert type(twin) is TwoPassGroupNorm
    torch.testing.assert_close(_two_pass(twin, x), native(x), rtol=1e-5, atol=1e-5)


def test_stays_accurate_when_the_mean_dwarfs_the_spread():
    # Where E[x²] − E[x]² cancels catastrophically in float32 (variance off by ×600 here), centring first does not:
    # against a float64 reference the error is float32 rounding of the mean, no worse than torch's own kernel.
    native, twin = _pair(32, groups=4)
    x = (torch.randn(2, 32, 16, 16, dtype=torch.float64) * 0.01 + 1000).float()
    expected = native.double()(x.double())
    ours, theirs = ((y.double() - expected).abs().max().item() for y in (_two_pass(twin, x), native.float()(x)))
    assert ours < 0.05 and ours <= 1.5 * theirs


def test_matches_in_bfloat16():
    native, twin = _pair(64, dtype=torch.bfloat16)
    x = (torch.randn(2, 64, 8, 8) * 2).bfloat16()
    y = _two_pass(twin, x)
    assert (y.float() - native(x).float()).abs().max() <= 0.0625  # a bf16 step near 8: rounding, not a change
    assert y.dtype is torch.bfloat16


def test_the_module_is_two_pass_only_where_torch_compile_traces_it(monkeypatch):
    native, twin = _pair(64)
    x = torch.randn(2, 64, 8, 8) * 3 + 5
    recorder = GraphRecorder()
    torch.testing.assert_close(torch.compile(twin, backend=recorder, dynamic=False, fullgraph=True)(x), native(x),
                               rtol=1e-5, atol=1e-5)
    assert not any("group_norm" in target for target in recorder.targets)  # sums in the graph, not torch's norm
    assert any("sum" in target for target in recorder.targets)

    def refuse(*args, **kwargs):
        raise AssertionError("the per-channel sums ran eagerly")

    # Eagerly (the buckets `compile_buckets: largest` leaves uncompiled) torch's one-pass kernel runs instead.
    monkeypatch.setattr(group_norm_module, "two_pass_group_norm", refuse)
    assert torch.equal(twin(x), native(x))


def test_use_and_restore_keep_the_same_modules_and_weights(tiny_bundle):
    unet = tiny_bundle.unet
    norms = [m for m in unet.modules() if type(m) is nn.GroupNorm]
    keys = list(unet.state_dict())
    assert norms
    try:
        assert use_two_pass_group_norm(unet) == len(norms)
        assert all(type(m) is TwoPassGroupNorm for m in norms)  # the same objects, hooks and parameters
        assert list(unet.state_dict()) == keys
        assert use_two_pass_group_norm(unet) == 0  # nothing left to change
    finally:
        assert restore_group_norms(unet) == len(norms)
    assert all(type(m) is nn.GroupNorm for m in norms)


@pytest.mark.parametrize("choice, compiled, expected", [("auto", True, "two_pass"), ("auto", False, "native"),
                                                        ("native", True, "native"), ("two_pass", False, "two_pass")])
def test_auto_means_two_pass_only_for_a_compiled_unet(choice, compiled, expected):
    assert resolve_group_norm(choice, compiled) == expected


def test_engine_output_is_the_same_with_either_group_norm(tiny_bundle, bikes_path, monkeypatch):
    """The engine's compile branch on the CPU, the U-Net traced by dynamo and run eagerly: each choice must put its
    own norms in the traced graph and give the same frames."""
    frames = real_frames(bikes_path, 64, 8)
    real_compile = torch.compile
    results, recorders = {}, {}
    monkeypatch.setattr(StreamEngine, "compiled", property(lambda self: True))
    for choice in ("native", "two_pass"):
        recorders[choice] = recorder = GraphRecorder()
        monkeypatch.setattr(torch, "compile", lambda fn, recorder=recorder, **kw: real_compile(
            fn, backend=recorder, dynamic=False, fullgraph=kw.get("fullgraph", False)))
        config = EngineConfig(size=64, batch=4, hooks="down_blocks", keep_latents=True, group_norm=choice,
                              compile_parts=("unet",))
        with StreamEngine(config, tiny_bundle) as engine:
            engine.open_stream("s", "oil painting")
            results[choice] = [engine.submit(frames[i : i + 4], "s").result() for i in (0, 4)]
            assert (engine.group_norms > 0) == (choice == "two_pass")
        assert not any(type(m) is TwoPassGroupNorm for m in tiny_bundle.unet.modules())  # given back on close
    assert any("group_norm" in target for target in recorders["native"].targets)
    assert recorders["two_pass"].targets and not any("group_norm" in target for target in recorders["two_pass"].targets)
    for native, two_pass in zip(results["native"], results["two_pass"]):
        torch.testing.assert_close(two_pass.latents, native.latents, rtol=1e-4, atol=1e-4)
        assert np.abs(two_pass.frames.astype(int) - native.frames.astype(int)).max() <= 1


def test_the_cpu_engine_keeps_torch_group_norm_by_default(tiny_bundle):
    with StreamEngine(EngineConfig(size=64, batch=2, hooks="none"), tiny_bundle) as engine:
        assert engine.group_norm == "native" and engine.group_norms == 0


def test_an_unknown_group_norm_is_refused_by_name(tiny_bundle):
    with pytest.raises(EngineError, match="group_norm 'welford'"):
        StreamEngine(EngineConfig(size=64, batch=2, group_norm="welford"), tiny_bundle)
