"""What each micro-batch holds, drawn from the seed alone, so a resumed run continues exactly.

Pairs are visited in epochs, each a seeded permutation of all pairs; micro-batch m of step s takes
sample positions (s·accum + m)·B … +B−1 of that endless sequence. Its timesteps and noise come from a
generator seeded with (seed, step, micro-batch). No random state has to be saved: step s of a
resumed run draws what step s of an uninterrupted run drew.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, micro-batch)."""
    state = np.random.SeedSequence([seed, step, micro]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator("cpu").manual_seed(int(state))


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, total: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, total]).permutation(total)


def sample_indices(seed: int, position: int, count: int, total: int) -> list[int]:
    """Pair indices at sample positions position … position+count−1 (an epoch may end inside a batch)."""
    if total < 1:
        raise ValueError("no pairs to sample from")
    return [int(_epoch_order(seed, p // total, total)[p % total]) for p in range(position, position + count)]


def micro_batch_position(step: int, micro: int, accum: int, batch: int) -> int:
    return (step * accum + micro) * batch
