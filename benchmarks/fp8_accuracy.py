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
`benchmarks/output_difference.py` does the same for any engine setting (the text-encoder modes among them).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.output_difference import add_run_arguments, compare, run  # noqa: E402
from services.gpu import fp8  # noqa: E402
from services.gpu.bench import _device_info, clip_frames  # noqa: E402
from services.gpu.engine import EngineConfig, EngineError  # noqa: E402
from services.gpu.profiles import load_profile  # noqa: E402
from shared.records import card_slug, host_info, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--parts", default="text_encoder,unet")
    parser.add_argument("--min-features", type=int, default=fp8.MIN_FEATURES,
                        help="narrowest layer converted (lower it to smoke-test the tiny profile)")
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
