"""The token axis of the compiled text encoder and U-Net: a live prompt change must not compile again."""

from __future__ import annotations

import numpy as np
import pytest

from services.gpu.engine import EngineConfig, EngineError, StreamEngine
from services.gpu.token_shapes import TokenGraphLru, TokenShapes
from services.gpu.worker import engine_config
from shared.settings import load_settings
from tests.conftest import real_frames

SHORT = "make it an oil painting"
LONG = ("make it look like a Van Gogh painting of a starry night, with swirling brush strokes, thick paint, deep blues "
        "and bright yellow stars over the whole scene")  # crosses the text encoder's and the U-Net's static buckets


@pytest.mark.parametrize(("mode", "encoder_tokens", "unet_tokens"), [
    ("dynamic", {104: 104, 105: 112, 112: 112}, {104: 104, 112: 112, 136: 136}),
    ("static", {104: 112, 105: 112, 112: 112}, {104: 128, 112: 128, 136: 256}),
])
def test_the_padding_of_each_mode(mode, encoder_tokens, unet_tokens):
    shapes = TokenShapes(mode)
    assert {n: shapes.encoder_length(n) for n in encoder_tokens} == encoder_tokens
    assert {n: shapes.unet_length(n) for n in unet_tokens} == unet_tokens


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(EngineError, match="token_shapes 'ragged'"):
        EngineConfig(token_shapes="ragged").validate()


def test_the_setting_reaches_the_engine():
    assert engine_config(load_settings(None, env={}), cuda=True).token_shapes == "dynamic"
    settings = load_settings(None, env={}, overrides={"model.token_shapes": "static"})
    assert engine_config(settings, cuda=True).token_shapes == "static"


def test_the_least_recently_used_lengths_go_per_stage():
    lru = TokenGraphLru(2)
    assert [lru.use("denoise", n) for n in (8, 16)] == [[], []]
    assert lru.use("text_encode", 8) == []  # each stage counts its own lengths
    assert lru.use("denoise", 8) == []  # used again: now the most recent
    assert lru.use("denoise", 24) == [16]
    assert lru.lengths("denoise") == [8, 24] and lru.lengths("text_encode") == [8]
    with pytest.raises(ValueError, match="limit 0"):
        TokenGraphLru(0)


def test_the_graph_limit_setting_reaches_the_engine():
    assert engine_config(load_settings(None, env={}), cuda=True).token_graphs == 32
    settings = load_settings(None, env={}, overrides={"model.token_graphs": 4})
    assert engine_config(settings, cuda=True).token_graphs == 4
    with pytest.raises(EngineError, match="token_graphs 0"):
        EngineConfig(token_graphs=0).validate()


def test_the_engine_releases_the_graphs_of_the_least_recently_used_length(tiny_bundle, monkeypatch):
    """CUDA graphs stood in for by a recording class (the engine's capture path runs only on CUDA)."""
    import torch

    import services.gpu.engine as engine_module

    captured = []

    class FakeCapture:
        def __init__(self, fn, example_inputs, pool=None):
            self.fn, self.pool = fn, pool
            captured.append(example_inputs[0].shape)

        def __call__(self, *inputs):
            return self.fn(*inputs)

    monkeypatch.setattr(engine_module, "CapturedCall", FakeCapture)
    with StreamEngine(EngineConfig(size=64, batch=2, hooks="none", token_graphs=2), tiny_bundle) as engine:

        def call(stage, bucket, tokens):
            return engine._call((stage, bucket, tokens), lambda x: x + 1, torch.zeros(bucket, tokens))

        def denoise_keys():
            return sorted(k for k in engine.captured() if k[0] == "denoise")

        engine.cuda = True  # only _call reads it here; set back before the engine closes
        try:
            for bucket, tokens in ((2, 8), (1, 8), (2, 16)):
                call("denoise", bucket, tokens)
            call("text_encode", 2, 8)
            engine._call(("decode", 2), lambda x: x, torch.zeros(2, 3))
            call("denoise", 2, 24)  # a third length: both buckets of the least recent (8) go, other stages keep theirs
            assert denoise_keys() == [("denoise", 2, 16), ("denoise", 2, 24)]
            assert ("text_encode", 2, 8) in engine.captured() and ("decode", 2) in engine.captured()
            before = len(captured)
            call("denoise", 2, 16)  # kept: replayed, not captured again
            assert len(captured) == before
            call("denoise", 2, 8)  # released earlier: captured again, and now 24 is the least recent
            assert len(captured) == before + 1
            assert denoise_keys() == [("denoise", 2, 8), ("denoise", 2, 16)]
        finally:
            engine.cuda = False


def run_with_prompt_change(tiny_bundle, frames, token_shapes: str, **config) -> tuple[np.ndarray, list[int]]:
    """Two batches with a short prompt, two with a long one: the output frames and each stage's token length."""
    cfg = EngineConfig(size=64, batch=2, hooks="down_blocks", cond_refresh=2, token_shapes=token_shapes, **config)
    lengths = []
    handle = tiny_bundle.unet.register_forward_pre_hook(
        lambda _m, _args, kwargs: lengths.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    try:
        with StreamEngine(cfg, tiny_bundle) as engine:
            engine.open_stream("s", SHORT, seed=3)
            outs = []
            for i in range(0, 8, 2):
                if i == 4:
                    engine.set_prompt("s", LONG)
                outs.append(engine.submit(frames[i : i + 2], "s").result().frames)
    finally:
        handle.remove()
    return np.concatenate(outs), lengths


def test_dynamic_and_static_token_shapes_give_the_same_frames(tiny_bundle, bikes_path):
    """Less padding (8-token multiples) changes no output: padded tokens are masked in both models."""
    frames = real_frames(bikes_path, 64, 8)
    dynamic, dynamic_lengths = run_with_prompt_change(tiny_bundle, frames, "dynamic")
    static, static_lengths = run_with_prompt_change(tiny_bundle, frames, "static")
    assert dynamic_lengths == [104, 104, 136, 136] and static_lengths == [128, 128, 256, 256]
    diff = np.abs(dynamic.astype(int) - static.astype(int))
    assert diff.max() <= 1, f"frames differ by up to {diff.max()} grey levels"


@pytest.mark.parametrize(("mode", "new_graphs"), [("dynamic", False), ("static", True)])
def test_a_prompt_change_compiles_again_only_with_static_token_shapes(tiny_bundle, bikes_path, monkeypatch, mode, new_graphs):
    """The engine's compile branch (CUDA only) walked on the CPU with torch.compile tracing through a recording
    backend: with the token axis dynamic, the longer prompt runs the text encoder's and the U-Net's graphs traced
    for the short one; static shapes trace both again."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs: list[bool] = []  # per traced graph: whether a size in it is symbolic
    real_compile = torch.compile

    def recording(gm, example_inputs):
        graphs.append(any(isinstance(x, torch.SymInt) for x in example_inputs))
        return gm.forward

    def compile_recording(fn, mode=None, **kwargs):  # the engine's mode is for inductor; trace only
        return real_compile(fn, backend=recording, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_recording)
    monkeypatch.setattr(StreamEngine, "compiled", property(lambda self: True))
    frames = real_frames(bikes_path, 64, 8)
    cfg = EngineConfig(size=64, batch=2, hooks="none", token_shapes=mode, compile="default",
                       compile_parts=("unet", "text_encoder"))
    with StreamEngine(cfg, tiny_bundle) as engine:
        engine.open_stream("s", SHORT, seed=3)
        engine.submit(frames[:2], "s").result()
        before = len(graphs)
        engine.set_prompt("s", LONG)
        out = engine.submit(frames[4:6], "s").result()
    torch._dynamo.reset()
    assert before > 0 and out.frames.shape == (2, 64, 64, 3)
    assert (len(graphs) > before) == new_graphs, f"{len(graphs) - before} graphs traced after the prompt change"
    if mode == "dynamic":
        assert any(graphs[:before]), "no graph took a symbolic token count"
