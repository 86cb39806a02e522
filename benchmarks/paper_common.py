"""What the paper_table*.py scripts share: arguments, the record they write, frames, engine runs, quality.

Every script runs on a GPU at the paper's sizes (synthetic-full or a checkpoint) and, with
`--profile synthetic-tiny --device cpu`, at toy sizes on the CPU as a smoke check: sizes, frame counts
and repeats default by device, as `stylecast bench` does. Each writes one JSON record to
benchmarks/results/ with the card, versions, command, settings and results, and says plainly when
weights are random (quality numbers then test the harness, not a style) and when LPIPS/CLIP weights
were not given (those columns are null).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from shared.records import cpu_name

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"
RANDOM_ADAPTER_SCALE = 0.2  # random non-zero LLLite weights: an adapter that acts, standing in for a trained one
RANDOM_WEIGHTS_NOTE = ("RANDOM WEIGHTS: outputs are not a stylisation, so quality columns are meaningless for style; "
                       "they test the harness. Speed columns are real for these shapes.")


# ---- arguments --------------------------------------------------------------------------------------

def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--profile", default="synthetic-full", help="synthetic-full, synthetic-tiny or a checkpoint directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--size", type=int, default=None, help="frame size S (default 512 on CUDA, 64 on the CPU)")
    p.add_argument("--prompt", default="make it an oil painting")
    p.add_argument("--taesd", default=None, help="folder with TAESDXL weights to use as the VAE")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON record ('' to skip writing)")
    p.add_argument("--tag", default="", help="suffix for the JSON file name")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """Parse `argv` (the process's arguments when None) and keep the command that reproduces the run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.command = " ".join(shlex.quote(a) for a in ["python", f"benchmarks/{Path(script).name}", *argv])
    return args


def add_adapter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default=None,
                   help="LLLite weights; 'random' = random non-zero weights (the default on random-weight profiles), "
                        "'zero' = zero-initialised (then the adapter has no effect)")


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", default=None,
                   help="torch.compile mode of the engine (default: the engine's); 'none' skips compiling "
                        "(CUDA graphs only: minutes less start-up per batch shape on an H100)")


def compile_option(args) -> dict:
    """EngineConfig keyword for --compile: empty when the engine's default applies."""
    return {"compile": args.compile} if args.compile else {}


def add_quality_args(p: argparse.ArgumentParser) -> None:
    add_adapter_arg(p)
    add_compile_arg(p)
    p.add_argument("--lpips-weights", default=None, help="LPIPS-Alex .safetensors; without it LPIPS columns are null")
    p.add_argument("--clip-weights", default=None, help="local CLIP directory; without it CLIP columns are null")


def is_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def by_device(args, gpu, cpu):
    """The GPU default or the CPU smoke default, by where the run goes."""
    return gpu if is_cuda(args.device) else cpu


# ---- models -----------------------------------------------------------------------------------------

def load_bundle(args):
    from services.gpu import (
        profiles,  # looked up at call time, so tests can hand in a loaded bundle
    )

    return profiles.load_profile(args.profile, args.device, taesd_path=args.taesd)


def resolve_adapter(args, bundle, hooks: str = "down_blocks") -> tuple[str | None, str]:
    """(weights path or None, what the adapter is) for `--adapter`."""
    from services.gpu.lllite import TemporalLLLite

    choice = args.adapter or ("random" if bundle.random_weights else "zero")
    if choice == "zero":
        return None, "zero-initialised: the adapter has no effect, so refresh settings cannot change outputs"
    if choice != "random":
        if not Path(choice).is_file():
            raise SystemExit(f"error: adapter weights {choice} not found")
        return choice, f"weights {choice}"
    adapter = TemporalLLLite(bundle.unet, "all")
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * RANDOM_ADAPTER_SCALE)
    folder = tempfile.mkdtemp(prefix="paper_adapter_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / "random_adapter.safetensors"
    adapter.save(path)
    return str(path), (f"random non-zero weights (seed 11, N(0, {RANDOM_ADAPTER_SCALE}²)), standing in for a trained "
                       f"adapter; {hooks} hooks loaded")


class QualityModels:
    """LPIPS and CLIP when their weights were given; `absent` says which were not, and why."""

    def __init__(self, args, device):
        self.lpips = self.clip = self.text = None
        self.absent: dict[str, str] = {}
        if args.lpips_weights:
            from shared.quality.lpips import load_lpips

            self.lpips = load_lpips(args.lpips_weights, device)
        else:
            self.absent["lpips"] = "no --lpips-weights given: LPIPS columns are null (nothing is downloaded)"
        if args.clip_weights:
            from shared.quality.clip_score import ClipSimilarity

            self.clip = ClipSimilarity.from_directory(args.clip_weights, device)
            self.text = self.clip.text_embedding(args.prompt)
        else:
            self.absent["clip"] = "no --clip-weights given: CLIP columns are null (nothing is downloaded)"

    def describe(self) -> dict:
        return {"lpips": "LPIPS-Alex" if self.lpips else None, "clip": "CLIP" if self.clip else None,
                "absent": self.absent}


# ---- frames -----------------------------------------------------------------------------------------

def resolve_clip(spec: str) -> str:
    from services.cli import resolve_source

    return resolve_source(spec)


def read_frames(spec: str, size: int, count: int, start: int = 0, loop: bool = True) -> np.ndarray:
    """`count` S×S frames of a clip from frame `start`, looping it when `loop` (decoded as ingest does)."""
    from services.ingest.sources import open_source

    path = resolve_clip(spec)
    frames: list[np.ndarray] = []
    while len(frames) < count:
        got = 0
        with open_source(path, size=size) as source:
            for item in source:
                if item.index < start:
                    continue
                frames.append(item.rgb)
                got += 1
                if len(frames) == count:
                    break
        if got == 0 or (not loop and len(frames) < count):
            raise SystemExit(f"error: clip {spec} has too few frames after {start} for {count}")
    return np.stack(frames)


def clip_fps(spec: str) -> float | None:
    from shared.quality.video_io import probe_video

    return probe_video(resolve_clip(spec)).fps


# ---- engine runs ------------------------------------------------------------------------------------

@dataclass
class StreamRun:
    outputs: np.ndarray  # (T, S, S, 3) uint8, T = whole batches only
    batch_walls_ms: list[float]  # between consecutive batch completions, after warm-up
    latencies_ms: list[float]  # submit → result, after warm-up
    fps: float  # measured frames / wall after warm-up
    refreshes: dict = field(default_factory=dict)
    timings_ms: dict = field(default_factory=dict)  # mean per batch of each engine stage, after warm-up


def run_stream(engine, frames: np.ndarray, prompt: str, warmup_batches: int, name: str = "bench") -> StreamRun:
    """Submit a clip batch by batch as one stream (the engine pipelines on CUDA), collect every output.

    The clock starts when the last warm-up batch is done (compilation, graph capture) and stops when the
    last batch is; partial tail batches are dropped, as the paper does.
    """
    if warmup_batches < 1:
        raise SystemExit("error: at least one warm-up batch (the paper excludes the first batch of every run)")
    batch = engine.config.batch
    whole = len(frames) // batch * batch
    if whole // batch <= warmup_batches:
        raise SystemExit(f"error: {len(frames)} frames make {whole // batch} batches, not more than {warmup_batches} warm-up")
    st = engine.open_stream(name, prompt)
    done: list[float] = []
    futures = []
    for start in range(0, whole, batch):
        future = engine.submit(frames[start : start + batch], name)
        future.add_done_callback(lambda _f: done.append(time.perf_counter()))
        futures.append(future)
    results = [f.result() for f in futures]
    engine.close_stream(name)
    measured = results[warmup_batches:]
    wall_s = done[-1] - done[warmup_batches - 1]
    keys = ("side_ms", "main_ms", "text_encoder_ms", "vae_encode_ms", "unet_ms", "decode_ms", "refresh_ms")
    return StreamRun(
        outputs=np.concatenate([r.frames for r in results]),
        batch_walls_ms=[float(w) for w in np.diff(done[warmup_batches - 1 :]) * 1e3],
        latencies_ms=[float(r.timings["latency_ms"]) for r in measured],
        fps=len(measured) * batch / wall_s,
        refreshes=dict(st.refresh_reasons),
        timings_ms={k: float(np.mean([r.timings[k] for r in measured])) for k in keys if k in measured[0].timings},
    )


# ---- quality ----------------------------------------------------------------------------------------

def input_flows(inputs: np.ndarray) -> list[np.ndarray]:
    """Farnebäck flow from each input frame t ≥ 1 to frame t−1 (computed once, reused for every run)."""
    from shared.flow import backward_flow

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda t: backward_flow(inputs[t], inputs[t - 1]), range(1, len(inputs))))


def quality(outputs: np.ndarray, flows: list[np.ndarray], models: QualityModels) -> dict:
    """ε_w (plain, paper), Sobel and HF-FFT of the outputs; CLIP to the prompt when its weights were given."""
    from shared.quality import hf_fft_energy, sobel_mean_abs, warping_error

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        eps = list(pool.map(lambda t: warping_error(outputs[t - 1], outputs[t], flows[t - 1]), range(1, len(outputs))))
        sobel = list(pool.map(sobel_mean_abs, outputs))
        hf = list(pool.map(hf_fft_energy, outputs))
    result = {"warping_error": float(np.mean(eps)), "sobel": float(np.mean(sobel)), "hf_fft": float(np.mean(hf)),
              "clip_similarity": None}
    if models.clip is not None:
        result["clip_similarity"] = float(np.mean(models.clip.cosines(list(outputs), models.text)))
    return result


def distance(a: np.ndarray, b: np.ndarray, models: QualityModels) -> dict:
    """Frame-aligned L1 (0–255) and LPIPS (when its weights were given) between two output sequences."""
    from shared.quality.lpips import lpips_distance

    l1 = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())
    lpips = None
    if models.lpips is not None:
        lpips = float(np.mean([lpips_distance(models.lpips, x, y) for x, y in zip(a, b)]))
    return {"l1": l1, "lpips": lpips}


def percentile(values, q) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


# ---- the record -------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    import cv2
    import diffusers
    import transformers

    info = {"device": str(device), "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "cpu": cpu_name(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info["card"] = f"CPU ({info['cpu']})"
    return info


def record(table: str, title: str, args, bundle, settings: dict, results, notes: list[str] | None = None,
           quality_models: QualityModels | None = None) -> dict:
    notes = list(notes or [])
    if bundle.random_weights:
        notes.insert(0, RANDOM_WEIGHTS_NOTE)
    if bundle.device.type != "cuda":
        notes.append("CPU smoke run at toy sizes: checks that the script works, not the paper's numbers")
    return {
        "kind": f"paper_{table}", "title": title, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": args.command, **environment(bundle.device),
        "profile": args.profile, "random_weights": bundle.random_weights, "models": bundle.describe(),
        "quality_models": quality_models.describe() if quality_models else None,
        "settings": settings, "results": results, "notes": notes,
    }


def write_record(rec: dict, args, table: str) -> Path | None:
    if not args.out:
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    card = "".join(c if c.isalnum() or c in "-." else "_" for c in rec["card"])
    profile = Path(args.profile).name
    path = out / f"paper_{table}_{profile}_{card}{args.tag}_{stamp}.json"
    path.write_text(json.dumps(rec, indent=2, allow_nan=False) + "\n")
    print(f"recorded: {path}")
    return path
