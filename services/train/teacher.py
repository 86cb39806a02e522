"""Teacher pairs (paper §III-A): the base model at K=4 on every frame, then a post-hoc flow-warped blend.

    decoded_t = base edit of input_t at K=4 steps (the engine with no adapter hooks)
    out_0     = decoded_0
    out_t     = α·decoded_t + (1−α)·warp(out_{t−1}),  α = 0.85

warp is the backward warp along Farnebäck flow from input_t to input_{t−1} (shared/flow.py, the
paper's parameters), the same warp the engine applies to build its conditioning. Pair t keeps
input_t, the cond image warp(out_{t−1}) and the target out_t. The blend runs in float32; what is
stored is rounded to uint8.

A hard cut inside a clip (shared.scene) restarts the blend: out_t = decoded_t and frame t makes no
pair, since a flow between two shots is meaningless and would teach the adapter to copy the old shot.

Pairs are cached per clip under a key of everything they depend on, so a second run (or `--resume`)
reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from shared.flow import backward_flow, backward_warp
from shared.scene import SceneCutDetector

from .pairs import PairSet, load_pairs, save_pairs

log = logging.getLogger(__name__)

TEACHER_ALPHA = 0.85
TEACHER_STEPS = 4
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".y4m")


class TeacherError(ValueError):
    """The clips cannot make teacher pairs (none found, too short); the message names the path."""


def find_clips(path: str | os.PathLike) -> list[Path]:
    """A video file, or every video file (by suffix) directly inside a directory, sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TeacherError(f"clips: {path} is neither a video file nor a directory")
    clips = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise TeacherError(f"clips: no video files ({', '.join(VIDEO_SUFFIXES)}) in {path}")
    return clips


def read_clip(path: Path, size: int, max_frames: int) -> np.ndarray:
    """Up to `max_frames` S×S RGB frames, centre-cropped and resized as the service's ingest does."""
    from services.ingest.sources import open_source

    frames = []
    with open_source(str(path), size=size) as source:
        for item in source:
            frames.append(item.rgb)
            if len(frames) == max_frames:
                break
    if len(frames) < 2:
        raise TeacherError(f"clip {path} has {len(frames)} frame(s); a pair needs two consecutive frames")
    return np.stack(frames)


def blend(inputs: np.ndarray, decoded: np.ndarray, alpha: float = TEACHER_ALPHA) -> tuple[PairSet, list[int]]:
    """The flow-warped blend over one clip → (pairs, frame indices where a cut restarted the blend)."""
    if inputs.shape != decoded.shape:
        raise TeacherError(f"inputs {inputs.shape} and decoded frames {decoded.shape} differ in shape")
    detector = SceneCutDetector()
    detector.update(inputs[0])
    previous = decoded[0].astype(np.float32)
    kept: dict[str, list[np.ndarray]] = {"inputs": [], "conds": [], "targets": []}
    cuts = []
    for t in range(1, len(inputs)):
        if detector.update(inputs[t]):
            cuts.append(t)
            previous = decoded[t].astype(np.float32)
            continue
        warped = backward_warp(previous, backward_flow(inputs[t], inputs[t - 1]))
        target = alpha * decoded[t].astype(np.float32) + (1 - alpha) * warped
        kept["inputs"].append(inputs[t])
        kept["conds"].append(_to_uint8(warped))
        kept["targets"].append(_to_uint8(target))
        previous = target
    if not kept["inputs"]:
        raise TeacherError("every frame after the first opens a new shot: no pairs")
    return PairSet(*(np.stack(kept[n]) for n in ("inputs", "conds", "targets"))), cuts


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def teacher_decode(engine, frames: np.ndarray, prompt: str, stream: str, seed: int = 0) -> np.ndarray:
    """Every frame through the engine (built with steps=4, hooks="none"), batch by batch, in order."""
    engine.open_stream(stream, prompt, seed=seed)
    try:
        batch = engine.config.batch
        futures = [engine.submit(frames[i : i + batch], stream) for i in range(0, len(frames), batch)]
        return np.concatenate([f.result().frames for f in futures])
    finally:
        engine.close_stream(stream)


def cache_key(clip: Path, *, prompt: str, profile: str, vae: str, size: int, steps: int, alpha: float,
              max_frames: int, seed: int) -> str:
    """Hash of everything a clip's pairs depend on (the clip file by path, size and modification time)."""
    stat = clip.stat()
    identity = {
        "clip": str(clip.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "prompt": prompt,
        "profile": profile, "vae": vae, "size": size, "steps": steps, "alpha": alpha, "max_frames": max_frames,
        "seed": seed, "format": 1,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def build_pairs(clips: list[Path], prompt: str, bundle, *, size: int, cache_dir: str | os.PathLike,
                max_frames: int = 50, steps: int = TEACHER_STEPS, alpha: float = TEACHER_ALPHA, batch: int = 8,
                seed: int = 0) -> list[Path]:
    """Make (or reuse from `cache_dir`) one pairs file per clip; returns their paths in clip order."""
    from services.gpu.engine import EngineConfig, StreamEngine

    cache_dir = Path(cache_dir)
    paths, todo = [], []
    for clip in clips:
        key = cache_key(clip, prompt=prompt, profile=bundle.profile, vae=bundle.vae_weights, size=size, steps=steps,
                        alpha=alpha, max_frames=max_frames, seed=seed)
        path = cache_dir / f"{clip.stem}-{key}.npz"
        paths.append(path)
        if path.is_file():
            log.info("teacher pairs for %s: reusing %s", clip.name, path)
        else:
            todo.append((clip, key, path))
    if not todo:
        return paths
    config = EngineConfig(size=size, batch=batch, steps=steps, hooks="none", compile="none")
    with StreamEngine(config, bundle) as engine:
        for index, (clip, key, path) in enumerate(todo):
            inputs = read_clip(clip, size, max_frames)
            decoded = teacher_decode(engine, inputs, prompt, stream=f"teacher-{index}", seed=seed)
            pairs, cuts = blend(inputs, decoded, alpha)
            pairs.meta = {
                "clip": str(clip), "key": key, "prompt": prompt, "profile": bundle.profile,
                "random_weights": bundle.random_weights, "vae": bundle.vae_weights, "size": size, "teacher_steps": steps,
                "alpha": alpha, "frames": len(inputs), "pairs": len(pairs), "cuts": cuts, "seed": seed,
            }
            save_pairs(path, pairs)
            log.info("teacher pairs for %s: %d pairs from %d frames (cuts at %s) → %s", clip.name, len(pairs),
                     len(inputs), cuts or "none", path)
    return paths


def load_pair_files(paths: list[Path]) -> PairSet:
    return PairSet.concat([load_pairs(p) for p in paths])
