"""The edit step of DreamLite-mobile: VAE encode, K flow-matching Euler steps of the U-Net, VAE decode.

Numerically the pipeline's own loop (same sigmas, timestep dtype, float32 Euler update, width-wise
concat with the source latent, left half kept), with the schedule computed once at start-up instead
of per call, and every shape fixed so the main path can be compiled and captured.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def flow_schedule(scheduler, steps: int, latent_h: int, latent_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (K,), sigmas (K+1,)) float32: sigmas linspace(1, 1/K, K) shifted by mu of the latent size."""
    from diffusers.pipelines.dreamlite.pipeline_dreamlite_mobile import calculate_shift

    cfg = scheduler.config
    mu = calculate_shift(
        latent_h * latent_w // 4, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16),
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device="cpu")
    return scheduler.timesteps.clone().float(), scheduler.sigmas.clone().float()


class EditDenoiser(nn.Module):
    """Static-shape main path. `unet_fn` may be the compiled U-Net; `unet` stays the plain module."""

    def __init__(self, unet, vae, scheduler, steps: int, size: int, mark_tokens=None):
        super().__init__()
        # Called on the text embeddings and mask before the U-Net (token_shapes.TokenShapes.mark).
        self.mark_tokens = mark_tokens or (lambda *tensors: None)
        self.unet = unet
        self.unet_fn = unet
        self.vae = vae
        self.steps = steps
        self.size = size
        self.latent = size // 8
        timesteps, sigmas = flow_schedule(scheduler, steps, self.latent, self.latent)
        device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
        self.register_buffer("timesteps", timesteps.to(device), persistent=False)
        self.register_buffer("sigmas", sigmas.to(device), persistent=False)
        # time_ids is [[W, H]] of the output image in pixels.
        self.register_buffer("time_ids", torch.tensor([[size, size]], device=device, dtype=dtype), persistent=False)
        self.vae_scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        self.vae_shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)

    def encode(self, frames01: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] → source latents, as the pipeline's prepare_image_latents (no scaling)."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode((frames01 * 2 - 1).to(dtype), return_dict=False)[0]

    def denoise(self, noise: torch.Tensor, source: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latents = noise
        width = latents.shape[-1]
        self.mark_tokens(embeds, mask)
        for i in range(self.steps):
            model_input = torch.cat([latents, source], dim=3)
            t = self.timesteps[i].expand(latents.shape[0]).to(latents.dtype)
            velocity = self.unet_fn(
                model_input, timestep=t, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                added_cond_kwargs={"time_ids": self.time_ids}, return_dict=False,
            )[0][..., :width]
            dt = self.sigmas[i + 1] - self.sigmas[i]
            latents = (latents.float() + dt * velocity).to(velocity.dtype)
        return latents

    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents → (image in [-1, 1] (B, 3, S, S) float32, frames uint8 (B, S, S, 3))."""
        image = self.vae.decode(latents / self.vae_scale + self.vae_shift, return_dict=False)[0].float()
        frames = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return image, frames

    def forward(self, noise, source, embeds, mask):
        latents = self.denoise(noise, source, embeds, mask)
        image, frames = self.decode(latents)
        return latents, image, frames
