"""Each engine stage alone on a quiet GPU, under settings to compare: time and kernels per stage.

    python benchmarks/stage_kernels.py --profile synthetic-full --batch 8 --clip CLIP \\
        [--stages denoise decode] [--compile-parts unet vae] --variant default --variant conv_1x1_as_mm

The engine's own pipelined timings mix the two CUDA streams, so a stage's time there includes waiting for
SMs the other stream holds. Here each variant builds the engine in a fresh process (inductor's settings are
process-wide), runs a few batches so every stage is compiled and captured exactly as the engine does it,
then replays each captured stage graph on its own: mean time per replay over `--repeats`, and the
kernels of `--trace` replays ranked and grouped into families. CUDA only: without it the script says so
and stops. Writes one JSON record under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.encoder_profile import time_ms  # noqa: E402
from benchmarks.isolation import in_child  # noqa: E402
from shared.records import GrowingRecord, card_slug  # noqa: E402

# Settings by name: torch._inductor.config keys and EngineConfig fields. Each is exact: layouts, kernel
# choices, tile sizes and the order of float sums change, the function computed does not.
VARIANTS: dict[str, dict] = {
    "default": {"inductor": {}, "engine": {}},
    # 1×1 convolutions (the U-Net's pointwise halves of its separable convolutions) as matrix products.
    "conv_1x1_as_mm": {"inductor": {"conv_1x1_as_mm": True}, "engine": {}},
    # Weights as constants: their layout conversions are folded once instead of per call.
    "freezing": {"inductor": {"freezing": True}, "engine": {}},
    # Tile sizes of the generated elementwise and reduction kernels tuned by benchmarking neighbours.
    "coordinate_descent": {"inductor": {"coordinate_descent_tuning": True}, "engine": {}},
    # torch's own GroupNorm kernel in the U-Net; the engine's default where the U-Net is compiled is the two-pass
    # form (services/gpu/group_norm.py; the records of 2026-11-27 12:54 call it two_pass_group_norm).
    "native_group_norm": {"inductor": {}, "engine": {"group_norm": "native"}},
    # The cross-attention's padding mask in an extra query/key channel instead of a bias SDPA expands per query
    # (services/gpu/cross_attention.py).
    "key_channel_cross_attention": {"inductor": {}, "engine": {"cross_attention": "key_channel"}},
    # ... and every cross-attention's keys and values from one matrix product instead of 72 small ones.
    "key_channel_fused_kv": {"inductor": {}, "engine": {"cross_attention": "key_channel_fused_kv"}},
    # Matrix products autotuned against Triton templates (engine.AUTOTUNE_OPTIONS); the part must be in --compile-parts.
    "autotune_text_encoder": {"inductor": {}, "engine": {"autotune": ("text_encoder",)}},
    "autotune_unet": {"inductor": {}, "engine": {"autotune": ("unet",)}},
    # The U-Net's depthwise convolutions as nine shifted multiply-adds in a generated kernel (services/gpu/depthwise.py).
    "depthwise_taps": {"inductor": {}, "engine": {"depthwise": "taps"}},
    # The text encoder's q/k/v as one product of the stacked weights (EditPromptEncoder.fuse_qkv).
    "fused_qkv": {"inductor": {}, "engine": {"fused_qkv": True}},
}
# With --output-code: inductor writes only its generated code (output_code.py per compiled graph), not its IR dumps.
OUTPUT_CODE_ONLY = {"enabled": True, "output_code": True, "fx_graph": False, "fx_graph_transformed": False,
                    "ir_pre_fusion": False, "ir_post_fusion": False, "debug_log": False, "info_log": False}
STAGES = ("denoise", "decode", "vae_encode", "text_encode", "refresh_cond", "flow")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", required=True)
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stages", nargs="+", default=["denoise"], choices=STAGES)
    parser.add_argument("--compile-parts", nargs="+", default=["unet"], choices=["unet", "text_encoder", "vae"])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default: default")
    parser.add_argument("--warmup-batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--trace", type=int, default=5)
    parser.add_argument("--output-code", action="store_true",
                        help="keep inductor's generated code under OUT/inductor_<variant> and the top kernels' sources in the record")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    args.variant = args.variant or ["default"]
    # A refresh runs once per cond_refresh batches: enough warm-up batches to reach one captures its graphs.
    if {"refresh_cond", "flow"} & set(args.stages) and args.warmup_batches < 2:
        parser.error("--stages refresh_cond/flow need --warmup-batches of at least 2")
    return args


def trace_replays(graph, replays: int, frames_per_replay: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from services.gpu.kernel_trace import rank

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.graph.replay()
        torch.cuda.synchronize()
    return rank(prof, replays * frames_per_replay, cuda=True, top=25)


def keep_output_code(inductor_config, directory: Path) -> None:
    """Have inductor write each compiled graph's generated code under `directory` (and nothing else of its trace).
    Its graph cache is turned off: a graph loaded from the cache is not generated, so its code would not be written."""
    for key, value in OUTPUT_CODE_ONLY.items():
        setattr(inductor_config.trace, key, value)
    inductor_config.trace.debug_dir = str(directory)
    inductor_config.fx_graph_cache = False


def kernel_sources(directory: Path, names: list[str], limit: int = 6000) -> dict[str, str]:
    """The generated source of each named kernel, from the output_code.py files under `directory`.

    Inductor defines a kernel as `NAME = async_compile.triton('NAME', '''…''', …)`; the quoted text is kept, cut to
    `limit` characters. Kernels it did not generate (cuBLAS, cuDNN) are not there."""
    import re

    found: dict[str, str] = {}
    for path in sorted(directory.rglob("output_code.py")):
        text = path.read_text(errors="replace")
        for name in names:
            pattern = rf"^{re.escape(name)} = async_compile\.\w+\('{re.escape(name)}', '''(.*?)'''"
            if name not in found and (match := re.search(pattern, text, re.S | re.M)):
                found[name] = match.group(1)[:limit]
    return found


def measure_variant(variant: str, args: argparse.Namespace) -> dict:
    """In a fresh process: settings, engine, warm-up batches, then each wanted stage graph replayed alone."""
    import numpy as np
    import torch
    import torch._inductor.config as inductor_config

    from services.gpu.bench import clip_frames
    from services.gpu.engine import EngineConfig, StreamEngine, release_compile_workers
    from services.gpu.profiles import load_profile

    for key, value in VARIANTS[variant]["inductor"].items():  # for this process's whole life
        setattr(inductor_config, key, value)
    code_dir = Path(args.out) / f"inductor_{variant}"
    if args.output_code:
        keep_output_code(inductor_config, code_dir)
    bundle = load_profile(args.profile, "cuda")
    config = EngineConfig(size=args.size, batch=args.batch, compile_parts=tuple(args.compile_parts),
                          cond_refresh=max(1, args.warmup_batches - 1), **VARIANTS[variant]["engine"])
    frames = np.stack(list(clip_frames(args.clip, args.size, args.batch * args.warmup_batches)))
    result = {"variant": variant, "settings": VARIANTS[variant], "stages": {}}
    with StreamEngine(config, bundle) as engine:
        engine.open_stream("stages", args.prompt)
        t0 = time.perf_counter()
        for batch in frames.reshape(args.warmup_batches, args.batch, *frames.shape[1:]):
            engine.submit(batch, "stages").result(timeout=1800)
        result["warmup_s"] = time.perf_counter() - t0  # compile + capture of every stage
        if engine.compiled:
            release_compile_workers()
        for key, graph in sorted(engine.captured().items(), key=lambda kv: str(kv[0])):
            if key[0] not in args.stages:
                continue
            rows = key[1]  # every stage's key is (stage, rows, …)
            ms = time_ms(graph.graph.replay, args.repeats)
            kernels = trace_replays(graph, args.trace, rows)
            if args.output_code:
                kernels["sources"] = kernel_sources(code_dir, [r["name"] for r in kernels["top"] if r["name"].startswith("triton")])
            result["stages"]["/".join(map(str, key))] = {"ms_per_call": ms, "ms_per_frame": ms / rows, "rows": rows,
                                                         "kernels": kernels}
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def summary(result: dict) -> str:
    lines = []
    for v in result["variants"]:
        lines.append(f"{v['variant']}: warm-up {v['warmup_s']:.0f} s, {v['settings']}")
        for key, stage in v["stages"].items():
            fams = ", ".join(f"{k} {x:.3f}" for k, x in stage["kernels"]["families_ms_per_frame"].items())
            lines.append(f"  {key}: {stage['ms_per_call']:.3f} ms/call, {stage['ms_per_frame']:.3f} ms/frame ({fams})")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("stage_kernels.py replays captured CUDA graphs: it needs a CUDA GPU, and none is visible", file=sys.stderr)
        return 2
    from services.gpu.bench import _device_info

    record = {
        "kind": "stage_kernels", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), **_device_info(torch.device("cuda")), "profile": args.profile,
        "note": "random weights: speed only" if args.profile.startswith("synthetic") else "",
        "batch": args.batch, "size": args.size, "compile_parts": args.compile_parts, "variants": [],
    }
    growing = GrowingRecord(record, args.out, f"stage_kernels_{args.profile}_{card_slug(record['card'])}_B{args.batch}_S{args.size}")
    for variant in args.variant:
        record["variants"].append(in_child(measure_variant, variant, args))
        growing.save()
        print(summary({"variants": record["variants"][-1:]}), flush=True)
    return growing.done()


if __name__ == "__main__":
    raise SystemExit(main())
