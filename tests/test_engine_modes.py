"""Engine options and errors: encoder modes, live prompt changes, bad frames."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.gpu.engine import EngineConfig, EngineError, StreamEngine
from tests.conftest import real_frames


def _engine(bundle, **kw):
    return StreamEngine(EngineConfig(size=64, batch=4, hooks="none", **kw), bundle)


def test_batch_one_encodes_one_frame_per_stream_and_batch(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 8)
    with _engine(tiny_bundle, te_mode="batch_one") as engine:
        engine.open_stream("s", "oil painting")
        for n in range(2):
            out = engine.submit(frames[4 * n : 4 * n + 4], "s").result()
        assert engine.counters["te_rows"] == 2  # one (padded) encoder row per batch
        assert out.frames.shape == (4, 64, 64, 3)


def test_refresh_every_reuses_the_encoding_across_batches(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 12)
    with _engine(tiny_bundle, te_mode="refresh_every", te_refresh=2) as engine:
        engine.open_stream("s", "oil painting")
        for n in range(3):
            engine.submit(frames[4 * n : 4 * n + 4], "s").result()
        assert engine.counters["te_cache_hits"] == 1  # batch 2 reuses batch 1's; batch 3 re-encodes
        assert engine.counters["te_rows"] == 2


def test_per_frame_mode_is_exact_and_encodes_every_frame(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 4)
    with _engine(tiny_bundle) as engine:
        engine.open_stream("s", "oil painting")
        engine.submit(frames, "s").result()
        assert engine.counters["te_rows"] == 4 and engine.counters["te_cache_hits"] == 0


def test_each_batch_after_the_first_says_how_long_the_main_path_stood_idle(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 4)
    with _engine(tiny_bundle) as engine:
        engine.open_stream("s", "oil painting")
        first = engine.submit(frames, "s").result().timings
        time.sleep(0.2)  # nothing to do: the next batch's gap includes this wait
        second = engine.submit(frames, "s").result().timings
    assert "main_gap_ms" not in first  # no previous batch to count from
    # On the CPU the stages run in turn: the gap is the pause plus this batch's own side path.
    assert second["main_gap_ms"] >= 200 + second["side_ms"] * 0.99
    assert 200 <= second["side_lag_ms"] <= second["main_gap_ms"]
    assert second["side_wait_ms"] == pytest.approx(second["main_gap_ms"], abs=1.0)


def test_prompt_change_applies_at_the_next_batch(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 4)
    with _engine(tiny_bundle, keep_latents=True) as engine:
        engine.open_stream("s", "oil painting")
        before = engine.submit(frames[:2], "s").result()
        engine.set_prompt("s", "pencil sketch")
        after = engine.submit(frames[2:], "s").result()
    assert before.prompts == ["oil painting"] * 2
    assert after.prompts == ["pencil sketch"] * 2
    with _engine(tiny_bundle, keep_latents=True) as engine:  # the same frames under the old prompt differ
        st = engine.open_stream("s", "oil painting")
        st.next_index = 2
        unchanged = engine.submit(frames[2:], "s").result()
    assert (unchanged.latents - after.latents).abs().max() > 1e-3


def test_bad_requests_are_named(tiny_bundle):
    with _engine(tiny_bundle) as engine:
        engine.open_stream("s", "oil painting")
        with pytest.raises(EngineError, match=r"\(b, 64, 64, 3\)"):
            engine.submit(np.zeros((2, 32, 32, 3), np.uint8), "s")
        with pytest.raises(EngineError, match="uint8"):
            engine.submit(np.zeros((2, 64, 64, 3), np.float32), "s")
        with pytest.raises(EngineError, match="1..4 frames, got 5"):
            engine.submit(np.zeros((5, 64, 64, 3), np.uint8), "s")
        with pytest.raises(EngineError, match="unknown stream 'nope'"):
            engine.submit(np.zeros((1, 64, 64, 3), np.uint8), "nope")
        with pytest.raises(EngineError, match="already open"):
            engine.open_stream("s", "again")
    with pytest.raises(EngineError, match="engine is closed"):
        engine.submit(np.zeros((1, 64, 64, 3), np.uint8), "s")


@pytest.mark.parametrize("field,value,message", [
    ("size", 500, "multiple of 64"), ("batch", 0, "out of range"), ("steps", 9, "out of range"),
    ("te_mode", "sometimes", "te_mode"), ("compile", "fast", "compile"),
    ("compile_parts", ("unet", "scheduler"), r"compile_parts \['scheduler'\] unknown"),
    ("channels_last", ("text_encoder",), r"channels_last \['text_encoder'\] unknown"),
    ("autotune", ("vae",), r"autotune \['vae'\] unknown"),
])
def test_bad_config_is_named(tiny_bundle, field, value, message):
    with pytest.raises(EngineError, match=message):
        StreamEngine(EngineConfig(**{field: value}), tiny_bundle)


@pytest.mark.parametrize("config,message", [
    (dict(autotune=("unet",), compile="none"), "needs compile 'default'"),
    (dict(autotune=("unet",), compile="max-autotune-no-cudagraphs"), "needs compile 'default'"),
    (dict(autotune=("unet", "text_encoder"), compile_parts=("unet", "vae")), r"autotune \['text_encoder'\] not in compile_parts"),
    (dict(fused_qkv=True, fp8=("text_encoder",)), "fused_qkv stacks the text encoder's bf16 q/k/v weights"),
])
def test_settings_that_cannot_go_together_are_refused(tiny_bundle, config, message):
    with pytest.raises(EngineError, match=message):
        StreamEngine(EngineConfig(**config), tiny_bundle)


def test_stacked_qkv_gives_the_engine_the_same_frames(bikes_path):
    """fused_qkv on a bundle of its own (it re-points the text encoder's weights in place): the same latents."""
    import torch

    from services.gpu.profiles import load_profile

    frames = real_frames(bikes_path, 64, 4)
    outs = []
    for fused in (False, True):
        bundle = load_profile("synthetic-tiny", "cpu", "float32")
        config = EngineConfig(size=64, batch=4, hooks="none", compile="none", fused_qkv=fused, keep_latents=True)
        with StreamEngine(config, bundle) as engine:
            engine.open_stream("s", "make it an oil painting", seed=2)
            outs.append(engine.submit(frames, "s").result())
    torch.testing.assert_close(outs[1].latents, outs[0].latents, atol=1e-5, rtol=1e-5)
