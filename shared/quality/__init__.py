"""Quality metrics of the paper (§III-D, §IV-A/C) on uint8 RGB frames (H×W×3 numpy), and `evaluate` for video files.

Modules, one job each:
    warping     warping error ε_w (plain, as the paper) and the occlusion-masked variant
    occlusion   forward–backward flow-consistency occlusion mask (Lai et al. 2018)
    sharpness   Sobel mean gradient magnitude and HF-FFT energy: the probes that expose smoothing
    lpips       LPIPS-Alex from a safetensors file (optional; weights are never downloaded)
    clip_score  CLIP image–text cosine from a local model directory (optional)
    video_io    decode files with PyAV, fit input frames to the output size
    report      evaluate(): all metrics for one input/output pair → dict / JSON / PNG
    plot        the PNG (matplotlib, Agg)
LPIPS and CLIP import torch/transformers lazily, so the rest stays light.
"""

from shared.quality.occlusion import occlusion_mask
from shared.quality.report import evaluate
from shared.quality.sharpness import hf_fft_energy, sobel_mean_abs
from shared.quality.video_io import (
                                     FrameCountMismatchError,
                                     VideoError,
                                     fit_to_size,
                                     iter_video_frames,
                                     probe_video,
                                     read_video_frames,
)
from shared.quality.warping import (
                                     masked_warping_error_series,
                                     pair_warping_error,
                                     series_mean,
                                     warping_error,
                                     warping_error_series,
)

__all__ = [
    "FrameCountMismatchError", "VideoError", "evaluate", "fit_to_size", "hf_fft_energy", "iter_video_frames",
    "masked_warping_error_series", "occlusion_mask", "pair_warping_error", "probe_video", "read_video_frames",
    "series_mean", "sobel_mean_abs", "warping_error", "warping_error_series",
]
