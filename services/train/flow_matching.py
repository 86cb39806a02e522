"""The rectified-flow training objective in the conventions of the engine's scheduler.

The engine (services/gpu/denoise.py) integrates x ← x + (σ_{i+1} − σ_i)·v from σ=1 (noise) to σ=0,
feeding the U-Net `timestep = σ · num_train_timesteps` (FlowMatchEulerDiscreteScheduler: 1000·σ),
with σ shifted by the scheduler's resolution-dependent time shift (mu from the latent size). So:

    x_σ = (1 − σ)·x0 + σ·ε        the noisy latent
    v   = ε − x0                  the velocity the U-Net must predict (dx_σ/dσ)

Training σ are logit-normal (σ = sigmoid(n), n ~ N(mean, std)) and then go through the same time shift
the scheduler applies at inference, so training and inference agree on what each timestep means.
"""

from __future__ import annotations

import torch


def shift_mu(scheduler, latent_h: int, latent_w: int) -> float | None:
    """mu of the scheduler's dynamic shift for a latent of this size, as the engine computes it (None if static)."""
    from diffusers.pipelines.dreamlite.pipeline_dreamlite_mobile import calculate_shift

    cfg = scheduler.config
    if not cfg.get("use_dynamic_shifting", False):
        return None
    return calculate_shift(
        latent_h * latent_w // 4, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16),
    )


def shift_sigmas(scheduler, sigmas: torch.Tensor, mu: float | None) -> torch.Tensor:
    """The scheduler's own shift of unshifted sigmas in (0, 1]: dynamic (mu) or its static `shift`."""
    if mu is not None:
        return scheduler.time_shift(mu, 1.0, sigmas)
    shift = scheduler.config.get("shift", 1.0)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(n: int, generator: torch.Generator, scheduler, mu: float | None, *, mean: float = 0.0,
                  std: float = 1.0, shift: bool = True) -> torch.Tensor:
    """(n,) float32 σ in (0, 1): logit-normal, then (by default) the scheduler's time shift."""
    sigmas = torch.sigmoid(torch.randn(n, generator=generator) * std + mean)
    return shift_sigmas(scheduler, sigmas, mu).float() if shift else sigmas


def timesteps_for(scheduler, sigmas: torch.Tensor) -> torch.Tensor:
    """The U-Net's timestep for each σ: σ · num_train_timesteps (1000), as the scheduler's `timesteps`."""
    return sigmas * scheduler.config.num_train_timesteps


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s = sigmas.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0
