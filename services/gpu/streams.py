"""Per-stream state the engine keeps between batches, and the schedules that read it.

Every stream has its own prompt, noise seed, adapter conditioning cache, previous input/output and
refresh schedule, so frames of several streams can share a batch and each still gets the output it
would get alone (DESIGN §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

NOISE_SEED_STRIDE = 1_000_003


def noise_seed(stream_seed: int, frame_index: int) -> int:
    """Seed of a frame's initial noise: depends only on the stream's seed and the frame's index."""
    return (stream_seed * NOISE_SEED_STRIDE + frame_index) % (2**63)


def frame_noise(stream_seed: int, indices: range | list[int], shape: tuple[int, int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """(len(indices), C, h, w) float32 noise drawn on the CPU, so every device and batch sees the same."""
    out = out if out is not None else torch.empty((len(indices), *shape), dtype=torch.float32)
    generator = torch.Generator("cpu")
    for row, index in enumerate(indices):
        generator.manual_seed(noise_seed(stream_seed, index))
        torch.randn(shape, generator=generator, out=out[row])
    return out


@dataclass
class StreamState:
    name: str
    prompt: str
    seed: int = 0
    multiplier: float = 1.0
    next_index: int = 0  # index of the next frame: keys its noise
    batches: int = 0  # batches this stream took part in
    last_input: np.ndarray | None = None  # host copy of the previous batch's last input (flow source)
    last_output: torch.Tensor | None = None  # device (3, S, S) in [-1, 1], written by the main stage
    last_output_ready: object = None  # CUDA event after which last_output exists (cuda_streams 3: another stream)
    cond: dict[str, torch.Tensor] | None = None  # LLLite embeddings of the last refresh
    cond_version: int = 0
    refreshes: int = 0
    te_cache: tuple[torch.Tensor, torch.Tensor] | None = None  # approximate text-encoder modes only
    te_cache_prompt: str | None = None
    te_age: int = 0
    force_refresh: bool = False  # set by scene-cut detection or an operator
    refresh_probe: object | None = None  # the refresh policy's per-stream trigger state (refresh_policy.RefreshProbe)
    refresh_reasons: dict[str, int] = field(default_factory=dict)  # conditioning refreshes decided, by reason
    stats: dict = field(default_factory=lambda: {"frames": 0, "batches": 0})

    def refresh_due(self, every: int) -> bool:
        """The first batch has no previous output; then batch 1, 1+N, 1+2N, … rebuild the conditioning."""
        if self.batches == 0:
            return False
        return self.force_refresh or (self.batches - 1) % every == 0

    def te_due(self, mode: str, every: int, prompt: str) -> bool:
        """Whether the text encoder must run for this stream (always, in the exact per-frame mode)."""
        if mode == "per_frame":
            return True
        if self.te_cache is None or self.te_cache_prompt != prompt:
            return True
        return mode == "batch_one" or self.te_age >= every
