"""The U-Net's cross-attention with the key-padding mask in one extra query/key channel: SDPA gets no bias tensor.

The U-Net hands every cross-attention an additive bias (B, 1, keys): 0 for a real token, −10000 for padding.
SDPA expands it to (B, heads, queries, keys), and on CUDA inductor writes that expansion out for the attention
kernel: at B=8 and 512², 8 × 4 heads × 8192 queries × 128 keys in bf16, 67 MB for each level-0 call, in a fused
kernel that took ≈ 160 µs (benchmarks/NOTES.md, 44). Appending one channel that is 1 for every query and
bias / scale for every key gives each logit scale·(q·k) + bias, the same as the mask, with nothing to expand;
seven more zero channels keep the query/key width a multiple of 8 (what the fused kernels want). Values keep
their width (SDPA takes a value width of its own, cuDNN's kernels included), so the output needs no cutting.
Zeros add nothing to a dot product, so real keys' logits are unchanged, and padded keys' weights are
exp(≈ −10000) = 0 either way: the same function up to the order of float sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CROSS_ATTENTIONS = ("bias", "key_channel")
EXTRA_CHANNELS = 8  # one carries the bias; the rest keep query/key widths a multiple of 8


class CrossAttentionError(ValueError):
    """A cross-attention layer this processor cannot stand in for; the message names it."""


class KeyChannelCrossAttention:
    """Attention processor for one U-Net cross-attention: the stock computation with the mask in a key channel.

    Without an additive mask (or for self-attention) it hands the call to the processor it replaced."""

    def __init__(self, stock):
        self.stock = stock

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        if (attention_mask is None or not attention_mask.is_floating_point() or encoder_hidden_states is None
                or hidden_states.ndim != 3):  # only an additive bias over the keys, as the U-Net hands it over
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        b, n, _ = hidden_states.shape
        keys = encoder_hidden_states.shape[1]
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        query = query.view(b, n, attn.heads, head_dim)
        key = key.view(b, keys, kv_heads, head_dim)
        value = value.view(b, keys, kv_heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scale = head_dim**-0.5  # SDPA's default for the stock head width
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


def cross_attentions(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The U-Net's cross-attention layers (diffusers Attention modules with a separate key/value input)."""
    return [(name, m) for name, m in unet.named_modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "processor")]


def use_key_channel_cross_attention(unet: nn.Module) -> int:
    """Give every cross-attention of `unet` a KeyChannelCrossAttention, in place; returns how many changed.

    Refuses (naming the layer) a cross-attention with parts the processor does not compute: group or spatial
    norm, a normalised key input, a residual inside the attention or a rescaled output."""
    layers = [(name, attn) for name, attn in cross_attentions(unet) if not isinstance(attn.processor, KeyChannelCrossAttention)]
    for name, attn in layers:
        extras = [part for part, present in (
            ("group_norm", attn.group_norm is not None), ("spatial_norm", attn.spatial_norm is not None),
            ("norm_cross", bool(attn.norm_cross)), ("residual_connection", attn.residual_connection),
            ("rescale_output_factor", attn.rescale_output_factor != 1.0)) if present]
        if extras:
            raise CrossAttentionError(f"cross-attention {name} has {', '.join(extras)}: key_channel does not compute it")
    for _, attn in layers:
        attn.set_processor(KeyChannelCrossAttention(attn.processor))
    return len(layers)


def restore_cross_attention(unet: nn.Module) -> int:
    """Undo `use_key_channel_cross_attention`; returns how many were restored."""
    restored = 0
    for _, attn in cross_attentions(unet):
        if isinstance(attn.processor, KeyChannelCrossAttention):
            attn.set_processor(attn.processor.stock)
            restored += 1
    return restored
