"""ControlNet-LLLite: hook sites, training vs inference form, zero init, no recompiles, kohya file layout."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from services.gpu.lllite import AdapterError, TemporalLLLite, conv_strides, hook_sites, select_sites


@pytest.fixture(scope="module")
def full_unet_meta():
    from diffusers import DreamLiteUNetModel

    from services.gpu.profiles import UNET_FULL

    with torch.device("meta"):
        return DreamLiteUNetModel(**UNET_FULL)


def test_hook_counts_on_the_real_architecture(full_unet_meta):
    assert len(hook_sites(full_unet_meta)) == 108
    assert len(select_sites(full_unet_meta, "down_blocks")) == 38
    assert len(select_sites(full_unet_meta, "mid_block")) == 16
    assert len(select_sites(full_unet_meta, "up_blocks")) == 54
    assert len(select_sites(full_unet_meta, "all")) == 108
    assert select_sites(full_unet_meta, "none") == []
    assert len(select_sites(full_unet_meta, ["down_blocks", "mid_block"])) == 54


def test_unknown_hook_group_is_named(full_unet_meta):
    with pytest.raises(AdapterError, match="sideways_blocks"):
        select_sites(full_unet_meta, "sideways_blocks")


def test_conditioning_strides_factor_into_fours_then_two():
    assert conv_strides(8) == [4, 2] and conv_strides(16) == [4, 4] and conv_strides(32) == [4, 4, 2]
    with pytest.raises(AdapterError):
        conv_strides(12)


def _unet_inputs(bundle, size=64, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = size // 8
    cfg = bundle.unet.config
    return dict(
        sample=torch.randn(batch, 4, lat, 2 * lat, generator=g),
        timestep=torch.full((batch,), 1000.0),
        encoder_hidden_states=torch.randn(batch, 12, cfg.encoder_hid_dim, generator=g),
        encoder_attention_mask=torch.ones(batch, 12, dtype=torch.long),
        added_cond_kwargs={"time_ids": torch.tensor([[size, size]], dtype=torch.float32)},
        return_dict=False,
    )


def _randomise(adapter: TemporalLLLite, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_inference_form_equals_training_form(tiny_bundle):
    unet, size, batch = tiny_bundle.unet, 64, 2
    adapter = TemporalLLLite(unet, "all")
    _randomise(adapter)
    cond = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    inputs = _unet_inputs(tiny_bundle, size, batch)
    try:
        with torch.no_grad():
            base = unet(**inputs)[0]
            adapter.attach("training")
            adapter.set_cond_image(cond, multiplier=0.7)
            trained = unet(**inputs)[0]
            adapter.allocate(batch_max=4, latent_h=size // 8, latent_w=size // 8)
            adapter.attach("inference")
            adapter.write_embeddings(slice(0, batch), adapter.compute_embeddings(cond))
            adapter.set_multiplier(slice(0, batch), 0.7)
            inferred = unet(**inputs)[0]
    finally:
        adapter.detach()
    assert (trained - base).abs().max() > 1e-3  # the adapter acts
    torch.testing.assert_close(inferred, trained, atol=1e-5, rtol=1e-5)


def test_zero_initialised_adapter_leaves_outputs_unchanged(tiny_bundle):
    unet, size = tiny_bundle.unet, 64
    adapter = TemporalLLLite(unet, "all")  # `up` starts at zero
    inputs = _unet_inputs(tiny_bundle, size)
    with torch.no_grad():
        base = unet(**inputs)[0]
        adapter.allocate(4, size // 8, size // 8)
        adapter.attach("inference")
        try:
            adapter.write_embeddings(slice(0, 2), adapter.compute_embeddings(torch.rand(2, 3, size, size) * 2 - 1))
            adapter.set_multiplier(slice(0, 2), 1.0)
            hooked = unet(**inputs)[0]
        finally:
            adapter.detach()
    torch.testing.assert_close(hooked, base, atol=0, rtol=0)


def test_new_conditioning_and_multiplier_do_not_recompile(tiny_bundle):
    import torch._dynamo

    unet, size = tiny_bundle.unet, 64
    adapter = TemporalLLLite(unet, "down_blocks")
    _randomise(adapter)
    adapter.allocate(2, size // 8, size // 8)
    adapter.attach("inference")
    compiles = []

    def counting_backend(graph_module, example_inputs):
        compiles.append(1)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(unet, backend=counting_backend, dynamic=False)
    inputs = _unet_inputs(tiny_bundle, size)
    outs = []
    try:
        with torch.no_grad():
            for step in range(3):
                cond = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(step)) * 2 - 1
                adapter.write_embeddings(slice(0, 2), adapter.compute_embeddings(cond))
                adapter.set_multiplier(slice(0, 2), 0.5 + step * 0.25)
                outs.append(compiled(**inputs)[0])
                if step == 0:
                    first = len(compiles)
            after = len(compiles)
            compiled(**_unet_inputs(tiny_bundle, size, batch=1))  # a new shape does recompile: the counter is live
    finally:
        adapter.detach()
        torch._dynamo.reset()
    assert first >= 1
    assert after == first, f"{after - first} recompilation(s) after changing the conditioning"
    assert len(compiles) > after
    assert (outs[0] - outs[1]).abs().max() > 1e-4  # the new conditioning reached the compiled graph


def test_kohya_layout_round_trip_and_subset_loading(tiny_bundle, tmp_path):
    unet = tiny_bundle.unet
    full = TemporalLLLite(unet, "all")
    _randomise(full, seed=5)
    path = full.save(tmp_path / "adapter.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert meta == {"kind": "temporal_lllite", "cond_emb_dim": "32", "mlp_dim": "64"}
    assert all(k.startswith("modules_dict.") for k in keys)
    assert "modules_dict.down_blocks__0__attentions__0__transformer_blocks__0__attn2__to_q.conditioning1.0.weight" in keys
    assert any(k.endswith(".up.0.bias") for k in keys) and any(k.endswith(".mid.0.weight") for k in keys)
    subset = TemporalLLLite(unet, "down_blocks")
    report = subset.load(path)
    assert report["loaded"] == len(subset.state_dict())
    assert report["ignored"] == len(keys) - report["loaded"] > 0
    for key, value in subset.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key])


def test_bad_adapter_files_are_named(tiny_bundle, tmp_path):
    from safetensors.torch import save_file

    unet = tiny_bundle.unet
    adapter = TemporalLLLite(unet, "down_blocks")
    with pytest.raises(AdapterError, match="not found"):
        adapter.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        adapter.load(tmp_path / "junk.safetensors")
    state = {k: v.clone() for k, v in adapter.state_dict().items()}
    save_file(state, str(tmp_path / "lora.safetensors"), metadata={"kind": "lora"})
    with pytest.raises(AdapterError, match="kind 'lora'"):
        adapter.load(tmp_path / "lora.safetensors")
    partial = dict(list(state.items())[1:])
    save_file(partial, str(tmp_path / "partial.safetensors"), metadata={"kind": "temporal_lllite"})
    with pytest.raises(AdapterError, match="lacks 1 weight"):
        adapter.load(tmp_path / "partial.safetensors")
    key = next(k for k in state if k.endswith("down.0.weight"))
    state[key] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "shape.safetensors"), metadata={"kind": "temporal_lllite"})
    with pytest.raises(AdapterError, match="has shape"):
        adapter.load(tmp_path / "shape.safetensors")
