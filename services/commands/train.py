"""`stylecast train-adapter`: teacher pairs from clips, then the temporal LLLite adapter (services/train/)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command(name="train-adapter")(train_adapter)


def train_adapter(
    clips: str = typer.Option(..., help="A video file, or a folder whose video files are the training clips."),
    prompt: str = typer.Option(..., help="The edit instruction the adapter is trained for."),
    profile: str = typer.Option(..., help="synthetic-full, synthetic-tiny or a DreamLite-mobile checkpoint directory."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    steps: int = typer.Option(1000, help="Optimizer steps in all (with --resume: continue up to this step)."),
    batch: int = typer.Option(1, help="Pairs per micro-batch."),
    accum: int = typer.Option(1, help="Micro-batches per optimizer step (gradient accumulation)."),
    size: int = typer.Option(None, help="Frame size S, a multiple of 64 (default 512 on CUDA, 64 on the CPU)."),
    out: str = typer.Option("runs/adapter", help="Folder for checkpoints, the latest adapter.safetensors and loss.png."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    lr: float = typer.Option(2e-4, help="AdamW learning rate."),
    save_every: int = typer.Option(100, help="Checkpoint every N steps (and at the end)."),
    hooks: str = typer.Option("all", help="Hooks to train: all (the paper's 108), down_blocks, mid_block, up_blocks."),
    seed: int = typer.Option(0, help="Seed of the data order, timesteps and noise (and of the teacher's noise)."),
    frames_per_clip: int = typer.Option(50, help="Frames taken from the start of each clip (the paper: 50)."),
    teacher_batch: int = typer.Option(8, help="Frames per engine batch while making teacher pairs."),
    cache: str = typer.Option(None, help="Folder for the teacher-pair cache (default OUT/pairs)."),
    taesd: str = typer.Option(None, help="Folder with TAESDXL weights to use as the VAE."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Make teacher pairs (K=4 base edit + flow-warped blend, α=0.85) and train the adapter on them."""
    import torch

    from services.gpu.profiles import load_profile
    from services.ingest.errors import SourceError
    from services.train.teacher import build_pairs, find_clips, load_pair_files
    from services.train.trainer import AdapterTrainer, TrainConfig

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    size = size or (512 if cuda else 64)
    config = TrainConfig(steps=steps, batch=batch, accum=accum, lr=lr, hooks=hooks, seed=seed, save_every=save_every)
    try:
        config.validate()
        clip_paths = find_clips(clips)
        bundle = load_profile(profile, device, taesd_path=taesd)
        if bundle.random_weights:
            typer.echo(f"model {profile}: RANDOM WEIGHTS - the adapter learns the harness, not a style", err=True)
        pair_files = build_pairs(clip_paths, prompt, bundle, size=size, cache_dir=cache or Path(out) / "pairs",
                                 max_frames=frames_per_clip, batch=teacher_batch, seed=seed)
        pairs = load_pair_files(pair_files)
        typer.echo(f"{len(pairs)} teacher pairs from {len(clip_paths)} clip(s) at {size}x{size}", err=True)
        result = AdapterTrainer(bundle, pairs, prompt, config, out, progress=progress).train(resume=resume)
    except (ValueError, SourceError) as exc:  # every training, profile, engine and pairs error is a ValueError
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for note in result.notes:
        typer.echo(note)
    if result.resumed_from is not None:
        typer.echo(f"resumed at step {result.resumed_from}")
    if result.losses:
        tail = result.losses[-min(10, len(result.losses)):]
        typer.echo(f"step {result.step}: loss {result.losses[-1]:.4f} (mean of the last {len(tail)}: {sum(tail) / len(tail):.4f})")
    if result.probe_losses:
        typer.echo("probe loss (the same draws each time): "
                   + ", ".join(f"step {k}: {v:.4f}" for k, v in sorted(result.probe_losses.items())))
    typer.echo(f"adapter: {result.adapter}")
    if result.checkpoint:
        typer.echo(f"checkpoint: {result.checkpoint}")
    if result.loss_plot:
        typer.echo(f"loss curve: {result.loss_plot}")
