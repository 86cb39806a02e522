"""FP8 (e4m3) linear layers, opt-in (`model.fp8`): an approximation for Hopper's FP8 tensor cores.

Each converted nn.Linear keeps its object (so the adapter's hooks stay attached) and its bf16 weight (so
`restore_linears` undoes it); it gains an e4m3 copy of the weight scaled per output row, and its forward
scales each input row to e4m3 at run time and multiplies through `torch._scaled_mm` with bf16 output.
Only layers whose both sizes are multiples of 16 (the FP8 kernels' rule) and at least MIN_FEATURES wide
are converted: below that the quantisation costs more than the product saves. The error it brings is
measured by `benchmarks/fp8_accuracy.py` (cosine similarity against bf16), never assumed.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
MIN_FEATURES = 512
FP8_PARTS = ("text_encoder", "unet")


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) → e4m3 values and (M, 1) float32 scales with x ≈ values · scales, each row's peak at E4M3_MAX."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Linear):
    """What a converted nn.Linear becomes (its class is swapped in place; see `use_fp8`)."""

    fp8_weight: torch.Tensor  # (out, in) e4m3
    fp8_scale: torch.Tensor  # (1, out) float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        values, scale = quantise_rows(rows)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        out = torch._scaled_mm(values, self.fp8_weight.t(), scale_a=scale, scale_b=self.fp8_scale, bias=bias,
                               out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def convertible(layer: nn.Module) -> bool:
    return (type(layer) is nn.Linear and layer.in_features % 16 == 0 and layer.out_features % 16 == 0
            and min(layer.in_features, layer.out_features) >= MIN_FEATURES)


@torch.no_grad()
def use_fp8(module: nn.Module) -> list[str]:
    """Convert every convertible nn.Linear inside `module` in place; returns their names."""
    names = []
    for name, layer in module.named_modules():
        if convertible(layer):
            values, scale = quantise_rows(layer.weight)
            layer.register_buffer("fp8_weight", values, persistent=False)
            layer.register_buffer("fp8_scale", scale.t().contiguous(), persistent=False)
            layer.__class__ = Fp8Linear
            names.append(name)
    return names


def restore_linears(module: nn.Module) -> int:
    """Undo `use_fp8`: the layers compute in their own dtype again. Returns how many were restored."""
    restored = 0
    for layer in module.modules():
        if type(layer) is Fp8Linear:
            del layer.fp8_weight, layer.fp8_scale
            layer.__class__ = nn.Linear
            restored += 1
    return restored


def fp8_problem(device: torch.device) -> str | None:
    """Why this device cannot run FP8 products, or None. CUDA needs compute capability 8.9 (Ada) or 9.0
    (Hopper); the CPU runs them (slowly), which the tests use."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"FP8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); {device} has {major}.{minor}"
    return None
