"""The edit-prompt encoder: Qwen3-VL on (frame at 256², instruction) → U-Net conditioning.

Same weights and the same function as DreamLiteMobilePipeline.encode_prompt, computed the way a
streaming server needs it:
- the template is tokenised once per prompt, and the 3-D rotary positions of that fixed layout are
  computed once on the host, so a batch needs no host sync (the stock code's `.item()`/`.tolist()`);
- pixels are resized, normalised and patchified on the GPU (no PIL, no processor call per frame);
- the vision tower runs all images of a batch in one attention call per layer, not one per image;
- the system-prompt prefix is identical for every frame, so its key/value cache is computed once and
  every frame runs only its own suffix (exact: causal attention makes the prefix independent of
  what follows);
- suffixes are padded on the right to a bucket of tokens (16, or 8 where the token axis is compiled
  dynamic: token_shapes.py), so prompts of several streams share a
  batch under one static shape, and padded rows come out zero with mask 0, as the pipeline pads.
Everything between host-prepared buffers and the output is static-shaped, so it can be captured in
a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .profiles import VisionPreprocess

EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
    "texture, objects, background), then explain how the user's text instruction should alter "
    "or modify the image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
)
EDIT_DROP_IDX = 64
EDIT_INSTRUCTION = (
    "[Edit]: A diptych with two side-by-side images of the same scene. "
    "Compared to the right side, the left one has {}"
)
IMAGE_PAD = "<|image_pad|>"
TOKEN_BUCKET = 16
MAX_PROMPT_TOKENS = 1024


class PromptError(ValueError):
    """A prompt cannot be encoded (empty, too long); the message says which limit it broke."""


@dataclass(frozen=True)
class PromptLayout:
    """A tokenised edit prompt: its suffix tokens (after the shared prefix) and their rotary positions."""

    prompt: str
    suffix_ids: torch.Tensor  # (Ls,) long, CPU
    suffix_positions: torch.Tensor  # (3, Ls) long, CPU

    @property
    def length(self) -> int:
        return int(self.suffix_ids.shape[0])


def bucket_length(n: int, bucket: int = TOKEN_BUCKET) -> int:
    return -(-n // bucket) * bucket


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class EditPromptEncoder(torch.nn.Module):
    """Encodes batches of (frame, prompt) pairs; `forward` is static-shaped and graph-capturable."""

    def __init__(self, text_encoder, tokenizer, vision: VisionPreprocess, image_size: int = 256):
        super().__init__()
        model = text_encoder.model  # Qwen3VLModel: vision tower + language model body, no LM head
        self.visual = model.visual
        self.lm = model.language_model
        self.rope_model = model  # owns get_rope_index
        self.tokenizer = tokenizer
        self.vision = vision
        self.image_size = image_size
        cfg = self.visual.config
        self.merge = cfg.spatial_merge_size
        self.patch = cfg.patch_size
        self.temporal = cfg.temporal_patch_size
        if image_size % (self.patch * self.merge):
            raise PromptError(f"encoder image size {image_size} must be a multiple of {self.patch * self.merge}")
        self.grid = image_size // self.patch
        proj = self.visual.patch_embed.proj  # embed_patches computes it as one product per patch
        if tuple(proj.kernel_size) != tuple(proj.stride) or proj.padding not in ((0, 0, 0), 0):
            raise PromptError(f"patch embedding kernel {proj.kernel_size}, stride {proj.stride}: not one product per patch")
        self.image_tokens = (self.grid // self.merge) ** 2
        self.image_token_id = text_encoder.config.image_token_id
        self._prefix_ids = self._tokenise_prefix()
        self.prefix_len = len(self._prefix_ids)
        # Index of the first image token inside every suffix (the same for all prompts).
        self.image_offset = self._template_ids("x").index(self.image_token_id) - self.prefix_len
        device = self.lm.embed_tokens.weight.device
        # Buffers, not per-call tensors: a host→device copy cannot sit inside a captured CUDA graph.
        self.register_buffer("pixel_mean", torch.tensor(vision.image_mean, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(vision.image_std, device=device).view(1, 3, 1, 1), persistent=False)
        self._layouts: dict[str, PromptLayout] = {}
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._vision_consts: tuple | None = None
        self._prefix_rope: tuple | None = None
        self._qkv: list[tuple] | None = None  # per language-model layer: stacked q/k/v weight, bias, widths (fuse_qkv)

    # ---- host side: once per prompt --------------------------------------------------------------

    def _template_ids(self, prompt: str) -> list[int]:
        text = EDIT_TEMPLATE.format(EDIT_INSTRUCTION.format(prompt)).replace(IMAGE_PAD, IMAGE_PAD * self.image_tokens)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _tokenise_prefix(self) -> list[int]:
        ids = self._template_ids("x")
        first_image = ids.index(self.image_token_id)
        # The cached prefix is the dropped system part; it must end before the image (shared by all frames).
        if first_image < EDIT_DROP_IDX:
            raise PromptError(f"template puts the image at token {first_image}, inside the {EDIT_DROP_IDX}-token system prefix")
        return ids[:EDIT_DROP_IDX]

    def layout(self, prompt: str) -> PromptLayout:
        """Tokenise a prompt once; positions follow Qwen3-VL's M-RoPE for the fixed image grid."""
        if prompt in self._layouts:
            return self._layouts[prompt]
        if not prompt or not prompt.strip():
            raise PromptError("prompt is empty")
        ids = self._template_ids(prompt)
        if ids[: self.prefix_len] != self._prefix_ids:
            raise PromptError("prompt changes the shared system prefix of the template")
        if len(ids) - self.prefix_len > MAX_PROMPT_TOKENS:
            raise PromptError(f"prompt is {len(ids) - self.prefix_len} tokens after the prefix; the limit is {MAX_PROMPT_TOKENS}")
        input_ids = torch.tensor([ids])
        token_type = (input_ids == self.image_token_id).int()
        grid_thw = torch.tensor([[1, self.grid, self.grid]])
        positions, _ = self.rope_model.get_rope_index(input_ids, token_type, image_grid_thw=grid_thw)
        layout = PromptLayout(prompt, input_ids[0, self.prefix_len :].clone(), positions[:, 0, self.prefix_len :].clone())
        if len(self._layouts) > 256:  # prompts change live; keep the cache bounded
            self._layouts.pop(next(iter(self._layouts)))
        self._layouts[prompt] = layout
        return layout

    def pack(self, layouts: list[PromptLayout], length: int | None = None,
             bucket: int = TOKEN_BUCKET) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad suffixes to a shared length (by default the next multiple of `bucket`): ids (B, L), positions
        (3, B, L), lengths (B,)."""
        longest = max(l.length for l in layouts)
        length = length or bucket_length(longest, bucket)
        if length < longest:
            raise PromptError(f"token bucket {length} is shorter than the longest prompt ({longest})")
        ids = torch.full((len(layouts), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        pos = torch.zeros((3, len(layouts), length), dtype=torch.long)
        for row, lay in enumerate(layouts):
            ids[row, : lay.length] = lay.suffix_ids
            pos[:, row, : lay.length] = lay.suffix_positions
            # Padding continues the positions; the rows are masked out anyway.
            tail = torch.arange(1, length - lay.length + 1)
            pos[:, row, lay.length :] = lay.suffix_positions[:, -1:] + tail
        lengths = torch.tensor([l.length for l in layouts])
        return ids, pos, lengths

    # ---- device side --------------------------------------------------------------------------------

    def _vision_constants(self, device, dtype):
        """Learned position embeddings and rotary tables of the fixed patch grid, computed once."""
        if self._vision_consts is None or self._vision_consts[0].device != device:
            from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

            grid_thw = torch.tensor([[1, self.grid, self.grid]], device=device)
            idx, w = get_vision_interpolation_indices_and_weights(
                grid_thw, num_grid_per_side=self.visual.num_grid_per_side, mode=self.visual.interpolation_mode,
                align_corners=self.visual.interpolation_align_corners, spatial_merge_size=self.merge,
            )
            pos_embeds = (self.visual.pos_embed(idx) * w[:, :, None].to(self.visual.pos_embed.weight.dtype)).sum(1)
            positions = get_vision_position_ids(grid_thw, self.merge)
            probe = torch.zeros(1, device=device, dtype=dtype)
            cos, sin = self.visual.rotary_pos_emb(probe, positions)
            self._vision_consts = (pos_embeds.to(dtype), cos.float(), sin.float())
        return self._vision_consts

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1] → normalised pixels at the encoder size."""
        if frames.shape[-1] != self.image_size or frames.shape[-2] != self.image_size:
            frames = F.interpolate(frames, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False)
        return (frames - self.pixel_mean.to(frames.dtype)) / self.pixel_std.to(frames.dtype)

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B·N, 3·T·P·P) in the processor's merge-block order, temporal axis repeated."""
        b, c, h, w = pixels.shape
        p, m, t = self.patch, self.merge, self.temporal
        x = pixels.reshape(b, c, h // p // m, m, p, w // p // m, m, p)
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # B, gh/m, gw/m, m, m, C, P, P
        x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)
        return x.reshape(b * (h // p) * (w // p), c * t * p * p)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """The vision tower's patch embedding, (B·N, 3·T·P·P) → (B·N, D). Its Conv3d's kernel equals its stride and
        covers a whole patch, so it is one matrix product over each patch's values (the same sums, in another
        order). cuDNN ran the bf16 Conv3d with a generic kernel that skips the tensor cores
        (`implicit_convolveNd_sgemm`: 0.65 ms per B=16 call on an H100, 3.7% of the text encoder; NOTES 62)."""
        proj = self.visual.patch_embed.proj
        return F.linear(patches, proj.weight.reshape(proj.out_channels, -1), proj.bias)

    def vision_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Batched vision tower: (B, 3, H, W) → merged image tokens (B, N/4, D) and deepstack features."""
        vis = self.visual
        b = pixels.shape[0]
        dtype = vis.patch_embed.proj.weight.dtype
        pos_embeds, cos, sin = self._vision_constants(pixels.device, dtype)
        hidden = self.embed_patches(self.patchify(pixels).to(dtype))
        n = pos_embeds.shape[0]
        hidden = (hidden.view(b, n, -1) + pos_embeds).view(b * n, -1)
        heads = vis.blocks[0].attn.num_heads
        cos_, sin_ = cos[None, None], sin[None, None]
        deepstack = []
        for layer, blk in enumerate(vis.blocks):
            attn = blk.attn
            qkv = attn.qkv(blk.norm1(hidden)).view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, heads, N, hd)
            q = (q.float() * cos_ + rotate_half(q.float()) * sin_).to(v.dtype)
            k = (k.float() * cos_ + rotate_half(k.float()) * sin_).to(v.dtype)
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
            hidden = hidden + attn.proj(out.transpose(1, 2).reshape(b * n, -1))
            hidden = hidden + blk.mlp(blk.norm2(hidden))
            if layer in vis.deepstack_visual_indexes:
                merger = vis.deepstack_merger_list[vis.deepstack_visual_indexes.index(layer)]
                deepstack.append(merger(hidden).view(b, n // self.merge**2, -1))
        merged = vis.merger(hidden).view(b, n // self.merge**2, -1)
        return merged, deepstack

    def _rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.zeros(1, device=positions.device, dtype=dtype)
        return self.lm.rotary_emb(probe, positions)

    def fuse_qkv(self) -> int:
        """Compute each language-model layer's query, key and value projections as one matrix product. Exact: the
        same weights, stacked; each projection's weight becomes a view of the stack, so no memory is added and the
        modules (which other code, such as the naive pipeline, still calls) compute what they did. Why: k and v
        are half q's width, and inside the encoder's graph on an H100 at B=16 they ran at ≈ 430 TFLOP/s against
        620–710 for its wider products (benchmarks/NOTES.md 59, 61); stacked, they share one wide product.
        Returns the layers fused."""
        fused = []
        with torch.no_grad():
            for index, layer in enumerate(self.lm.layers):
                projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
                if any(type(p) is not torch.nn.Linear for p in projections):
                    raise PromptError(f"language-model layer {index}'s q/k/v are not plain Linear layers (FP8?): cannot stack them")
                weight = torch.cat([p.weight for p in projections])
                has_bias = [p.bias is not None for p in projections]
                if any(has_bias) and not all(has_bias):
                    raise PromptError(f"language-model layer {index} has a bias on some of q/k/v only")
                bias = torch.cat([p.bias for p in projections]) if all(has_bias) else None
                widths = [p.out_features for p in projections]
                for p, view in zip(projections, weight.split(widths)):
                    p.weight = torch.nn.Parameter(view, requires_grad=False)
                for p, view in zip(projections, bias.split(widths) if bias is not None else ()):
                    p.bias = torch.nn.Parameter(view, requires_grad=False)
                fused.append((weight, bias, widths))
        self._qkv = fused
        return len(fused)

    def _attend(self, index: int, layer, x: torch.Tensor, cos, sin, past: tuple | None, mask: torch.Tensor | None):
        attn = layer.self_attn
        b, l, _ = x.shape
        hd = attn.head_dim
        if self._qkv is not None:
            weight, bias, widths = self._qkv[index]
            q, k, v = F.linear(x, weight, bias).split(widths, dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = attn.q_norm(q.view(b, l, -1, hd)).transpose(1, 2)
        k = attn.k_norm(k.view(b, l, -1, hd)).transpose(1, 2)
        v = v.view(b, l, -1, hd).transpose(1, 2)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        new_kv = (k, v)
        if past is not None:
            k = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=attn.scaling, enable_gqa=True
        )
        return attn.o_proj(out.transpose(1, 2).reshape(b, l, -1)), new_kv

    def prepare(self, device, dtype) -> None:
        """Build the once-per-device constants (prefix K/V, vision positions) outside any traced region."""
        with torch.no_grad():
            self.prefix_cache(device, dtype)
            self._vision_constants(device, dtype)

    def prefix_cache(self, device, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (K, V) of the shared system prefix, computed once per device."""
        if self._prefix_kv is None or self._prefix_kv[0][0].device != device:
            ids = torch.tensor([self._prefix_ids], device=device)
            positions = torch.arange(self.prefix_len, device=device).view(1, 1, -1).expand(3, 1, -1)
            cos, sin = self._rope(positions, dtype)
            hidden = self.lm.embed_tokens(ids)
            cache = []
            with torch.no_grad():
                for index, layer in enumerate(self.lm.layers):
                    out, kv = self._attend(index, layer, layer.input_layernorm(hidden), cos, sin, None, None)
                    hidden = hidden + out
                    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
                    cache.append(kv)
            self._prefix_kv = cache
        return self._prefix_kv

    def forward(self, frames: torch.Tensor, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, 3, S, S) in [0, 1]; ids (B, L); cos/sin (B, L, hd) → embeds (B, L, D), mask (B, L).

        Every tensor keeps its shape from call to call, so a CUDA graph can replay this.
        """
        dtype = self.lm.embed_tokens.weight.dtype
        b, length = ids.shape
        image, deepstack = self.vision_forward(self.preprocess(frames))
        start, stop = self.image_offset, self.image_offset + self.image_tokens
        hidden = self.lm.embed_tokens(ids)
        hidden = torch.cat([hidden[:, :start], image.to(dtype), hidden[:, stop:]], dim=1)
        past = self.prefix_cache(ids.device, dtype)
        p = self.prefix_len
        q_idx = torch.arange(length, device=ids.device).view(-1, 1)
        k_idx = torch.arange(p + length, device=ids.device).view(1, -1)
        mask = k_idx <= q_idx + p  # causal over prefix + suffix; right padding never leaks into real rows
        for index, layer in enumerate(self.lm.layers):
            out, _ = self._attend(index, layer, layer.input_layernorm(hidden), cos, sin, past[index], mask)
            hidden = hidden + out
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            if index < len(deepstack):
                hidden = torch.cat([hidden[:, :start], hidden[:, start:stop] + deepstack[index].to(dtype), hidden[:, stop:]], dim=1)
        hidden = self.lm.norm(hidden)
        valid = torch.arange(length, device=ids.device).view(1, -1) < lengths.view(-1, 1)
        return hidden * valid.unsqueeze(-1).to(hidden.dtype), valid.long()

    def rope_tables(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, B, L) positions → cos, sin (B, L, hd) for `forward`."""
        return self._rope(positions, dtype)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, prompts: list[str], bucket: int = TOKEN_BUCKET) -> tuple[torch.Tensor, torch.Tensor]:
        """Convenience: frames (B, 3, S, S) in [0, 1] with one prompt per frame → (embeds, mask)."""
        device = frames.device
        dtype = self.lm.embed_tokens.weight.dtype
        ids, pos, lengths = self.pack([self.layout(p) for p in prompts], bucket=bucket)
        cos, sin = self.rope_tables(pos.to(device), dtype)
        return self.forward(frames, ids.to(device), cos, sin, lengths.to(device))
