"""Temporal ControlNet-LLLite adapter, in a training form and a compile-friendly inference form (DESIGN §4).

Each hook sits on a U-Net attention Linear (`attn1.to_q/to_k/to_v` where self-attention exists, and
`attn2.to_q`) and shifts that Linear's input: x → x + up(mid(cat(cond, down(x)))) · multiplier, where
`cond` is a small strided-conv embedding of the conditioning image (the warped previous output).

The inference form is what makes torch.compile work: the per-hook cond embedding and the per-row
multiplier are buffers preallocated once and written in place (tensor identity never changes), and
the forward has no Python branches, so a compiled U-Net never recompiles when the conditioning or
the multiplier change. The training form computes the embedding from the image inside the forward,
so gradients reach `conditioning1`.

Hooks are forward pre-hooks on the host Linear: the U-Net's own modules and state dict are untouched.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

HOOK_GROUPS = ("down_blocks", "mid_block", "up_blocks")
SITE_PATTERN = re.compile(r"\.(attn1\.to_[qkv]|attn2\.to_q)$")
KIND = "temporal_lllite"
VAE_FACTOR = 8


class AdapterError(ValueError):
    """An adapter file or hook selection does not fit the U-Net; the message says how."""


def hook_sites(unet: nn.Module) -> list[str]:
    """All LLLite-eligible Linear layers of the U-Net, in module order."""
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and SITE_PATTERN.search(n)]


def select_sites(unet: nn.Module, hooks: str | list[str] | tuple[str, ...]) -> list[str]:
    """`all`, `none`, one group (`down_blocks`, `mid_block`, `up_blocks`) or a list of groups."""
    groups = [hooks] if isinstance(hooks, str) else list(hooks)
    if groups == ["all"]:
        groups = list(HOOK_GROUPS)
    if groups == ["none"]:
        return []
    unknown = [g for g in groups if g not in HOOK_GROUPS]
    if unknown:
        raise AdapterError(f"unknown LLLite hook group(s) {unknown}; use all, none or some of {HOOK_GROUPS}")
    return [n for n in hook_sites(unet) if n.split(".")[0] in groups]


def site_scale(unet: nn.Module, name: str) -> int:
    """Downsampling factor of the latent grid at a hook site (1 at full latent resolution)."""
    n_down = len(unet.down_blocks)
    n_up = len(unet.up_blocks)
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return 2 ** int(parts[1])
    if parts[0] == "mid_block":
        return 2 ** (n_down - 1)
    return 2 ** (n_up - 1 - int(parts[1]))


def conv_strides(total: int) -> list[int]:
    """Factor a power-of-two stride into 4s, then a final 2 if needed (8 → [4, 2], 32 → [4, 4, 2])."""
    if total < 2 or total & (total - 1):
        raise AdapterError(f"conditioning stride {total} is not a power of two ≥ 2")
    strides = []
    while total >= 4:
        strides.append(4)
        total //= 4
    if total == 2:
        strides.append(2)
    return strides


def module_key(site: str) -> str:
    return site.replace(".", "__")


class LLLiteModule(nn.Module):
    """One hook: `conditioning1` conv stack, and the down/mid/up MLP whose `up` starts at zero."""

    def __init__(self, in_dim: int, stride: int, cond_emb_dim: int = 32, mlp_dim: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        strides = conv_strides(stride)
        for i, s in enumerate(strides):
            out = cond_emb_dim if i == len(strides) - 1 else cond_emb_dim // 2
            layers += [nn.Conv2d(channels, out, kernel_size=s, stride=s), nn.ReLU()]
            channels = out
        self.conditioning1 = nn.Sequential(*layers[:-1])  # no ReLU after the last conv
        self.down = nn.Sequential(nn.Linear(in_dim, mlp_dim), nn.ReLU())
        self.mid = nn.Sequential(nn.Linear(mlp_dim + cond_emb_dim, mlp_dim), nn.ReLU())
        self.up = nn.Sequential(nn.Linear(mlp_dim, in_dim))
        nn.init.zeros_(self.up[0].weight)
        nn.init.zeros_(self.up[0].bias)
        self.cond_emb_dim = cond_emb_dim

    def embed(self, cond_image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] → (B, h, w, cond_emb_dim) on the hook's grid (left half of the latent)."""
        return self.conditioning1(cond_image.to(self.conditioning1[0].weight.dtype)).permute(0, 2, 3, 1)

    def delta(self, x: torch.Tensor, cond_tokens: torch.Tensor) -> torch.Tensor:
        return self.up(self.mid(torch.cat([cond_tokens.to(x.dtype), self.down(x)], dim=2)))


def full_width_tokens(embedding: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) → (B, h·2w, C): the cond covers the noisy (left) half, the source half is zero."""
    b, h, w, c = embedding.shape
    return torch.cat([embedding, torch.zeros_like(embedding)], dim=2).reshape(b, h * 2 * w, c)


class TemporalLLLite(nn.Module):
    """The adapter: one LLLiteModule per selected hook site, in the kohya-style key layout."""

    def __init__(self, unet: nn.Module, hooks: str | list[str] = "down_blocks", cond_emb_dim: int = 32, mlp_dim: int = 64):
        super().__init__()
        self.sites = select_sites(unet, hooks)
        self.cond_emb_dim = cond_emb_dim
        self.mlp_dim = mlp_dim
        linears = dict(unet.named_modules())
        self.modules_dict = nn.ModuleDict({
            module_key(site): LLLiteModule(linears[site].in_features, VAE_FACTOR * site_scale(unet, site), cond_emb_dim, mlp_dim)
            for site in self.sites
        })
        self._hosts = {module_key(s): linears[s] for s in self.sites}
        self._scales = {module_key(s): site_scale(unet, s) for s in self.sites}
        self._handles: list = []
        self.mode: str | None = None
        self._cond_image: torch.Tensor | None = None
        self._train_multiplier = 1.0

    # ---- attaching ---------------------------------------------------------------------------------

    def attach(self, mode: str = "inference") -> "TemporalLLLite":
        """Hook every selected host Linear. `inference` needs `allocate` first (buffers)."""
        if mode not in ("inference", "training"):
            raise AdapterError(f"adapter mode {mode!r}; use inference or training")
        self.detach()
        for key, host in self._hosts.items():
            module = self.modules_dict[key]
            hook = self._inference_hook(module) if mode == "inference" else self._training_hook(module)
            self._handles.append(host.register_forward_pre_hook(hook))
        self.mode = mode
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.mode = None

    # ---- inference form ----------------------------------------------------------------------------

    def allocate(self, batch_max: int, latent_h: int, latent_w: int, device=None, dtype=None) -> None:
        """Preallocate the cond-embedding and multiplier buffers once; later writes are in place.

        `latent_w` is the width of the noisy (left) half; the buffers span both halves.
        """
        first = next(self.parameters())
        device = device or first.device
        dtype = dtype or first.dtype
        self.batch_max = batch_max
        self.multiplier = torch.zeros(batch_max, 1, 1, device=device, dtype=dtype)
        for key, module in self.modules_dict.items():
            h, w = latent_h // self._scales[key], latent_w // self._scales[key]
            module.grid = (h, w)
            module.register_buffer("cond_emb", torch.zeros(batch_max, h * 2 * w, self.cond_emb_dim, device=device, dtype=dtype), persistent=False)
            module.register_buffer("multiplier", self.multiplier, persistent=False)

    @staticmethod
    def _inference_hook(module: LLLiteModule):
        def hook(_host, args):
            x = args[0]
            b = x.shape[0]
            # No branches: the same graph serves every conditioning and multiplier value.
            return (x + module.delta(x, module.cond_emb[:b]) * module.multiplier[:b],)

        return hook

    @torch.no_grad()
    def compute_embeddings(self, cond_image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run every hook's `conditioning1` once: {key: (B, h, w, C)}; the per-stream cache keeps this."""
        return {key: module.embed(cond_image) for key, module in self.modules_dict.items()}

    @torch.no_grad()
    def write_embeddings(self, rows: slice, embeddings: dict[str, torch.Tensor]) -> None:
        """Copy cached embeddings into buffer rows `rows` (left half only; the right half stays zero)."""
        for key, module in self.modules_dict.items():
            h, w = module.grid
            view = module.cond_emb.view(self.batch_max, h, 2 * w, self.cond_emb_dim)
            view[rows, :, :w].copy_(embeddings[key])

    @torch.no_grad()
    def set_multiplier(self, rows: slice, value: float) -> None:
        self.multiplier[rows].fill_(value)

    # ---- training form -----------------------------------------------------------------------------

    def _training_hook(self, module: LLLiteModule):
        def hook(_host, args):
            x = args[0]
            if self._cond_image is None:
                raise AdapterError("training-form adapter called before set_cond_image")
            tokens = full_width_tokens(module.embed(self._cond_image))
            return (x + module.delta(x, tokens) * self._train_multiplier,)

        return hook

    def set_cond_image(self, cond_image: torch.Tensor, multiplier: float = 1.0) -> None:
        """Training form: the (B, 3, S, S) cond image in [-1, 1] used by the next forward passes."""
        self._cond_image = cond_image
        self._train_multiplier = multiplier

    # ---- kohya-style safetensors ------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        return {"kind": KIND, "cond_emb_dim": str(self.cond_emb_dim), "mlp_dim": str(self.mlp_dim)}

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={**self.metadata(), **(extra_metadata or {})})
        return Path(path)

    def load(self, path: str | os.PathLike) -> dict[str, int]:
        """Load weights; keys of hooks this adapter did not select are ignored (counted in the result)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise AdapterError(f"adapter weights {path} not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise AdapterError(f"adapter weights {path} are not a readable safetensors file: {exc}") from exc
        if meta.get("kind", KIND) != KIND:
            raise AdapterError(f"adapter {path} is of kind {meta.get('kind')!r}, expected {KIND!r}")
        for field, value in (("cond_emb_dim", self.cond_emb_dim), ("mlp_dim", self.mlp_dim)):
            if field in meta and int(meta[field]) != value:
                raise AdapterError(f"adapter {path} has {field}={meta[field]}, this adapter expects {value}")
        own = self.state_dict()
        selected = {k: v for k, v in tensors.items() if k.split(".")[1] in self.modules_dict}
        missing = sorted(set(own) - set(selected))
        if missing:
            raise AdapterError(f"adapter {path} lacks {len(missing)} weight(s) of selected hooks, e.g. {missing[:3]}")
        for key, value in selected.items():
            if key not in own:
                raise AdapterError(f"adapter {path} has unexpected key {key}")
            if own[key].shape != value.shape:
                raise AdapterError(f"adapter {path}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        self.load_state_dict(selected, strict=False)
        return {"loaded": len(selected), "ignored": len(tensors) - len(selected)}


def describe(adapter: TemporalLLLite) -> str:
    groups = {g: sum(s.startswith(g) for s in adapter.sites) for g in HOOK_GROUPS}
    return json.dumps({"hooks": len(adapter.sites), **groups})
