"""The U-Net's cross-attention with the key-padding mask in one extra query/key channel: SDPA gets no bias tensor.

The U-Net hands every cross-attention an additive bias (B, 1, keys): 0 for a real token, −10000 for padding.
SDPA expands it to (B, heads, queries, keys), and on CUDA inductor appears to write that expansion out for the
attention kernel (the U-Net's trace has a fused kernel named for `rsub`, `expand` and `clone` beside each level-0
cross-attention, ≈ 160 µs; benchmarks/NOTES.md, 44): at B=8 and 512², 8 × 4 heads × 8192 queries × 128 keys in
bf16 is 67 MB per level-0 call. Not yet confirmed by reading the generated code.

Appending one channel that is 1 for every query and bias / scale for every key gives each logit
scale·(q·k) + bias, the same as the mask, with nothing to expand;
seven more zero channels keep the query/key width a multiple of 8 (what the fused kernels want). Values keep
their width (SDPA takes a value width of its own, cuDNN's kernels included), so the output needs no cutting.
Zeros add nothing to a dot product, so real keys' logits are unchanged, and padded keys' weights are
exp(≈ −10000) = 0 either way: the same function up to the order of float sums.

`key_channel_fused_kv` also computes every cross-attention's keys and values in one matrix product. Each of the
36 layers projected the same text through its own 2304 → 64 key and value layers: 72 products of ≈ 6 µs per
U-Net call at B=8, too small to fill the GPU (NOTES 45). Their weights stacked behind the U-Net's text
projection make one product whose output is what every cross-attention receives as its text: each reads its
own columns. The same sums, in one kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CROSS_ATTENTIONS = ("bias", "key_channel", "key_channel_fused_kv")
EXTRA_CHANNELS = 8  # one carries the bias; the rest keep query/key widths a multiple of 8


class CrossAttentionError(ValueError):
    """A cross-attention layer this processor cannot stand in for; the message names it."""


class KeyChannelCrossAttention:
    """Attention processor for one U-Net cross-attention: the stock computation with the mask in a key channel.

    `columns` (start, key width, value width): the layer's keys and values are those columns of the text it
    receives (FusedKeyValueProjection's output) instead of its own projections of it. Without them, a call
    without an additive mask (or a self-attention) goes to the processor it replaced."""

    def __init__(self, stock, columns: tuple[int, int, int] | None = None):
        self.stock = stock
        self.columns = columns

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        additive = attention_mask is not None and attention_mask.is_floating_point()  # as the U-Net hands it over
        if self.columns is None and (not additive or encoder_hidden_states is None or hidden_states.ndim != 3):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if self.columns is not None and (encoder_hidden_states is None or hidden_states.ndim != 3
                                         or (attention_mask is not None and not additive)):
            raise CrossAttentionError("with fused key/value projections a cross-attention takes token rows of the "
                                      "U-Net's projected text and an additive mask or none")
        b, n, _ = hidden_states.shape
        keys = encoder_hidden_states.shape[1]
        query = attn.to_q(hidden_states)
        if self.columns is None:
            key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        else:
            start, key_width, value_width = self.columns
            key = encoder_hidden_states[..., start : start + key_width]
            value = encoder_hidden_states[..., start + key_width : start + key_width + value_width]
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        query = query.view(b, n, attn.heads, head_dim)
        key = key.reshape(b, keys, kv_heads, head_dim)
        value = value.reshape(b, keys, kv_heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scale = head_dim**-0.5  # SDPA's default for the stock head width
        if additive:
            # (B, 1, keys) additive bias → per key, in units of q·k (× √head_dim: a power of two for 64, exact in bf16).
            bias = (attention_mask.reshape(b, 1, keys).transpose(1, 2) / scale).to(key.dtype)
            ones = query.new_ones(b, n, attn.heads, 1)
            query = torch.cat([query, ones, query.new_zeros(b, n, attn.heads, EXTRA_CHANNELS - 1)], dim=-1)
            key = torch.cat([key, bias[:, :, :, None].expand(b, keys, kv_heads, 1),
                             key.new_zeros(b, keys, kv_heads, EXTRA_CHANNELS - 1)], dim=-1)
        if kv_heads != attn.heads:  # as the stock processor does it, so SDPA picks the same kernels
            repeats = attn.heads // kv_heads
            key = torch.repeat_interleave(key, repeats, dim=2, output_size=attn.heads)
            value = torch.repeat_interleave(value, repeats, dim=2, output_size=attn.heads)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             scale=scale)
        out = out.transpose(1, 2).reshape(b, n, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class FusedKeyValueProjection(nn.Module):
    """The U-Net's text projection, then every cross-attention's key and value projections as one product.

    Its output replaces the projected text the U-Net hands its cross-attentions; `columns[i]` says where layer i's
    keys and values are. The layers' own weights stay in place (for restoring), so they are held twice."""

    def __init__(self, proj: nn.Module, layers: list[nn.Module]):
        super().__init__()
        self.proj = proj
        parts = [linear for attn in layers for linear in (attn.to_k, attn.to_v)]
        weight = torch.cat([p.weight.detach() for p in parts])
        self.kv = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
        self.kv.weight.data.copy_(weight)
        self.columns, start = [], 0
        for attn in layers:
            self.columns.append((start, attn.to_k.out_features, attn.to_v.out_features))
            start += attn.to_k.out_features + attn.to_v.out_features

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.kv(self.proj(text))


def cross_attentions(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The U-Net's cross-attention layers (diffusers Attention modules with a separate key/value input)."""
    return [(name, m) for name, m in unet.named_modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "processor")]


def use_key_channel_cross_attention(unet: nn.Module, fuse_kv: bool = False) -> int:
    """Give every cross-attention of `unet` a KeyChannelCrossAttention, in place; returns how many changed.

    With `fuse_kv`, `unet.encoder_hid_proj` becomes a FusedKeyValueProjection around itself. Refuses (naming the
    layer) a cross-attention with parts the processor does not compute: group or spatial norm, a normalised key
    input, a residual inside the attention or a rescaled output; with `fuse_kv`, also a projection with a bias, a
    U-Net without its own text projection, and one already changed. Nothing changes when it refuses."""
    layers = [(name, attn) for name, attn in cross_attentions(unet) if not isinstance(attn.processor, KeyChannelCrossAttention)]
    for name, attn in layers:
        extras = [part for part, present in (
            ("group_norm", attn.group_norm is not None), ("spatial_norm", attn.spatial_norm is not None),
            ("norm_cross", bool(attn.norm_cross)), ("residual_connection", attn.residual_connection),
            ("rescale_output_factor", attn.rescale_output_factor != 1.0),
            ("a key or value bias", fuse_kv and (attn.to_k.bias is not None or attn.to_v.bias is not None))) if present]
        if extras:
            raise CrossAttentionError(f"cross-attention {name} has {', '.join(extras)}: key_channel does not compute it")
    if not layers:
        return 0
    columns: list = [None] * len(layers)
    if fuse_kv:
        proj = getattr(unet, "encoder_hid_proj", None)
        if proj is None or isinstance(proj, FusedKeyValueProjection):
            raise CrossAttentionError("fused key/value projections need the U-Net's own text projection (encoder_hid_proj)")
        fused = FusedKeyValueProjection(proj, [attn for _, attn in layers])
        unet.encoder_hid_proj, columns = fused, fused.columns
    for (_, attn), cols in zip(layers, columns):
        attn.set_processor(KeyChannelCrossAttention(attn.processor, cols))
    return len(layers)


def restore_cross_attention(unet: nn.Module) -> int:
    """Undo `use_key_channel_cross_attention`; returns how many layers were restored."""
    restored = 0
    for _, attn in cross_attentions(unet):
        if isinstance(attn.processor, KeyChannelCrossAttention):
            attn.set_processor(attn.processor.stock)
            restored += 1
    if isinstance(getattr(unet, "encoder_hid_proj", None), FusedKeyValueProjection):
        unet.encoder_hid_proj = unet.encoder_hid_proj.proj
    return restored
