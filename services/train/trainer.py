"""Train the temporal LLLite adapter on teacher pairs (paper §III-A, §IV-A).

Frozen: U-Net, text encoder, VAE. Trained: the adapter, in float32, on every hook (`TemporalLLLite(unet,
"all")`, training form: the cond image goes through `conditioning1` inside the forward). Per pair:

    x0     = VAE latent of the target            source = VAE latent of the input (the edit's right half)
    σ      ~ logit-normal, shifted as the scheduler shifts (flow_matching.py); timestep = 1000·σ
    x_σ    = (1−σ)·x0 + σ·ε                      v = ε − x0
    loss   = MSE(U-Net(cat([x_σ, source], width), timestep, text embedding)[..., left half], v)

AdamW (lr 2e-4), gradient clipping at 1.0, gradient accumulation, bf16 autocast on CUDA (float32 on
the CPU, where bf16 autocast is not used). The frozen encoders' outputs never change, so they are
computed once per pair before the first step. Each step's data, timesteps and noise come from the
seed and the step number (batches.py), and checkpoints carry the optimizer state, so `resume`
continues the same trajectory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.gpu.denoise import EditDenoiser
from services.gpu.lllite import TemporalLLLite
from services.gpu.prompt_encoder import EditPromptEncoder

from .batches import micro_batch_position, sample_indices, step_generator
from .checkpoint import (
    ADAPTER_FILE,
    LATEST_ADAPTER,
    OPTIMIZER_FILE,
    CheckpointError,
    latest_checkpoint,
    load_optimizer,
    read_state,
    save_checkpoint,
)
from .flow_matching import (
    noisy_latents,
    sample_sigmas,
    shift_mu,
    timesteps_for,
    velocity_target,
)
from .pairs import PairSet
from .plot import write_loss_plot

log = logging.getLogger(__name__)

STATE_FORMAT = 1
LOSS_PLOT = "loss.png"
PREPARE_CHUNK = 8  # pairs per frozen-encoder call while preparing
# The probe: the loss on fixed draws (same pairs, σ and noise each time), at the start and at every
# checkpoint — progress without the sampling noise of the per-step loss. Its draws use step numbers
# no run reaches, so they never coincide with a training step's.
PROBE_STEP = 10**12
PROBE_DRAWS = 4


class TrainError(ValueError):
    """Training cannot start or resume as asked; the message names the setting or file."""


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps in all (a resumed run continues up to this)
    batch: int = 1  # pairs per micro-batch
    accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4
    weight_decay: float = 1e-2  # AdamW's default
    grad_clip: float = 1.0
    hooks: str = "all"  # LLLite hooks trained (108 on the real U-Net); inference may load a subset
    multiplier: float = 1.0
    logit_mean: float = 0.0  # σ = sigmoid(N(mean, std)) before the scheduler's shift
    logit_std: float = 1.0
    shift: bool = True  # apply the scheduler's resolution-dependent time shift to training σ
    seed: int = 0
    save_every: int = 100  # checkpoint every N steps (and at the end)

    def validate(self) -> None:
        for name in ("steps", "batch", "accum", "save_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.grad_clip <= 0 or self.logit_std <= 0:
            raise TrainError("lr, grad_clip and logit_std must be positive")


# Settings a resumed run must share with the run it continues (steps may grow; save_every may change).
RESUME_FIXED = tuple(f.name for f in fields(TrainConfig) if f.name not in ("steps", "save_every"))


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    probe_losses: dict[int, float]  # step → loss on the fixed probe draws
    adapter: Path  # the latest adapter (kohya layout), for EngineConfig.adapter_weights
    checkpoint: Path | None
    loss_plot: Path | None
    precision: str
    resumed_from: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PreparedPairs:
    """Frozen-model outputs of every pair, on the training device."""

    source: torch.Tensor  # (P, 4, h, w) VAE latent of the input (the edit's source half)
    x0: torch.Tensor  # (P, 4, h, w) latent of the target, in the denoiser's latent space
    embeds: torch.Tensor  # (P, L, D) text-encoder conditioning of (input frame, prompt)
    mask: torch.Tensor  # (P, L)
    conds: torch.Tensor  # (P, S, S, 3) uint8 cond images


def pairs_fingerprint(pairs: PairSet) -> str:
    digest = hashlib.sha256()
    for array in (pairs.inputs, pairs.conds, pairs.targets):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


class AdapterTrainer:
    def __init__(self, bundle, pairs: PairSet, prompt: str, config: TrainConfig, out_dir: str | os.PathLike,
                 progress: bool = True):
        config.validate()
        if pairs.size % 64 or pairs.size < 64:
            raise TrainError(f"pair frames are {pairs.size}², the engine needs a multiple of 64")
        self.bundle, self.pairs, self.prompt, self.config = bundle, pairs, prompt, config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = bundle.device
        self.autocast = self.device.type == "cuda"
        if not self.autocast and bundle.dtype != torch.float32:
            raise TrainError(f"on the CPU the frozen models must be float32 (bf16 autocast is CUDA-only), got {bundle.dtype}")
        self.precision = ("bf16 autocast (frozen models bf16, adapter float32)" if self.autocast
                          else "float32 (CPU: no bf16 autocast)")
        self.size = pairs.size
        self.latent = self.size // 8
        self.denoiser = EditDenoiser(bundle.unet, bundle.vae, bundle.scheduler, steps=1, size=self.size)
        self.mu = shift_mu(bundle.scheduler, self.latent, self.latent)
        self.adapter = TemporalLLLite(bundle.unet, config.hooks).to(self.device, torch.float32)
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.fingerprint = pairs_fingerprint(pairs)
        self.prepared: PreparedPairs | None = None

    # ---- frozen models, once ---------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast)

    @torch.no_grad()
    def prepare(self) -> PreparedPairs:
        """VAE latents of inputs and targets and the text conditioning of every pair, computed once."""
        encoder = EditPromptEncoder(self.bundle.text_encoder, self.bundle.tokenizer, self.bundle.vision)
        parts: dict[str, list[torch.Tensor]] = {"source": [], "x0": [], "embeds": [], "mask": []}
        scale, shift = self.denoiser.vae_scale, self.denoiser.vae_shift
        for start in range(0, len(self.pairs), PREPARE_CHUNK):
            stop = start + PREPARE_CHUNK
            # As the engine calls them: float32 frames in [0, 1], models in their own dtype, no autocast.
            inputs = self._frames01(self.pairs.inputs[start:stop])
            targets = self._frames01(self.pairs.targets[start:stop])
            parts["source"].append(self.denoiser.encode(inputs))
            parts["x0"].append((self.denoiser.encode(targets).float() - shift) * scale)
            embeds, mask = encoder.encode(inputs, [self.prompt] * len(inputs))
            parts["embeds"].append(embeds)
            parts["mask"].append(mask)
        cat = {k: torch.cat(v) for k, v in parts.items()}
        conds = torch.from_numpy(self.pairs.conds).to(self.device)
        self.prepared = PreparedPairs(cat["source"].to(self.bundle.dtype), cat["x0"].float(), cat["embeds"], cat["mask"], conds)
        return self.prepared

    def _frames01(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0

    # ---- one step --------------------------------------------------------------------------------------

    def micro_batch_loss(self, step: int, micro: int) -> torch.Tensor:
        cfg, data = self.config, self.prepared
        generator = step_generator(cfg.seed, step, micro)
        rows = sample_indices(cfg.seed, micro_batch_position(step, micro, cfg.accum, cfg.batch), cfg.batch, len(self.pairs))
        index = torch.tensor(rows, device=self.device)
        sigmas = sample_sigmas(cfg.batch, generator, self.bundle.scheduler, self.mu, mean=cfg.logit_mean,
                               std=cfg.logit_std, shift=cfg.shift)
        x0 = data.x0[index]
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        sigmas = sigmas.to(self.device)
        noisy = noisy_latents(x0, noise, sigmas).to(self.bundle.dtype)
        cond = data.conds[index].permute(0, 3, 1, 2).float() / 127.5 - 1.0
        self.adapter.set_cond_image(cond, cfg.multiplier)
        # Same input layout, timestep dtype and time_ids as the engine's denoise step.
        timesteps = timesteps_for(self.bundle.scheduler, sigmas).to(self.bundle.dtype)
        with self._autocast():
            prediction = self.bundle.unet(
                torch.cat([noisy, data.source[index]], dim=3), timestep=timesteps,
                encoder_hidden_states=data.embeds[index], encoder_attention_mask=data.mask[index],
                added_cond_kwargs={"time_ids": self.denoiser.time_ids}, return_dict=False,
            )[0][..., : self.latent]
        return F.mse_loss(prediction.float(), velocity_target(x0, noise).float())

    @torch.no_grad()
    def probe_loss(self) -> float:
        """Mean loss of the current adapter on the fixed probe draws (needs the training form attached)."""
        return float(np.mean([float(self.micro_batch_loss(PROBE_STEP + k, 0)) for k in range(PROBE_DRAWS)]))

    def optimizer_step(self, step: int) -> tuple[float, float]:
        """One AdamW step over `accum` micro-batches → (mean loss, gradient norm before clipping)."""
        total = 0.0
        for micro in range(self.config.accum):
            loss = self.micro_batch_loss(step, micro)
            (loss / self.config.accum).backward()
            total += float(loss.detach())
        norm = torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / self.config.accum, float(norm)

    # ---- the run ---------------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> TrainResult:
        from tqdm import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        losses, norms, start, resumed_from, probes = [], [], 0, None, {}
        if resume:
            start, losses, norms, probes = self._resume()
            resumed_from = start
        elif (existing := latest_checkpoint(self.out_dir)) is not None:
            raise TrainError(f"{self.out_dir} already holds checkpoints (latest {existing.name}): resume them, "
                             "or train into another folder")
        notes = [f"precision: {self.precision}"]
        if self.bundle.random_weights:
            notes.append("RANDOM WEIGHTS: the frozen models are random, so the adapter learns nothing about style")
        if start >= self.config.steps:
            notes.append(f"already at step {start} of {self.config.steps}: nothing to train")
            return TrainResult(start, losses, probes, self.out_dir / LATEST_ADAPTER, latest_checkpoint(self.out_dir),
                               self._plot(losses, probes), self.precision, resumed_from, notes)
        if self.prepared is None:
            self.prepare()
        self.adapter.attach("training")
        checkpoint = None
        bar = tqdm(total=self.config.steps, initial=start, desc="train-adapter", unit="step", disable=not self.progress)
        try:
            if start == 0:
                probes[0] = self.probe_loss()
            for step in range(start, self.config.steps):
                loss, norm = self.optimizer_step(step)
                losses.append(loss)
                norms.append(norm)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                done = step + 1
                if done % self.config.save_every == 0 or done == self.config.steps:
                    probes[done] = self.probe_loss()
                    checkpoint = self._save(done, losses, norms, probes)
        finally:
            bar.close()
            self.adapter.detach()  # the U-Net is shared with whoever loaded the bundle
        return TrainResult(self.config.steps, losses, probes, self.out_dir / LATEST_ADAPTER, checkpoint,
                           self._plot(losses, probes), self.precision, resumed_from, notes)

    def _state(self, step: int, losses: list[float], norms: list[float], probes: dict[int, float]) -> dict:
        import diffusers
        import transformers

        return {
            "format": STATE_FORMAT, "step": step, "config": asdict(self.config), "prompt": self.prompt,
            "profile": self.bundle.profile, "random_weights": self.bundle.random_weights, "vae": self.bundle.vae_weights,
            "size": self.size, "pairs": {"count": len(self.pairs), "sha256": self.fingerprint},
            "hooks": len(self.adapter.sites), "precision": self.precision, "device": str(self.device),
            "optimizer": {"name": "AdamW", **{k: v for k, v in self.optimizer.defaults.items()
                                               if k in ("lr", "betas", "eps", "weight_decay")}},
            "timesteps": {"distribution": "logit-normal", "mean": self.config.logit_mean, "std": self.config.logit_std,
                          "shift_mu": self.mu if self.config.shift else None, "timestep": "1000 * sigma"},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "diffusers": diffusers.__version__, "transformers": transformers.__version__},
            "losses": losses, "grad_norms": norms,
            "probe": {"draws": PROBE_DRAWS, "pairs_per_draw": self.config.batch,
                      "losses": {str(k): v for k, v in sorted(probes.items())}},
        }

    def _save(self, step: int, losses: list[float], norms: list[float], probes: dict[int, float]) -> Path:
        metadata = {"step": str(step), "prompt": self.prompt, "trained_hooks": self.config.hooks,
                    "profile": self.bundle.profile, "random_weights": str(self.bundle.random_weights).lower()}
        path = save_checkpoint(self.out_dir, step, self.adapter, self.optimizer, self._state(step, losses, norms, probes),
                               metadata)
        self._plot(losses, probes)
        log.info("step %d: checkpoint %s", step, path)
        return path

    def _plot(self, losses: list[float], probes: dict[int, float]) -> Path | None:
        if not losses:
            return None
        weights = "RANDOM WEIGHTS: the curve tests the harness, not a style" if self.bundle.random_weights else "checkpoint weights"
        title = (f"temporal LLLite adapter ({len(self.adapter.sites)} hooks), {self.bundle.profile}: {weights}\n"
                 f"prompt {self.prompt!r}; {len(self.pairs)} pairs at {self.size}²; batch {self.config.batch}×{self.config.accum}, "
                 f"lr {self.config.lr:g}; {self.precision}")
        return write_loss_plot(losses, self.out_dir / LOSS_PLOT, title, probes)

    def _resume(self) -> tuple[int, list[float], list[float], dict[int, float]]:
        checkpoint = latest_checkpoint(self.out_dir)
        if checkpoint is None:
            raise TrainError(f"--resume: no checkpoint under {self.out_dir / 'checkpoints'}")
        state = read_state(checkpoint)
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"checkpoint {checkpoint} has state format {state.get('format')}, expected {STATE_FORMAT}")
        expected = {"prompt": self.prompt, "profile": self.bundle.profile, "size": self.size,
                    "pairs": {"count": len(self.pairs), "sha256": self.fingerprint}}
        expected.update({f"config.{k}": getattr(self.config, k) for k in RESUME_FIXED})
        saved = {**state, **{f"config.{k}": v for k, v in state["config"].items()}}
        differ = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in expected.items() if saved.get(k) != v]
        if differ:
            raise TrainError(f"--resume: checkpoint {checkpoint} was made with other settings: " + "; ".join(differ))
        self.adapter.load(checkpoint / ADAPTER_FILE)
        load_optimizer(checkpoint / OPTIMIZER_FILE, self.optimizer, dict(self.adapter.named_parameters()))
        log.info("resuming from %s (step %d)", checkpoint, state["step"])
        probes = {int(k): float(v) for k, v in state["probe"]["losses"].items()}
        return int(state["step"]), list(state["losses"]), list(state["grad_norms"]), probes
