"""Several streams in one engine: each keeps its own adapter conditioning, previous output and schedule."""

from __future__ import annotations

import torch

from services.gpu.engine import EngineConfig, StreamEngine
from services.gpu.lllite import TemporalLLLite
from tests.conftest import real_frames


def _trained_adapter(bundle, path):
    adapter = TemporalLLLite(bundle.unet, "down_blocks")
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return adapter.save(path)


def test_a_stream_gets_the_same_output_with_or_without_a_neighbour(tiny_bundle, bikes_path, tmp_path):
    weights = _trained_adapter(tiny_bundle, tmp_path / "adapter.safetensors")
    config = EngineConfig(size=64, batch=4, hooks="down_blocks", adapter_weights=str(weights), cond_refresh=2, keep_latents=True)
    a = real_frames(bikes_path, 64, 6, start=0)
    b = real_frames(bikes_path, 64, 6, start=100)
    with StreamEngine(config, tiny_bundle) as engine:
        engine.open_stream("a", "oil painting", seed=5)
        alone = [engine.submit(a[2 * n : 2 * n + 2], "a").result() for n in range(3)]
    with StreamEngine(config, tiny_bundle) as engine:
        engine.open_stream("a", "oil painting", seed=5)
        engine.open_stream("b", "charcoal drawing", seed=9)
        mixed = [engine.submit_mixed([("b", b[2 * n : 2 * n + 2]), ("a", a[2 * n : 2 * n + 2])]).result() for n in range(3)]
        assert engine.streams["a"].refreshes == engine.streams["b"].refreshes == 1  # batch 1 of each stream
        assert engine.streams["a"].cond is not engine.streams["b"].cond
    for n in range(3):
        assert mixed[n].streams == ["b", "b", "a", "a"]
        torch.testing.assert_close(mixed[n].latents[2:], alone[n].latents, atol=1e-4, rtol=1e-4)
    # The adapter really shapes the output after the first refresh (the test above could fail).
    with StreamEngine(EngineConfig(size=64, batch=4, hooks="none", keep_latents=True), tiny_bundle) as engine:
        engine.open_stream("a", "oil painting", seed=5)
        plain = [engine.submit(a[2 * n : 2 * n + 2], "a").result() for n in range(3)]
    assert (plain[0].latents - alone[0].latents).abs().max() < 1e-5  # batch 0: no conditioning yet
    assert (plain[2].latents - alone[2].latents).abs().max() > 1e-3
