"""The U-Net's depthwise convolutions as nine shifted multiply-adds (services/gpu/depthwise.py): the same function,
traced by inductor in place of cuDNN's call, eager calls untouched, given back on close."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from services.gpu.depthwise import TapDepthwiseConv2d, depthwise_taps, is_plain_depthwise, restore_depthwise, use_tap_depthwise
from services.gpu.engine import EngineConfig, EngineError, StreamEngine
from tests.conftest import real_frames
from tests.support.graph_recorder import GraphRecorder


@pytest.mark.parametrize("kernel, padding, bias", [(3, 1, False), (3, 1, True), (5, 2, False), (3, 0, False)])
def test_the_taps_compute_the_depthwise_convolution(kernel, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, kernel, padding=padding, groups=16, bias=bias)
    x = torch.randn(2, 16, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(depthwise_taps(x, conv.weight, conv.bias, conv.padding), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer, plain", [
    (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), True),
    (nn.Conv2d(8, 16, 3, padding=1, groups=8), False),  # a channel multiplier: not one filter per channel
    (nn.Conv2d(8, 8, 3, padding=1), False),  # a full convolution
    (nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), False),
    (nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), False),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), False),
    (nn.Conv2d(8, 8, 3, padding="same", groups=8), False),
])
def test_only_plain_depthwise_convolutions_are_taken(layer, plain):
    assert is_plain_depthwise(layer) is plain


def test_traced_it_is_taps_and_eager_it_is_cudnns_convolution():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        want = conv(x)
        conv.__class__ = TapDepthwiseConv2d
        recorder = GraphRecorder()
        torch._dynamo.reset()
        try:
            traced = torch.compile(conv, backend=recorder, fullgraph=True)(x)
        finally:
            torch._dynamo.reset()
        eager = conv(x)
    assert recorder.targets and not any("conv" in t for t in recorder.targets)
    torch.testing.assert_close(traced, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(eager, want)


def test_the_unets_depthwise_convolutions_swap_and_come_back(tiny_bundle):
    unet = tiny_bundle.unet
    depthwise = [m for m in unet.modules() if is_plain_depthwise(m)]
    keys = list(unet.state_dict())
    assert depthwise and all(name.endswith("depthwise") for name, m in unet.named_modules() if m in depthwise)
    try:
        assert use_tap_depthwise(unet) == len(depthwise)
        assert all(type(m) is TapDepthwiseConv2d for m in depthwise) and list(unet.state_dict()) == keys
        assert use_tap_depthwise(unet) == 0
    finally:
        assert restore_depthwise(unet) == len(depthwise)
    assert all(type(m) is nn.Conv2d for m in depthwise)


def test_the_engine_traces_the_taps_and_gives_the_same_frames(tiny_bundle, bikes_path, monkeypatch):
    """The engine's compile branch on the CPU, the U-Net traced by dynamo and run eagerly with taps, against the
    uncompiled engine (cuDNN's convolutions): every depthwise call leaves the traced graph, the frames stay."""
    frames = real_frames(bikes_path, 64, 4)
    results = {}
    config = EngineConfig(size=64, batch=4, hooks="none", keep_latents=True, compile="none")
    with StreamEngine(config, tiny_bundle) as engine:
        engine.open_stream("s", "oil painting")
        results["cudnn"] = engine.submit(frames, "s").result()
    real_compile = torch.compile
    recorder = GraphRecorder()
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=recorder, dynamic=False,
                                                                        fullgraph=kw.get("fullgraph", False)))
    monkeypatch.setattr(StreamEngine, "compiled", property(lambda self: True))
    torch._dynamo.reset()
    try:
        with StreamEngine(EngineConfig(size=64, batch=4, hooks="none", keep_latents=True, depthwise="taps",
                                       compile_parts=("unet",)), tiny_bundle) as engine:
            assert engine.depthwise_convs > 0
            engine.open_stream("s", "oil painting")
            results["taps"] = engine.submit(frames, "s").result()
    finally:
        torch._dynamo.reset()
    assert not any(type(m) is TapDepthwiseConv2d for m in tiny_bundle.unet.modules())  # given back on close
    convolutions = [m for m in tiny_bundle.unet.modules() if type(m) is nn.Conv2d]
    depthwise = [m for m in convolutions if is_plain_depthwise(m)]
    assert sum("conv2d" in t for t in recorder.targets) == len(convolutions) - len(depthwise)  # each called once
    torch.testing.assert_close(results["taps"].latents, results["cudnn"].latents, rtol=1e-4, atol=1e-4)
    assert np.abs(results["taps"].frames.astype(int) - results["cudnn"].frames.astype(int)).max() <= 1


def test_an_unknown_depthwise_choice_is_refused_by_name(tiny_bundle):
    with pytest.raises(EngineError, match="depthwise 'winograd'"):
        StreamEngine(EngineConfig(size=64, batch=2, depthwise="winograd"), tiny_bundle)
