"""Depthwise convolutions as nine shifted multiply-adds, for inductor: the same sums, in a kernel it generates.

The U-Net's separable convolutions (`use_sep_conv`) start with a 3×3 depthwise convolution per channel. cuDNN
runs them with `conv2d_c1_k1_nhwc_specialized`: 34 calls per U-Net call, 5.6% of the U-Net on an H200 at B=8,
at about a fifth of the memory rate such a convolution needs (one read, one write of the activation;
benchmarks/NOTES.md 63). Written as the sum of its taps (each a shifted slice of the zero-padded input times one
weight per channel), inductor generates one elementwise kernel: each input element is loaded by nine
neighbouring outputs from cache, summed in float32, stored once. Only what inductor traces changes: eager calls
(uncompiled buckets, a CPU engine) keep cuDNN's kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .module_swap import swap_classes

DEPTHWISE = ("cudnn", "taps")


def depthwise_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride 1, padding, groups=channels) as a sum of shifted slices (weight (C, 1, kh, kw))."""
    kh, kw = weight.shape[-2:]
    ph, pw = padding
    h, w = x.shape[-2] + 2 * ph - kh + 1, x.shape[-1] + 2 * pw - kw + 1
    padded = F.pad(x, (pw, pw, ph, ph))
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i : i + h, j : j + w] * weight[:, 0, i, j].view(1, -1, 1, 1)
            out = tap if out is None else out + tap
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def is_plain_depthwise(layer: nn.Module) -> bool:
    """A Conv2d with one filter per channel, stride 1, no dilation, zero padding given as numbers."""
    return (type(layer) is nn.Conv2d and layer.groups == layer.in_channels == layer.out_channels > 1
            and layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


class TapDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d (depthwise) that torch.compile traces as `depthwise_taps`; eagerly it is cuDNN's convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(x)
        return depthwise_taps(x, self.weight, self.bias, self.padding)


def use_tap_depthwise(module: nn.Module) -> int:
    """Make every plain depthwise Conv2d under `module` a TapDepthwiseConv2d, in place; returns how many."""
    return swap_classes(module, nn.Conv2d, TapDepthwiseConv2d, is_plain_depthwise)


def restore_depthwise(module: nn.Module) -> int:
    """Undo `use_tap_depthwise`. Returns how many were restored."""
    return swap_classes(module, TapDepthwiseConv2d, nn.Conv2d)
