"""GroupNorm as per-channel sums, for inductor: the same statistics, in a shape it reduces well.

Traced as `native_group_norm`, a U-Net GroupNorm over a channels-last activation becomes a reduction
per (sample, group) whose rows are 16-channel slivers of every pixel: on an H200 the statistics of the
U-Net's level-0 norms took ≈ 0.22 ms for a 67 MB activation, some 14× its memory time. Summing each
channel over the pixels first (a plain reduction along whichever axis is contiguous) and then the
channels of a group gives the same mean and variance. Two passes in float32 (mean, then mean squared
deviation) were no less accurate than torch's own kernel where the mean dwarfs the spread (a test);
results differ from it by float rounding only. Measured at B=8: engine +5.8% on an H200, +5.6% on an H100
(benchmarks/NOTES.md, 40 and 42). Only what inductor traces changes: eager calls keep torch's one-pass kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from .module_swap import swap_classes

GROUP_NORMS = ("auto", "native", "two_pass")


def resolve_group_norm(choice: str, unet_compiled: bool) -> str:
    """auto: two_pass where inductor compiles the U-Net (what it was measured for), else torch's own kernel.
    (Eager calls of a two_pass norm run torch's kernel too: the choice only changes what inductor sees.)"""
    if choice == "auto":
        return "two_pass" if unet_compiled else "native"
    return choice


def two_pass_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        eps: float) -> torch.Tensor:
    """torch's group_norm, with the statistics as per-channel sums over the pixels, then per group, in float32."""
    b, c = x.shape[:2]
    g = num_groups
    pixels = tuple(range(2, x.ndim))
    count = (c // g) * x[0, 0].numel()
    xf = x.float()

    def per_channel(group_values: torch.Tensor) -> torch.Tensor:  # (b, g) → (b, c, 1, …) for broadcasting
        return group_values[:, :, None].expand(b, g, c // g).reshape(b, c, *(1,) * len(pixels))

    mean = per_channel(xf.sum(pixels).view(b, g, -1).sum(-1) / count)
    centred = xf - mean
    var = centred.square().sum(pixels).view(b, g, -1).sum(-1) / count
    y = centred * per_channel(torch.rsqrt(var + eps))
    if weight is not None:
        shape = (1, c, *(1,) * len(pixels))
        y = y * weight.view(shape) + bias.view(shape)
    return y.to(x.dtype)


class TwoPassGroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose statistics inductor sees as per-channel sums (same parameters, same state dict).

    Only while torch.compile traces it: run eagerly (the buckets that `compile_buckets: largest` leaves
    uncompiled, or an uncompiled engine) it is torch's own kernel, one pass instead of three."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(x)
        return two_pass_group_norm(x, self.num_groups, self.weight if self.affine else None,
                                   self.bias if self.affine else None, self.eps)


def use_two_pass_group_norm(module: nn.Module) -> int:
    """Make every nn.GroupNorm under `module` a TwoPassGroupNorm, in place (same object, parameters and hooks).

    Returns how many changed; `restore_group_norms` undoes it for whoever else uses the module."""
    return swap_classes(module, nn.GroupNorm, TwoPassGroupNorm)


def restore_group_norms(module: nn.Module) -> int:
    """Undo `use_two_pass_group_norm`. Returns how many were restored."""
    return swap_classes(module, TwoPassGroupNorm, nn.GroupNorm)
