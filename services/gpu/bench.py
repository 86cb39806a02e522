"""`stylecast bench`: the engine against the naive per-frame DreamLiteMobilePipeline, in one run, on one clip.

fps is frames divided by wall-clock time over the measured batches after warm-up, with every bit of
host work inside the window: decoding the clip, resizing, tokenising, copies, and handing results back.
"""

from __future__ import annotations

import logging
import platform
import queue
import shlex
import sys
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from shared.records import card_slug, host_info, write_result

from . import kernel_trace
from .engine import EngineConfig, StreamEngine, release_compile_workers
from .profiles import ModelBundle, load_profile
from .worker_stats import mean_and_p50

log = logging.getLogger(__name__)


def clip_frames(path: str, size: int, count: int):
    """Yield `count` S×S RGB frames of a clip, looping it (the decode and resize are timed work)."""
    from services.ingest.sources import open_source

    produced = 0
    while produced < count:
        got = 0
        with open_source(path, size=size) as source:
            for item in source:
                yield item.rgb
                got += 1
                produced += 1
                if produced == count:
                    return
        if got == 0:
            raise ValueError(f"clip {path} has no frames")


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


def _device_info(device: torch.device) -> dict:
    info = {"device": str(device), "python": platform.python_version(), "torch": torch.__version__, **host_info()}
    import diffusers
    import transformers

    info.update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info.update(card=f"CPU ({platform.processor() or platform.machine()})")
    return info


def run_naive(bundle: ModelBundle, frames: list[np.ndarray], prompt: str, steps: int, size: int, warmup: int = 1) -> dict:
    """The stock pipeline, one frame per call, as a user would call it."""
    from PIL import Image

    from .reference import build_reference_pipeline

    pipe = build_reference_pipeline(bundle)
    generator = torch.Generator("cpu").manual_seed(0)

    def one(frame):
        return pipe(prompt=prompt, image=Image.fromarray(frame), height=size, width=size,
                    num_inference_steps=steps, generator=generator, output_type="np").images[0]

    for frame in frames[:warmup]:
        one(frame)
    _sync(bundle.device)
    t0 = time.perf_counter()
    for frame in frames[warmup:]:
        one(frame)
    _sync(bundle.device)
    wall = time.perf_counter() - t0
    n = len(frames) - warmup
    return {"steps": steps, "frames": n, "wall_s": wall, "fps": n / wall}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(engine: StreamEngine, clip: str, prompt: str, frames_total: int, warmup_batches: int) -> dict:
    """Decode in a producer thread, submit batches as they come, collect results; time the steady state."""
    cfg = engine.config
    engine.open_stream("bench", prompt)
    batches: queue.Queue = queue.Queue(maxsize=4)

    def produce():
        batch = []
        try:
            for frame in clip_frames(clip, cfg.size, frames_total):
                batch.append(frame)
                if len(batch) == cfg.batch:
                    batches.put(np.stack(batch))
                    batch = []
            if batch:  # a partial tail batch is dropped, as the paper does (shape-locked buffers)
                log.info("dropping a partial tail batch of %d frames", len(batch))
        finally:
            batches.put(None)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    pending: queue.Queue = queue.Queue()
    done_times, outputs, errors = [], [], []

    def collect():
        while (fut := pending.get()) is not None:
            try:
                outputs.append(fut.result(timeout=600))
            except Exception as exc:  # surfaced in the submitting thread below
                errors.append(exc)
                return
            done_times.append(time.perf_counter())

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    t_start = None
    n_batches = 0
    while (batch := batches.get()) is not None:
        if n_batches == warmup_batches:
            # Start the clock once warm-up batches (compile, graph capture) are finished.
            while len(done_times) < warmup_batches and not errors:
                time.sleep(0.001)
            t_start = time.perf_counter()
        if errors:
            break
        pending.put(engine.submit(batch, "bench"))
        n_batches += 1
    pending.put(None)
    collector.join()
    if errors:
        raise RuntimeError(f"engine failed during the benchmark: {errors[0]}") from errors[0]
    if t_start is None:
        raise ValueError(f"clip too short: {n_batches} batches for {warmup_batches} warm-up batches")
    measured = outputs[warmup_batches:]
    wall = done_times[-1] - t_start
    frames = sum(len(o.frames) for o in measured)
    walls = np.diff(done_times[warmup_batches - 1 :]) * 1e3 if warmup_batches else np.diff(done_times) * 1e3
    comp = {k: [o.timings[k] for o in measured if k in o.timings] for k in measured[0].timings}
    per_frame = {f"{k.replace('_ms', '')}_ms_per_frame": float(np.mean(v)) / cfg.batch for k, v in comp.items()
                 if k in ("vae_encode_ms", "text_encoder_ms", "unet_ms", "decode_ms", "refresh_ms", "side_ms", "main_ms")}
    side, main = np.median(comp.get("side_ms", [0])), np.median(comp.get("main_ms", [0]))
    return {
        "frames": frames, "batches": len(measured), "wall_s": wall, "fps": frames / wall,
        "batch_wall_ms_p50": _percentile(walls, 50), "batch_wall_ms_p95": _percentile(walls, 95),
        "side_ms_p50": float(side), "main_ms_p50": float(main),
        "overlap": {"max_side_main_ms": float(max(side, main)), "sum_side_main_ms": float(side + main),
                    "wall_over_max": _percentile(walls, 50) / max(side, main) if max(side, main) else None},
        "latency_ms_p50": _percentile(comp.get("latency_ms", []), 50),
        "latency_ms_p95": _percentile(comp.get("latency_ms", []), 95),
        **per_frame, **gap_summary(comp), "refreshes": engine.counters["refreshes"],
    }


def gap_summary(timings: dict[str, list[float]]) -> dict[str, float]:
    """Mean and p50 of the main path's idle time between batches and of its causes (StreamEngine._gap_timings),
    and of its refresh step (which waits for the flows on refresh batches)."""
    return mean_and_p50(timings, ("main_gap_ms", "side_wait_ms", "side_lag_ms", "refresh_ms"))


def bench(profile: str, clip: str, prompt: str, config: EngineConfig, device: str = "auto", frames: int = 480,
          warmup_batches: int = 3, naive_frames: int = 6, naive_steps: tuple[int, ...] = (4, 1),
          taesd: str | None = None, out_dir: str | None = "benchmarks/results", tag: str = "",
          trace_batches: int = 0) -> dict:
    bundle = load_profile(profile, device, taesd_path=taesd)
    dev = bundle.device
    result = {
        "kind": "engine_bench", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv), **_device_info(dev),
        "profile": profile, "random_weights": bundle.random_weights,
        "note": "random weights: speed only, output is not a stylisation" if bundle.random_weights else "",
        "clip": Path(clip).name, "prompt": prompt, "config": asdict(config),
    }
    sample = list(clip_frames(clip, config.size, naive_frames))
    result["naive"] = {f"steps{k}": run_naive(bundle, sample, prompt, k, config.size) for k in naive_steps}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with StreamEngine(config, bundle) as engine:
        result["engine"] = run_engine(engine, clip, prompt, frames, warmup_batches)
        result["engine"]["group_norm"] = engine.group_norm  # what "auto" resolved to
        if trace_batches:
            stack = np.stack(list(clip_frames(clip, config.size, trace_batches * config.batch)))
            result["kernels"] = kernel_trace.trace(engine, list(stack.reshape(trace_batches, config.batch, *stack.shape[1:])), "bench")
        if engine.compiled:
            release_compile_workers()
    if dev.type == "cuda":
        result["engine"]["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        result["engine"]["peak_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
    for name, naive in result["naive"].items():
        result["engine"][f"ratio_to_naive_{name}"] = result["engine"]["fps"] / naive["fps"]
    if out_dir:
        stem = f"bench_{profile}_{card_slug(result['card'])}_B{config.batch}_S{config.size}{tag}"
        result["json"] = str(write_result(result, out_dir, stem))
    return result


def summary(result: dict) -> str:
    e = result["engine"]
    lines = [
        f"card: {result['card']}  profile: {result['profile']}  {result['note']}",
        *(f"naive {k}: {v['fps']:.2f} fps" for k, v in result["naive"].items()),
        f"engine: {e['fps']:.1f} fps over {e['frames']} frames "
        + " ".join(f"(×{e[k]:.1f} vs {k.rsplit('_', 1)[-1]})" for k in e if k.startswith("ratio_to_naive")),
        "per frame ms: " + ", ".join(f"{k.replace('_ms_per_frame', '')} {v:.2f}" for k, v in e.items() if k.endswith("_ms_per_frame")),
        f"batch wall p50/p95: {e['batch_wall_ms_p50']:.1f}/{e['batch_wall_ms_p95']:.1f} ms; side p50 {e['side_ms_p50']:.1f}, "
        f"main p50 {e['main_ms_p50']:.1f} ms",
    ]
    if "peak_memory_gib" in e:
        lines.append(f"peak GPU memory: {e['peak_memory_gib']:.2f} GiB allocated, {e['peak_reserved_gib']:.2f} GiB reserved")
    if "kernels" in result:
        lines.append(kernel_trace.summary(result["kernels"]))
    if "json" in result:
        lines.append(f"recorded: {result['json']}")
    return "\n".join(lines)
