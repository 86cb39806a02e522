"""The key-channel cross-attention computes the stock masked cross-attention; the engine uses it only when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_dreamlite import DreamLiteAttnProcessor2_0

from services.gpu.cross_attention import (
    CrossAttentionError,
    FusedKeyValueProjection,
    KeyChannelCrossAttention,
    cross_attentions,
    restore_cross_attention,
    use_key_channel_cross_attention,
)
from services.gpu.engine import EngineConfig, EngineError, StreamEngine
from tests.conftest import real_frames


def _attention(heads: int, kv_heads: int, head_dim: int, **kwargs) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=48, cross_attention_dim=40, heads=heads, dim_head=head_dim, qk_norm="rms_norm",
                     kv_heads=kv_heads, processor=DreamLiteAttnProcessor2_0(), **kwargs)
    for p in attn.parameters():  # RMSNorm weights start at 1: make them matter
        torch.nn.init.normal_(p, std=0.3)
    return attn.eval()


def _inputs(batch: int = 3, queries: int = 20, keys: int = 16, dtype=torch.float32):
    torch.manual_seed(1)
    hidden = torch.randn(batch, queries, 48, dtype=dtype)
    text = torch.randn(batch, keys, 40, dtype=dtype)
    valid = torch.ones(batch, keys)
    valid[0, 11:] = 0  # rows with different amounts of padding, one with none
    valid[1, 5:] = 0
    text = text * valid[:, :, None].to(dtype)  # padded rows are zero, as the encoder returns them
    bias = ((1 - valid.to(dtype)) * -10000.0).unsqueeze(1)  # what the U-Net hands its cross-attentions
    return hidden, text, bias


@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 1, 64), (4, 4, 64), (2, 1, 32), (6, 2, 16)])
def test_matches_the_stock_masked_cross_attention_in_float32(heads, kv_heads, head_dim):
    attn = _attention(heads, kv_heads, head_dim)
    hidden, text, bias = _inputs()
    with torch.no_grad():
        stock = attn(hidden, encoder_hidden_states=text, attention_mask=bias)
        assert use_key_channel_cross_attention(torch.nn.ModuleList([attn])) == 1
        ours = attn(hidden, encoder_hidden_states=text, attention_mask=bias)
        unmasked = attn.processor.stock(attn, hidden, text, None)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    assert (unmasked - stock).abs().max() > 1e-3  # the mask matters here, so the match above tests it


def test_matches_in_bfloat16():
    attn = _attention(4, 1, 64).to(torch.bfloat16)
    hidden, text, bias = _inputs(dtype=torch.bfloat16)
    with torch.no_grad():
        stock = attn(hidden, encoder_hidden_states=text, attention_mask=bias)
        use_key_channel_cross_attention(torch.nn.ModuleList([attn]))
        ours = attn(hidden, encoder_hidden_states=text, attention_mask=bias)
    assert ours.dtype is torch.bfloat16
    assert (ours.float() - stock.float()).abs().max() <= 2 * 2**-7 * stock.float().abs().max()  # bf16 rounding


def test_without_an_additive_mask_it_is_the_stock_processor():
    attn = _attention(4, 1, 64)
    hidden, text, bias = _inputs()
    keep = bias == 0  # a boolean mask (True: attend), as SDPA takes one
    with torch.no_grad():
        stock = [attn(hidden, encoder_hidden_states=text), attn(hidden, encoder_hidden_states=text, attention_mask=keep)]
        use_key_channel_cross_attention(torch.nn.ModuleList([attn]))
        assert torch.equal(attn(hidden, encoder_hidden_states=text), stock[0])
        assert torch.equal(attn(hidden, encoder_hidden_states=text, attention_mask=keep), stock[1])


def test_the_traced_attention_passes_sdpa_no_mask():
    attn = _attention(4, 1, 64)
    hidden, text, bias = _inputs()
    masks = {}
    for name in ("stock", "key_channel"):
        if name == "key_channel":
            use_key_channel_cross_attention(torch.nn.ModuleList([attn]))

        def record(gm, example_inputs, name=name):
            calls = [n for n in gm.graph.nodes if "scaled_dot_product_attention" in str(n.target)]
            masks[name] = [n.kwargs.get("attn_mask", n.args[3] if len(n.args) > 3 else None) for n in calls]
            return gm.forward

        with torch.no_grad():
            torch.compile(attn, backend=record, dynamic=False, fullgraph=True)(
                hidden, encoder_hidden_states=text, attention_mask=bias)
        torch._dynamo.reset()
    assert len(masks["stock"]) == 1 and masks["stock"][0] is not None
    assert masks["key_channel"] == [None]


def test_use_and_restore_touch_only_cross_attentions(tiny_bundle):
    unet = tiny_bundle.unet
    processors = {name: m.processor for name, m in unet.named_modules() if hasattr(m, "processor")}
    crosses = cross_attentions(unet)
    assert crosses and len(crosses) < len(processors)  # the U-Net has self-attentions too
    try:
        assert use_key_channel_cross_attention(unet) == len(crosses)
        assert all(isinstance(m.processor, KeyChannelCrossAttention) for _, m in crosses)
        assert use_key_channel_cross_attention(unet) == 0  # nothing left to change
        untouched = {n: m.processor for n, m in unet.named_modules() if hasattr(m, "processor") and not m.is_cross_attention}
        assert all(processors[n] is p for n, p in untouched.items())
    finally:
        assert restore_cross_attention(unet) == len(crosses)
    assert all(m.processor is processors[name] for name, m in unet.named_modules() if hasattr(m, "processor"))


def test_a_layer_it_cannot_compute_is_refused_by_name_and_nothing_changes():
    plain, odd = _attention(4, 1, 64), _attention(4, 1, 64, residual_connection=True)
    layers = torch.nn.ModuleDict({"plain": plain, "odd": odd})
    with pytest.raises(CrossAttentionError, match="cross-attention odd has residual_connection"):
        use_key_channel_cross_attention(layers)
    assert all(isinstance(m.processor, DreamLiteAttnProcessor2_0) for m in (plain, odd))


@pytest.mark.parametrize("choice", ["key_channel", "key_channel_fused_kv"])
def test_engine_output_is_the_same_with_either_mask_form(tiny_bundle, bikes_path, choice):
    frames = real_frames(bikes_path, 64, 8)
    projection = tiny_bundle.unet.encoder_hid_proj
    results = {}
    for name in ("bias", choice):
        config = EngineConfig(size=64, batch=4, hooks="down_blocks", keep_latents=True, cross_attention=name)
        with StreamEngine(config, tiny_bundle) as engine:
            engine.open_stream("s", "oil painting")
            results[name] = [engine.submit(frames[i : i + 4], "s").result() for i in (0, 4)]
            assert (engine.cross_attentions > 0) == (name != "bias")
            fused = isinstance(tiny_bundle.unet.encoder_hid_proj, FusedKeyValueProjection)
            assert fused == (name == "key_channel_fused_kv")
        assert not any(isinstance(m.processor, KeyChannelCrossAttention) for _, m in cross_attentions(tiny_bundle.unet))
        assert tiny_bundle.unet.encoder_hid_proj is projection  # given back on close
    for bias, ours in zip(results["bias"], results[choice]):
        torch.testing.assert_close(ours.latents, bias.latents, rtol=1e-4, atol=1e-4)
        assert np.abs(ours.frames.astype(int) - bias.frames.astype(int)).max() <= 1


def test_an_unknown_choice_is_refused_by_name(tiny_bundle):
    with pytest.raises(EngineError, match="cross_attention 'sparse'"):
        StreamEngine(EngineConfig(size=64, batch=2, cross_attention="sparse"), tiny_bundle)


def _unet_inputs(unet, batch: int = 2, keys: int = 24, padded: bool = True):
    torch.manual_seed(3)
    cfg = unet.config
    sample = torch.randn(batch, cfg.in_channels, 8, 16)
    text = torch.randn(batch, keys, cfg.encoder_hid_dim)
    mask = torch.ones(batch, keys)
    if padded:
        mask[0, 17:] = 0
        text = text * mask[:, :, None]
    kwargs = {"timestep": torch.full((batch,), 999.0), "encoder_hidden_states": text,
              "added_cond_kwargs": {"time_ids": torch.tensor([[64.0, 64.0]])}, "return_dict": False}
    return sample, kwargs, mask


@pytest.mark.parametrize("with_mask", [True, False])
def test_the_fused_projection_gives_the_u_net_the_same_output(tiny_bundle, with_mask):
    unet = tiny_bundle.unet
    sample, kwargs, mask = _unet_inputs(unet)
    if with_mask:
        kwargs["encoder_attention_mask"] = mask
    state_keys = list(unet.state_dict())
    with torch.no_grad():
        stock = unet(sample, **kwargs)[0]
        try:
            assert use_key_channel_cross_attention(unet, fuse_kv=True) == len(cross_attentions(unet))
            fused = unet.encoder_hid_proj
            assert isinstance(fused, FusedKeyValueProjection)
            widths = [k + v for _, k, v in fused.columns]
            assert fused.kv.out_features == sum(widths) and [c[0] for c in fused.columns] == list(np.cumsum([0, *widths[:-1]]))
            ours = unet(sample, **kwargs)[0]
        finally:
            restore_cross_attention(unet)
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4)
    assert list(unet.state_dict()) == state_keys  # the U-Net's own projection is back in place


def test_the_fused_projection_refuses_what_it_cannot_compute(tiny_bundle):
    attn = _attention(4, 1, 64)
    attn.to_k.bias = torch.nn.Parameter(torch.zeros(attn.to_k.out_features))
    with pytest.raises(CrossAttentionError, match="a key or value bias"):
        use_key_channel_cross_attention(torch.nn.ModuleList([attn]), fuse_kv=True)
    with pytest.raises(CrossAttentionError, match="text projection"):
        use_key_channel_cross_attention(torch.nn.ModuleList([_attention(4, 1, 64)]), fuse_kv=True)
    unet = tiny_bundle.unet
    try:
        use_key_channel_cross_attention(unet, fuse_kv=True)
        attn2 = cross_attentions(unet)[0][1]
        hidden, text = torch.randn(2, 4, attn2.to_q.in_features), torch.randn(2, 24, unet.encoder_hid_proj.kv.out_features)
        with torch.no_grad(), pytest.raises(CrossAttentionError, match="additive mask or none"):
            attn2.processor(attn2, hidden, text, attention_mask=torch.ones(2, 1, 24, dtype=torch.bool))
    finally:
        restore_cross_attention(unet)
    assert all(isinstance(m.processor, DreamLiteAttnProcessor2_0) for _, m in cross_attentions(unet))


def test_the_traced_u_net_makes_one_key_value_product_and_passes_no_mask(tiny_bundle):
    unet = tiny_bundle.unet
    sample, kwargs, mask = _unet_inputs(unet)
    kwargs["encoder_attention_mask"] = mask
    layers = len(cross_attentions(unet))
    graphs = {}
    for choice in ("stock", "fused"):

        def record(gm, example_inputs, choice=choice):
            nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
            graphs.setdefault(choice, []).extend(nodes)
            return gm.forward

        try:
            if choice == "fused":
                use_key_channel_cross_attention(unet, fuse_kv=True)
            with torch.no_grad():
                torch.compile(unet, backend=record, dynamic=False)(sample, **kwargs)
        finally:
            restore_cross_attention(unet)
            torch._dynamo.reset()
    linears = {c: sum("linear" in str(n.target) for n in nodes) for c, nodes in graphs.items()}
    assert linears["fused"] == linears["stock"] - 2 * layers + 1
    def masked(nodes):
        sdpa = [n for n in nodes if "scaled_dot_product_attention" in str(n.target)]
        return sdpa, [n for n in sdpa if n.kwargs.get("attn_mask") is not None or (len(n.args) > 3 and n.args[3] is not None)]

    assert len(masked(graphs["stock"])[1]) == layers  # the stock cross-attentions hand SDPA their bias
    sdpa, with_mask = masked(graphs["fused"])
    assert len(sdpa) == len(masked(graphs["stock"])[0]) and not with_mask
