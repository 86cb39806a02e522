"""How the prompt's token count shapes the compiled text encoder and U-Net.

A live prompt change can change the token count. With static shapes every token bucket is a compile of its
own, paid on first use inside the GPU worker's loop: each stream waits for the compile (a minute or more for
the text encoder or the U-Net on an H100). With the token axis dynamic, one compile serves every length; a new
length costs only a CUDA-graph capture. Padding stays (8 tokens: tensor-core friendly), so prompts of several
streams still share a graph, and the padded rows are masked as before, so the output is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompt_encoder import TOKEN_BUCKET, bucket_length

TOKEN_SHAPES = ("dynamic", "static")
DYNAMIC_TOKEN_ALIGN = 8
UNET_TOKEN_BUCKETS = (128, 256, 512, 1024)  # static shapes: the U-Net's text length, so prompt edits rarely recompile


@dataclass(frozen=True)
class TokenShapes:
    mode: str = "dynamic"

    @property
    def dynamic(self) -> bool:
        return self.mode == "dynamic"

    @property
    def encoder_bucket(self) -> int:
        """The text encoder's suffix pads to a multiple of this."""
        return DYNAMIC_TOKEN_ALIGN if self.dynamic else TOKEN_BUCKET

    def encoder_length(self, suffix_tokens: int) -> int:
        """The text encoder's suffix length for a prompt of `suffix_tokens`."""
        return bucket_length(suffix_tokens, self.encoder_bucket)

    def unet_length(self, length: int) -> int:
        """The U-Net's text length for `length` encoder tokens."""
        if self.dynamic:
            return bucket_length(length, DYNAMIC_TOKEN_ALIGN)
        return next((t for t in UNET_TOKEN_BUCKETS if t >= length), length)

    def mark(self, *tensors: torch.Tensor) -> None:
        """Declare dim 1 (tokens) of tensors about to enter a compiled function symbolic. torch.compile then fails
        loudly, rather than recompiling, if the traced code fixes that size."""
        if self.dynamic:
            for tensor in tensors:
                torch._dynamo.mark_dynamic(tensor, 1)


class TokenGraphLru:
    """Which prompt lengths keep their CUDA graphs, per stage. Every new length captures one graph per stage and
    batch bucket, each holding its own static inputs and outputs (≈ 25 MB at B=16 for a short prompt, more for long
    ones), so live prompt changes would otherwise add memory without end. `use` returns the lengths whose graphs
    go: the least recently used beyond `limit` per stage."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"token graph limit {limit} must be ≥ 1")
        self.limit = limit
        self._recent: dict[str, dict[int, None]] = {}  # per stage, lengths oldest first (dicts keep insertion order)

    def use(self, stage: str, length: int) -> list[int]:
        recent = self._recent.setdefault(stage, {})
        recent.pop(length, None)
        recent[length] = None
        evicted = []
        while len(recent) > self.limit:
            oldest = next(iter(recent))
            del recent[oldest]
            evicted.append(oldest)
        return evicted

    def lengths(self, stage: str) -> list[int]:
        """The lengths kept for `stage`, least recently used first."""
        return list(self._recent.get(stage, ()))
