"""One engine run with and one without FP8 linears, for the CPU and GPU tests of services/gpu/fp8.py."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from services.gpu.engine import EngineConfig, StreamEngine

PARTS = ("text_encoder", "unet")


def fp8_against_reference(bundle, frames: np.ndarray, batch: int, compile_mode: str) -> tuple[float, list[int]]:
    """Cosine similarity of the final latents with FP8 linears against without; FP8 layer counts per run."""
    latents, layers = {}, []
    for parts in ((), PARTS):
        config = EngineConfig(size=frames.shape[1], batch=batch, hooks="down_blocks", compile=compile_mode,
                              keep_latents=True, fp8=parts)
        with StreamEngine(config, bundle) as engine:
            layers.append(engine.fp8_layers)
            engine.open_stream("s", "make it an oil painting", seed=3)
            futures = [engine.submit(frames[i : i + batch], "s") for i in range(0, len(frames), batch)]
            latents[parts] = torch.cat([f.result().latents for f in futures]).flatten().float()
    return F.cosine_similarity(latents[()], latents[PARTS], dim=0).item(), layers
