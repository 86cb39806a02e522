"""Sobel mean-abs and HF-FFT: blur lowers them by the amount linear filtering predicts, and they expose
the paper's smoothing artefact (an output blurred into temporal steadiness)."""

import cv2
import numpy as np
import pytest

from shared.quality.sharpness import gray_float, hf_fft_energy, high_frequency_mask, sobel_mean_abs
from shared.quality.warping import series_mean, warping_error_series
from tests.support.quality_clips import clip_frames

SIGMA = 1.5


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D kernel cv2.GaussianBlur uses for this sigma (ksize chosen by OpenCV for 8-bit: ~6σ+1)."""
    size = int(round(sigma * 3) * 2 + 1)
    return cv2.getGaussianKernel(size, sigma, cv2.CV_64F).ravel()


def circular_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur with wrap-around borders (pad by the kernel radius, blur, crop), in float32.

    Wrap-around makes the blur a circular convolution, whose DFT is exactly the kernel's response times
    the image's DFT: the premise of the bounds below."""
    radius = len(gaussian_kernel(sigma)) // 2
    pad = ((radius, radius), (radius, radius)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image.astype(np.float32), pad, mode="wrap")
    size = 2 * radius + 1
    return cv2.GaussianBlur(padded, (size, size), sigma, borderType=cv2.BORDER_REFLECT_101)[radius:-radius, radius:-radius]


def kernel_response(sigma: float, cycles_per_pixel: np.ndarray) -> np.ndarray:
    """DTFT of the symmetric 1-D kernel at the given frequencies: Σ k[n] cos(2π f n)."""
    kernel = gaussian_kernel(sigma)
    offsets = np.arange(len(kernel)) - len(kernel) // 2
    return np.cos(2 * np.pi * np.multiply.outer(cycles_per_pixel, offsets)) @ kernel


@pytest.fixture(scope="module")
def real_gray() -> np.ndarray:
    """A 128×128 crop of a real frame, as float gray on the 0–255 scale."""
    frame = clip_frames("bigbuckbunny.mp4", 1, size=(320, 180))[0][30:158, 100:228]
    return gray_float(frame)


def test_blur_scales_a_grating_by_exactly_the_kernel_response():
    # A vertical grating with 40 periods over 128 px (0.3125 cycles/px, beyond the H/4 = 0.25 cut) is an
    # eigenfunction of circular blur: every pixel of it, and so of its Sobel response and of its two
    # spectral peaks, is scaled by the kernel's response at 0.3125. Both probes must scale the same way.
    x = np.arange(128)
    grating = np.tile(128 + 60 * np.sin(2 * np.pi * 40 * x / 128), (128, 1)).astype(np.float32)
    expected = float(kernel_response(SIGMA, np.array(40 / 128)))
    blurred = circular_blur(grating, SIGMA)
    assert 0 < expected < 0.2
    assert sobel_mean_abs(blurred) / sobel_mean_abs(grating) == pytest.approx(expected, rel=1e-3)
    assert hf_fft_energy(blurred) / hf_fft_energy(grating) == pytest.approx(expected, rel=1e-3)


def test_blur_lowers_hf_fft_of_a_real_frame_within_the_derived_bound(real_gray):
    # HF-FFT(blur(f)) = mean |G·F| over the HF bins ≤ max_HF |G| · mean |F|, where G(u, v) = g(u)·g(v) is
    # the separable kernel's response: the bound is that maximum, taken over exactly the bins the metric uses.
    n = real_gray.shape[0]
    freqs = (np.arange(n) - n // 2) / n  # cycles/px of the shifted spectrum's rows and columns
    response = np.abs(np.outer(kernel_response(SIGMA, freqs), kernel_response(SIGMA, freqs)))
    bound = float(response[high_frequency_mask(n, n)].max())
    ratio = hf_fft_energy(circular_blur(real_gray, SIGMA)) / hf_fft_energy(real_gray)
    assert bound < 0.1  # exp(-2π²σ²/16) ≈ 0.062 for the continuous Gaussian
    assert ratio <= bound


def test_blur_lowers_sobel_of_a_real_frame(real_gray):
    # Gradient magnitude under a normalised non-negative kernel: |G*∇f| ≤ G*|∇f| pointwise (triangle
    # inequality), and circular blur keeps the mean of G*|∇f| equal to the mean of |∇f|, so the ratio is
    # ≤ 1 up to border effects of the Sobel itself. A real frame at σ = 1.5 loses far more than that.
    ratio = sobel_mean_abs(circular_blur(real_gray, SIGMA)) / sobel_mean_abs(real_gray)
    assert ratio < 0.75
    assert ratio > 0.05  # blur is not erasure: coarse edges survive


def test_sobel_is_the_3x3_gradient_magnitude():
    # 3×3 Sobel on a ramp of slope 1 reads 8 (2 from the central difference × 4 from the [1 2 1] smoothing).
    # Borders are reflected (BORDER_REFLECT_101), so the derivative across a border reads 0 there.
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    assert sobel_mean_abs(x) == pytest.approx(8 * 62 / 64)  # first and last column read 0
    # Diagonal ramp: the magnitude is the Euclidean sqrt(Gx² + Gy²) = 8·√2 inside (|Gx|+|Gy| would be 16),
    # 8 on the 4·62 edge pixels (one component lost), 0 in the 4 corners.
    expected = (62 * 62 * 8 * np.sqrt(2) + 4 * 62 * 8) / 64**2
    assert sobel_mean_abs(x + y) == pytest.approx(expected, rel=1e-6)


def test_hf_fft_counts_only_bins_outside_the_quarter_height_disc():
    # 128×128 gratings: 30 cycles (radius 30 bins < 128/4 = 32) is inside the disc and ignored;
    # 34 cycles (radius 34 > 32) is outside and counted.
    x = np.arange(128)
    inside = np.tile(60 * np.sin(2 * np.pi * 30 * x / 128), (128, 1))
    outside = np.tile(60 * np.sin(2 * np.pi * 34 * x / 128), (128, 1))
    assert hf_fft_energy(inside) < 1e-6 * hf_fft_energy(outside)
    # Two peaks of magnitude 60·128²/2 each, averaged over the outside bins.
    expected = 2 * (60 * 128 * 128 / 2) / high_frequency_mask(128, 128).sum()
    assert hf_fft_energy(outside) == pytest.approx(expected, rel=1e-6)


def test_uniform_frame_has_no_detail():
    flat = np.full((64, 64, 3), 117, np.uint8)
    assert sobel_mean_abs(flat) == 0.0
    assert hf_fft_energy(flat) == pytest.approx(0.0, abs=1e-6)


def test_probes_accept_rgb_uint8_and_gray_float_alike():
    frame = clip_frames("carphone_pristine.mp4", 1)[0]
    assert sobel_mean_abs(frame) == pytest.approx(sobel_mean_abs(gray_float(frame)))
    assert hf_fft_energy(frame) == pytest.approx(hf_fft_energy(gray_float(frame)))
    with pytest.raises(ValueError, match="expected an H×W×3 RGB or H×W gray frame"):
        sobel_mean_abs(frame[..., :2])


def with_flickering_texture(frame: np.ndarray, seed: int) -> np.ndarray:
    """A stand-in for a diffusion stylisation: fine texture that is redrawn every frame (as per-frame
    sampling noise is), so a sharp output flickers."""
    noise = np.random.default_rng(seed).normal(0, 28, frame.shape[:2]).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.8)[..., None]
    return np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def test_smoothed_output_is_flagged_by_sharpness_while_warping_error_drops():
    # The paper's smoothing artefact (§III-D, §V): blur an output and ε_w improves mechanically, because
    # a smooth picture is easy to predict by warping. Sobel and HF-FFT must fall far more than ε_w
    # could be trusted to improve, which is how the probes expose it.
    inputs = clip_frames("carphone_pristine.mp4", 8)
    sharp = [with_flickering_texture(f, seed) for seed, f in enumerate(inputs)]
    smooth = [cv2.GaussianBlur(f, (0, 0), 2.0) for f in sharp]

    eps_sharp = series_mean(warping_error_series(inputs, sharp))
    eps_smooth = series_mean(warping_error_series(inputs, smooth))
    sobel_sharp, sobel_smooth = (np.mean([sobel_mean_abs(f) for f in o]) for o in (sharp, smooth))
    hf_sharp, hf_smooth = (np.mean([hf_fft_energy(f) for f in o]) for o in (sharp, smooth))

    assert eps_smooth < 0.6 * eps_sharp  # ε_w "improves" …
    assert sobel_smooth < 0.6 * sobel_sharp  # … while the output lost its detail
    assert hf_smooth < 0.4 * hf_sharp
