"""LPIPS (Zhang et al., CVPR 2018), AlexNet variant v0.1, loaded from one safetensors file (never pickle).

Distance between images x and y (RGB, scaled to [-1, 1], then per channel (v − shift) / scale):
    for each of the 5 ReLU outputs of the AlexNet feature trunk (64, 192, 384, 256, 256 channels):
        f̂ = f / (‖f‖₂ over channels + 1e-10)                 unit-normalise every feature vector
        d_l = spatial mean of  w_l · (f̂_x − f̂_y)²             w_l: 1×1 conv to one channel, no bias
    LPIPS = Σ_l d_l
Identical images give exactly 0.

Weight file layout: the key names of the reference implementation's `LPIPS(net='alex')` module
state_dict, so a user can write the file once with `safetensors.torch.save_model(model, path)` wherever
they trust the published checkpoints:

    net.slice1.0.weight  [64, 3, 11, 11]   net.slice1.0.bias  [64]    conv1 (stride 4, padding 2)
    net.slice2.3.weight  [192, 64, 5, 5]   net.slice2.3.bias  [192]   max-pool 3/2, conv2 (padding 2)
    net.slice3.6.weight  [384, 192, 3, 3]  net.slice3.6.bias  [384]   max-pool 3/2, conv3 (padding 1)
    net.slice4.8.weight  [256, 384, 3, 3]  net.slice4.8.bias  [256]   conv4 (padding 1)
    net.slice5.10.weight [256, 256, 3, 3]  net.slice5.10.bias [256]   conv5 (padding 1)
    lin0.model.1.weight .. lin4.model.1.weight   [1, C_l, 1, 1]   the per-layer heads (C_l as above)
    scaling_layer.shift, scaling_layer.scale     [1, 3, 1, 1]   optional; the v0.1 constants otherwise

Released versions of that module also register the heads as `lins.{l}.model.1.weight` (a ModuleList
over the same tensors); either name is accepted for each head, and when both are present they must be
equal. Every listed tensor except the scaling pair must be present, and no other key may be: a file for
another trunk (VGG, SqueezeNet) is rejected with the missing and unexpected keys named.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# (in, out, kernel, stride, padding) of AlexNet's five convolutions; a 3/2 max-pool precedes conv2 and conv3.
_TRUNK = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
_POOL_BEFORE = (False, True, True, False, False)
_FILE_CONV_KEYS = ("net.slice1.0", "net.slice2.3", "net.slice3.6", "net.slice4.8", "net.slice5.10")
_INPUT_SHIFT = (-0.030, -0.088, -0.188)
_INPUT_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10


class LPIPS(nn.Module):
    """LPIPS-Alex distance. Call with two N×3×H×W tensors in [-1, 1]; returns N distances."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in _TRUNK)
        self.heads = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in _TRUNK)
        self.register_buffer("shift", torch.tensor(_INPUT_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_INPUT_SCALE).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        taps = []
        for conv, pool in zip(self.convs, _POOL_BEFORE):
            if pool:
                h = F.max_pool2d(h, kernel_size=3, stride=2)
            h = F.relu(conv(h))
            taps.append(h)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs two images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        total = x.new_zeros(x.shape[0])
        for head, fx, fy in zip(self.heads, self.features(x), self.features(y)):
            fx = fx / (fx.norm(dim=1, keepdim=True) + _NORM_EPS)
            fy = fy / (fy.norm(dim=1, keepdim=True) + _NORM_EPS)
            total = total + head((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total


def file_key_map() -> dict[str, str]:
    """Weight-file key → this module's state_dict key (required keys only)."""
    mapping = {}
    for i, prefix in enumerate(_FILE_CONV_KEYS):
        mapping[f"{prefix}.weight"] = f"convs.{i}.weight"
        mapping[f"{prefix}.bias"] = f"convs.{i}.bias"
        mapping[f"lin{i}.model.1.weight"] = f"heads.{i}.weight"
    return mapping


_OPTIONAL_FILE_KEYS = {"scaling_layer.shift": "shift", "scaling_layer.scale": "scale"}


def load_lpips(weights_path: str | os.PathLike, device: str | torch.device = "cpu") -> LPIPS:
    """Build LPIPS-Alex and load its weights from a safetensors file laid out as the module docstring says."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights not found: {path!r} (a .safetensors file)")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"LPIPS weights {path!r} are not a readable safetensors file: {exc}") from exc

    tensors = _merge_head_aliases(tensors, path)
    required = file_key_map()
    missing = sorted(set(required) - set(tensors))
    unexpected = sorted(set(tensors) - set(required) - set(_OPTIONAL_FILE_KEYS))
    if missing or unexpected:
        raise ValueError(
            f"LPIPS weights {path!r} do not have the LPIPS-Alex v0.1 key layout: "
            f"missing {missing[:6]}{'…' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'…' if len(unexpected) > 6 else ''}"
        )
    model = LPIPS()
    state = {ours: tensors[theirs] for theirs, ours in required.items()}
    state.update({ours: tensors[theirs] for theirs, ours in _OPTIONAL_FILE_KEYS.items() if theirs in tensors})
    try:
        model.load_state_dict(state, strict=False)  # strict on the keys checked above; buffers may be absent
    except RuntimeError as exc:  # wrong tensor shapes
        raise ValueError(f"LPIPS weights {path!r} have tensors of the wrong shape: {exc}") from exc
    return model.to(device).eval()


def _merge_head_aliases(tensors: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Fold `lins.{l}.model.1.weight` into `lin{l}.model.1.weight` (the same head under its ModuleList name)."""
    tensors = dict(tensors)
    for i in range(len(_TRUNK)):
        alias, canonical = f"lins.{i}.model.1.weight", f"lin{i}.model.1.weight"
        if alias not in tensors:
            continue
        head = tensors.pop(alias)
        if canonical in tensors and not torch.equal(tensors[canonical], head):
            raise ValueError(f"LPIPS weights {path!r} hold two different tensors for head {i}: {canonical} and {alias}")
        tensors[canonical] = head
    return tensors


def frame_to_tensor(frame: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """H×W×3 uint8 RGB → 1×3×H×W float32 in [-1, 1]."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB frame, got shape {frame.shape}")
    t = torch.from_numpy(np.ascontiguousarray(frame)).to(device=device, dtype=torch.float32)
    return (t.permute(2, 0, 1).unsqueeze(0) / 127.5) - 1.0


@torch.inference_mode()
def lpips_distance(model: LPIPS, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS between two H×W×3 uint8 RGB frames of one size (0 for identical frames)."""
    device = next(model.parameters()).device
    return float(model(frame_to_tensor(a, device), frame_to_tensor(b, device))[0])
