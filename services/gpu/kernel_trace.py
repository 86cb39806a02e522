"""Where the engine's device time goes: trace a few pipelined batches and rank the kernels.

On CUDA the kernels launched by the captured graphs are read from the profiler's device trace; on the
CPU (tests) the operators stand in for them. Kernels are grouped into families by name, so a record
says at a glance whether matrix products, convolutions, attention or the fused elementwise code
dominate.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# First match wins: inductor names its fused kernels after the operators they feed ("…_cudnn_attention_…"), so
# they come first (records before 2026-11-27 15:00 counted such kernels as attention); cuDNN's convolution kernels
# are implicit GEMMs, so they are named before "gemm".
FAMILIES = (
    ("fused (inductor)", ("triton_",)),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("convolution", ("convolution", "conv2d", "convolve", "fprop", "dgrad", "wgrad")),
    ("matmul", ("nvjet", "gemm", "cutlass", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear")),
    ("copy", ("memcpy", "memset", "copy", "nchwtonhwc", "nhwctonchw")),
)


def family(name: str) -> str:
    """The family of a kernel (or, on the CPU, an operator) by its name."""
    low = name.lower()
    for label, needles in FAMILIES:
        if any(n in low for n in needles):
            return label
    return "other"


def trace(engine, batches: list[np.ndarray], stream: str, top: int = 30) -> dict:
    """Submit `batches` back to back (as the pipeline runs them) under the profiler; rank what ran."""
    cuda = engine.cuda
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        futures = [engine.submit(b, stream) for b in batches]
        for f in futures:
            f.result(timeout=600)
        if cuda:
            torch.cuda.synchronize(engine.device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    frames = sum(len(b) for b in batches)
    result = rank(prof, frames, cuda, top)
    result.update(batches=len(batches), wall_ms=wall_ms)
    result["note"] = ("kernel times summed over both CUDA streams; they overlap, so the sum exceeds the wall"
                      if cuda else "CPU operators (no device trace on the CPU)")
    return result


# Upper bounds (µs) of a kernel's mean duration: how much of the time goes to kernels too short to fill the GPU.
DURATION_BINS_US = (5, 20, 100)
DURATION_LABELS = (*(f"<{bound}us" for bound in DURATION_BINS_US), f">={DURATION_BINS_US[-1]}us")


def duration_bin(mean_us: float) -> str:
    return next((label for bound, label in zip(DURATION_BINS_US, DURATION_LABELS) if mean_us < bound), DURATION_LABELS[-1])


def rank(prof, frames: int, cuda: bool, top: int = 30) -> dict:
    """A finished profiler's kernels (CUDA) or operators (CPU), ranked by self time and grouped into families and
    by mean duration per call."""
    rows = []
    for evt in prof.key_averages():
        if cuda:
            if evt.device_type != DeviceType.CUDA:
                continue
            ms = getattr(evt, "self_device_time_total", 0) / 1e3
        else:
            ms = evt.self_cpu_time_total / 1e3
        if ms > 0:
            rows.append({"name": evt.key, "family": family(evt.key), "calls": evt.count, "ms": ms})
    rows.sort(key=lambda r: r["ms"], reverse=True)
    total = sum(r["ms"] for r in rows)
    families: dict[str, float] = {}
    durations = {label: {"calls": 0, "ms_per_frame": 0.0} for label in DURATION_LABELS}
    for r in rows:
        families[r["family"]] = families.get(r["family"], 0.0) + r["ms"]
        cell = durations[duration_bin(r["ms"] * 1e3 / r["calls"])]
        cell["calls"] += r["calls"]
        cell["ms_per_frame"] += r["ms"] / frames if frames else 0.0
    return {
        "frames": frames,
        "device_ms_per_frame": total / frames if frames else 0.0,
        "families_ms_per_frame": {k: v / frames for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "by_mean_duration": durations,
        "top": [{**r, "share": r["ms"] / total} for r in rows[:top]],
    }


def summary(result: dict) -> str:
    fams = ", ".join(f"{k} {v:.2f}" for k, v in result["families_ms_per_frame"].items())
    lines = [f"traced {result['frames']} frames: {result['device_ms_per_frame']:.2f} ms/frame of kernels ({fams})"]
    lines += [f"  {r['share']:6.1%} {r['ms'] / result['frames']:7.3f} ms/frame {r['calls']:6d}×  {r['name'][:90]}"
              for r in result["top"][:15]]
    return "\n".join(lines)
