"""Spatial high-frequency probes (paper §III-D, §IV-A): they fall when an output is smoothed.

Always read them beside the warping error: a blurred output lowers ε_w mechanically (the paper's
smoothing artefact), and these probes are what exposes it.

Both take one frame — H×W×3 RGB or H×W gray, uint8 or float, on the 0–255 scale — and first turn it
into float32 gray with OpenCV's RGB→gray weights (0.299 R + 0.587 G + 0.114 B).

- `sobel_mean_abs`: 3×3 Sobel kernels (cv2.Sobel, ksize=3, unnormalised: a ramp of slope 1 gray
  level per pixel gives 8; borders reflected, BORDER_REFLECT_101), gradient magnitude
  sqrt(Gx² + Gy²) per pixel, averaged over all pixels.
- `hf_fft_energy`: 2-D DFT of the gray frame (numpy's unnormalised forward transform), shifted so
  the zero frequency sits at (H//2, W//2); the value is the MEAN of the spectral magnitude |F| over
  the bins whose distance from that centre, in bins, is greater than H/4 (a disc of radius H/4,
  as the paper states; for non-square frames it is still measured in bins). Unnormalised, so it
  scales like sqrt(H·W) for noise-like detail: compare values only at one resolution. No window is
  applied (as in the paper), so the jump between opposite borders of a non-periodic frame adds a
  cross of high-frequency energy that blur does not remove: an ordinary blur lowers HF-FFT less
  than the blur kernel's frequency response alone predicts.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

SOBEL_KERNEL_SIZE = 3


def gray_float(frame: np.ndarray) -> np.ndarray:
    """H×W float32 gray on the 0–255 scale from an RGB or gray frame of any real dtype."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        return frame.astype(np.float32, copy=False)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB or H×W gray frame, got shape {frame.shape}")
    return cv2.cvtColor(frame.astype(np.float32, copy=False), cv2.COLOR_RGB2GRAY)


def sobel_mean_abs(frame: np.ndarray) -> float:
    """Mean Sobel gradient magnitude (3×3 kernels, sqrt(Gx²+Gy²)) of the gray frame."""
    gray = gray_float(frame)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=SOBEL_KERNEL_SIZE)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=SOBEL_KERNEL_SIZE)
    return float(np.sqrt(gx * gx + gy * gy).mean(dtype=np.float64))


@lru_cache(maxsize=8)
def high_frequency_mask(height: int, width: int) -> np.ndarray:
    """True for shifted-spectrum bins farther than height/4 bins from the centre (H//2, W//2). Read-only (cached)."""
    ys = np.arange(height) - height // 2
    xs = np.arange(width) - width // 2
    mask = np.hypot(ys[:, None], xs[None, :]) > height / 4
    mask.flags.writeable = False
    return mask


def hf_fft_energy(frame: np.ndarray) -> float:
    """Mean |FFT| of the gray frame over bins outside the centre disc of radius H/4 (shifted spectrum)."""
    gray = gray_float(frame).astype(np.float64)
    magnitude = np.abs(np.fft.fftshift(np.fft.fft2(gray)))
    return float(magnitude[high_frequency_mask(*gray.shape)].mean())
