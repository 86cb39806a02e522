"""`evaluate`: every quality metric of the paper for one input/output video pair, as JSON and a PNG.

The JSON (also the return value) has these fields:

    schema_version          1
    input, output           {path, frames, width, height, fps}
    input_fitted_to_output  true when input frames were centre-cropped and resized to the output size
    frames                  T, the common frame count
    flow                    {method: "farneback", computed_on: "input", params: {...}}
    scene_cuts              input frame indices where a hard cut begins (shared.scene); ε_t at those
                            frames compares unrelated pictures and is included in the means, as in the paper
    device                  where LPIPS / CLIP ran ("cpu" or "cuda"), null when neither ran
    metrics                 name → {status: "ok", description, unit, mean, per_frame, frame_indices}
                                 or {status: "skipped", description, reason}

Metric names:
    warping_error                   plain ε_w of the paper, frames 1..T-1
    warping_error_occlusion_masked  ε_w over non-occluded pixels, frames 1..T-1, plus occluded_fraction
                                    per frame; both warping metrics also carry mean_without_scene_cuts
                                    (frames in scene_cuts left out: across a cut ε_t measures the cut)
    sobel_output, sobel_input       frames 0..T-1; *_input on the fitted input, the sharpness the
    hf_fft_output, hf_fft_input     output is compared against
    lpips_input_output              LPIPS between fitted input and output, frames 0..T-1
    clip_similarity_output          cosine between each output frame and `prompt` (also in "prompt")
Undefined values (a frame whose pixels are all occluded, the mean of an empty series) are null.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np

from shared.flow import FARNEBACK_PARAMS
from shared.quality.sharpness import hf_fft_energy, sobel_mean_abs
from shared.quality.video_io import VideoError, VideoInfo, check_same_frame_count, fit_to_size, iter_video_frames, probe_video
from shared.quality.warping import pair_warping_error, series_mean
from shared.scene import SceneCutDetector

SCHEMA_VERSION = 1
CONTACT_SHEET_PAIRS = 4

_DESCRIPTIONS = {
    "warping_error": "mean |out_t - warp(out_{t-1})| over all pixels and channels, 0-255; Farneback flow on inputs, no mask",
    "warping_error_occlusion_masked": "as warping_error, averaged over pixels that pass the forward-backward flow check (Lai et al. 2018)",
    "sobel_output": "mean 3x3 Sobel gradient magnitude sqrt(Gx^2+Gy^2) of the gray output frame, 0-255 scale",
    "sobel_input": "mean 3x3 Sobel gradient magnitude of the gray (fitted) input frame, 0-255 scale",
    "hf_fft_output": "mean |FFT| of the gray output frame outside the centre disc of radius H/4 (shifted spectrum)",
    "hf_fft_input": "mean |FFT| of the gray (fitted) input frame outside the centre disc of radius H/4",
    "lpips_input_output": "LPIPS-Alex v0.1 between the (fitted) input and the output frame",
    "clip_similarity_output": "cosine between CLIP image embedding of the output frame and CLIP text embedding of the prompt",
}
_UNITS = {
    "warping_error": "gray levels (0-255)", "warping_error_occlusion_masked": "gray levels (0-255)",
    "sobel_output": "gray levels per pixel (Sobel-scaled)", "sobel_input": "gray levels per pixel (Sobel-scaled)",
    "hf_fft_output": "DFT magnitude (unnormalised)", "hf_fft_input": "DFT magnitude (unnormalised)",
    "lpips_input_output": "LPIPS distance", "clip_similarity_output": "cosine in [-1, 1]",
}


def evaluate(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
             json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None,
             lpips_weights: str | os.PathLike | None = None, clip_weights: str | os.PathLike | None = None,
             prompt: str | None = None) -> dict:
    """Compute all quality metrics of `output_path` (stylised) against `input_path` (its source).

    lpips_weights: a .safetensors file in the layout of shared.quality.lpips; clip_weights: a local
    CLIP directory (Hugging Face layout) and then `prompt` is required. Without weights those metrics
    are reported as skipped with the reason; nothing is downloaded. Raises FileNotFoundError for a
    missing file, VideoError for a file that is not a video, FrameCountMismatchError (both counts in
    the message) when the frame counts differ, ValueError for bad arguments.
    """
    if clip_weights is not None and prompt is None:
        raise ValueError("clip_weights given without a prompt: CLIP similarity compares output frames with the prompt")
    input_info, output_info = probe_video(input_path), probe_video(output_path)
    check_same_frame_count(input_info, output_info)
    lpips_model, clip, device, skipped = _load_optional_models(lpips_weights, clip_weights, prompt)

    series = _measure(input_path, output_path, input_info, output_info, lpips_model, clip, prompt)
    report = _build_report(input_info, output_info, series, skipped, prompt, device if (lpips_model or clip) else None)

    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    if plot_path is not None:
        from shared.quality.plot import write_plot

        path = Path(plot_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_plot(report, series["samples"], path)
    return report


def _load_optional_models(lpips_weights, clip_weights, prompt):
    """Load what was asked for (errors surface before decoding); say why the rest is skipped."""
    skipped: dict[str, str] = {}
    lpips_model = clip = None
    device = "cpu"
    if lpips_weights is not None or clip_weights is not None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if lpips_weights is None:
        skipped["lpips_input_output"] = "no LPIPS weights given (lpips_weights=PATH to a .safetensors file); nothing is downloaded"
    else:
        from shared.quality.lpips import load_lpips

        lpips_model = load_lpips(lpips_weights, device)
    if clip_weights is None:
        skipped["clip_similarity_output"] = (
            "no CLIP weights given (clip_weights=DIR, a local CLIP model directory, plus prompt); nothing is downloaded"
            + ("" if prompt is None else f"; prompt {prompt!r} was given but cannot be scored without them")
        )
    else:
        from shared.quality.clip_score import ClipSimilarity

        clip = ClipSimilarity.from_directory(clip_weights, device)
    return lpips_model, clip, device, skipped


def _measure(input_path, output_path, input_info: VideoInfo, output_info: VideoInfo, lpips_model, clip, prompt) -> dict:
    """One lockstep pass over both videos, holding only a bounded window of frames.

    Flow and sharpness (OpenCV / numpy, which release the GIL) run frame-parallel in a thread pool: two
    Farnebäck flows per frame dominate the cost (~0.1 s each at 512² on one core)."""
    workers = max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        series = _SeriesCollector(output_info, lpips_model, clip, prompt, pool, window=2 * workers)
        with closing(iter_video_frames(input_path)) as inputs, closing(iter_video_frames(output_path)) as outputs:
            for index, (raw_input, output) in enumerate(zip(inputs, outputs)):
                series.add(index, raw_input, output)
        return series.finish()


def _pixel_metrics(previous: tuple[np.ndarray, np.ndarray] | None, current: np.ndarray, output: np.ndarray):
    """Warping errors against the previous frame (None for frame 0) and the four sharpness values of one frame."""
    pair = None if previous is None else pair_warping_error(previous[0], current, previous[1], output)
    return pair, sobel_mean_abs(output), sobel_mean_abs(current), hf_fft_energy(output), hf_fft_energy(current)


class _SeriesCollector:
    """Per-frame metric series for one input/output pair, fed frame by frame in order."""

    def __init__(self, output_info: VideoInfo, lpips_model, clip, prompt, pool: ThreadPoolExecutor, window: int) -> None:
        self.output_info = output_info
        self.lpips_model, self.clip = lpips_model, clip
        self.text_embedding = clip.text_embedding(prompt) if clip is not None else None
        total = output_info.frames
        self.sample_indices = set(np.linspace(0, total - 1, min(CONTACT_SHEET_PAIRS, total)).round().astype(int).tolist())
        self.detector = SceneCutDetector()
        self.pool, self.window, self.pending = pool, window, deque()
        self.previous: tuple[np.ndarray, np.ndarray] | None = None  # (fitted input, output) of the last frame
        self.out: dict[str, list] = {key: [] for key in (*_DESCRIPTIONS, "occluded_fraction", "scene_cuts", "samples")}

    def add(self, index: int, raw_input: np.ndarray, output: np.ndarray) -> None:
        height, width = self.output_info.height, self.output_info.width
        if output.shape[:2] != (height, width):
            raise VideoError(f"output {self.output_info.path!r} changes frame size at frame {index}: "
                             f"{output.shape[1]}x{output.shape[0]} after {width}x{height}")
        current = fit_to_size(raw_input, height, width)
        self.pending.append(self.pool.submit(_pixel_metrics, self.previous, current, output))
        if len(self.pending) > self.window:
            self._collect(self.pending.popleft().result())
        if self.detector.update(current):
            self.out["scene_cuts"].append(index)
        if self.lpips_model is not None:
            from shared.quality.lpips import lpips_distance

            self.out["lpips_input_output"].append(lpips_distance(self.lpips_model, current, output))
        if self.clip is not None:
            self.out["clip_similarity_output"].append(float(self.clip.cosines([output], self.text_embedding)[0]))
        if index in self.sample_indices:
            self.out["samples"].append((index, current, output))
        self.previous = (current, output)

    def finish(self) -> dict[str, list]:
        while self.pending:
            self._collect(self.pending.popleft().result())
        return self.out

    def _collect(self, result) -> None:
        pair, sobel_output, sobel_input, hf_output, hf_input = result
        if pair is not None:
            self.out["warping_error"].append(pair.plain)
            self.out["warping_error_occlusion_masked"].append(pair.masked)
            self.out["occluded_fraction"].append(pair.occluded_fraction)
        self.out["sobel_output"].append(sobel_output)
        self.out["sobel_input"].append(sobel_input)
        self.out["hf_fft_output"].append(hf_output)
        self.out["hf_fft_input"].append(hf_input)


def _build_report(input_info: VideoInfo, output_info: VideoInfo, series: dict, skipped: dict[str, str],
                  prompt: str | None, device: str | None) -> dict:
    total = output_info.frames
    every_frame, after_first = list(range(total)), list(range(1, total))
    metrics: dict[str, dict] = {}
    for name in _DESCRIPTIONS:
        if name in skipped:
            metrics[name] = {"status": "skipped", "description": _DESCRIPTIONS[name], "reason": skipped[name]}
            continue
        values = np.asarray(series[name], dtype=np.float64)
        metrics[name] = {
            "status": "ok",
            "description": _DESCRIPTIONS[name],
            "unit": _UNITS[name],
            "mean": _json_number(series_mean(values)),
            "per_frame": [_json_number(v) for v in values],
            "frame_indices": after_first if name.startswith("warping_error") else every_frame,
        }
    cuts = set(series["scene_cuts"])
    for name in ("warping_error", "warping_error_occlusion_masked"):
        kept = [v for t, v in zip(after_first, series[name]) if t not in cuts]
        metrics[name]["mean_without_scene_cuts"] = _json_number(series_mean(np.asarray(kept, dtype=np.float64)))
    metrics["warping_error_occlusion_masked"]["occluded_fraction"] = [_json_number(v) for v in series["occluded_fraction"]]
    if "clip_similarity_output" not in skipped:
        metrics["clip_similarity_output"]["prompt"] = prompt
    return {
        "schema_version": SCHEMA_VERSION,
        "input": _info_dict(input_info),
        "output": _info_dict(output_info),
        "input_fitted_to_output": (input_info.width, input_info.height) != (output_info.width, output_info.height),
        "frames": total,
        "flow": {"method": "farneback", "computed_on": "input", "params": dict(FARNEBACK_PARAMS)},
        "scene_cuts": series["scene_cuts"],
        "device": device,
        "metrics": metrics,
    }


def _info_dict(info: VideoInfo) -> dict:
    return {"path": info.path, "frames": info.frames, "width": info.width, "height": info.height, "fps": info.fps}


def _json_number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
