"""Farnebäck optical flow in torch, batched, for the GPU: the function `shared.flow.backward_flow` computes.

The refresh batches' flows were the service's longest wait at B=16: sixteen 512² Farnebäck calls on
the host's cores (≈ 90 ms each on one core) while libx264 encodes beside them. This is the same
algorithm with the paper's parameters (`shared.flow.FARNEBACK_PARAMS`), step for step as OpenCV
defines it, on a whole batch at once:

1. a pyramid of `levels` + 1 images, each the full-resolution gray frame blurred (Gaussian, σ from the
   level's scale) and resized bilinearly;
2. per level, a quadratic polynomial fitted around every pixel (Gaussian-weighted least squares as
   separable correlations, replicated borders);
3. the flow from the coarser level upsampled ×2, then `iterations` rounds of: the displacement
   equations at every pixel (the second image's polynomial sampled at the displaced position),
   averaged over a `winsize` box and solved 2×2.

Tests compare it with cv2.calcOpticalFlowFarneback on real frames: the same flows up to float rounding
(0.0002 px apart on average on bikes at 512²).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shared.flow import FARNEBACK_PARAMS

# Pixels within BORDER of the edge count less in the displacement equations (their polynomial fits
# reach past the image); the weights are OpenCV's.
BORDER_WEIGHTS = (0.14, 0.14, 0.4472, 0.4472, 0.4472)


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(values, device, dtype=torch.float32) -> torch.Tensor:
    """A small tensor of host numbers on `device`, made once: a CUDA graph cannot capture the host-to-device
    copy that building it takes, and the engine's warm-up calls run before any capture."""
    key = (str(values), str(device), dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return _CONSTANTS[key]


def gray(frames: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB → (B, H, W) float32, the integer gray levels cv2.COLOR_RGB2GRAY rounds to."""
    x = frames.to(torch.int32)
    y = (x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + 16384) >> 15  # OpenCV's 15-bit fixed point
    return y.to(torch.float32)


def _gaussian_taps(ksize: int, sigma: float) -> list[float]:
    if sigma <= 0:  # OpenCV's fixed kernel for a 3-tap blur with σ unset
        if ksize != 3:
            raise ValueError(f"no fixed Gaussian kernel of size {ksize}")
        return [0.25, 0.5, 0.25]
    c = (ksize - 1) / 2
    taps = [math.exp(-((i - c) ** 2) / (2 * sigma * sigma)) for i in range(ksize)]
    s = sum(taps)
    return [t / s for t in taps]


def _separable(x: torch.Tensor, taps: list[float], pad_mode: str) -> torch.Tensor:
    """Correlate (N, C, H, W) with the same 1-D taps along rows and columns, padding by pad_mode."""
    k = len(taps) // 2
    c = x.shape[1]
    w = _constant(taps, x.device, x.dtype)
    x = F.pad(x, (0, 0, k, k), mode=pad_mode)
    x = F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    x = F.pad(x, (k, k, 0, 0), mode=pad_mode)
    return F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _level_image(img: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, 1, H, W) → the pyramid image at `scale`: Gaussian blur (reflect-101 borders), then bilinear resize."""
    sigma = (1.0 / scale - 1.0) * 0.5
    ksize = max(_round_half_even(sigma * 5) | 1, 3)
    blurred = _separable(img, _gaussian_taps(ksize, sigma), "reflect")
    h, w = img.shape[-2:]
    size = (_round_half_even(h * scale), _round_half_even(w * scale))
    if size == (h, w):
        return blurred
    return F.interpolate(blurred, size=size, mode="bilinear", align_corners=False)


def _round_half_even(v: float) -> int:
    return int(round(v))  # Python rounds halves to even, as cvRound does


class PolyBasis:
    """The Gaussian-weighted correlation taps and inverse-Gram constants of the polynomial expansion."""

    def __init__(self, poly_n: int, poly_sigma: float):
        # OpenCV hands poly_n to the expansion as its half-width: poly_n=5 fits over 11×11 pixels (weights
        # beyond ±3 are < 0.5% at σ=1.2, but they count).
        n = poly_n
        g = [math.exp(-(x * x) / (2 * poly_sigma * poly_sigma)) for x in range(-n, n + 1)]
        s = sum(g)
        self.g = [v / s for v in g]
        self.xg = [x * v for x, v in zip(range(-n, n + 1), self.g)]
        self.xxg = [x * x * v for x, v in zip(range(-n, n + 1), self.g)]
        gram = torch.zeros(6, 6, dtype=torch.float64)
        for yi, y in enumerate(range(-n, n + 1)):
            for xi, x in enumerate(range(-n, n + 1)):
                w = self.g[yi] * self.g[xi]
                gram[0, 0] += w
                gram[1, 1] += w * x * x
                gram[3, 3] += w * x**4
                gram[5, 5] += w * x * x * y * y
        gram[2, 2] = gram[1, 1]
        gram[0, 3] = gram[0, 4] = gram[3, 0] = gram[4, 0] = gram[1, 1]
        gram[4, 4] = gram[3, 3]
        gram[3, 4] = gram[4, 3] = gram[5, 5]
        inv = torch.linalg.inv(gram)
        self.ig11, self.ig03, self.ig33, self.ig55 = (float(inv[i, j]) for i, j in ((1, 1), (0, 3), (3, 3), (5, 5)))

    def expand(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) → (B, 5, H, W): ∂y, ∂x, yy, xx and xy/2 coefficients (OpenCV's channel order)."""
        n = len(self.g) // 2
        dev, dt = img.device, img.dtype
        col = _constant([self.g, self.xg, self.xxg], dev, dt).view(3, 1, -1, 1)
        v = F.conv2d(F.pad(img, (0, 0, n, n), mode="replicate"), col)  # v0, v1, v2: Σ_y g·I, y·g·I, y²·g·I
        v = F.pad(v, (n, n, 0, 0), mode="replicate")
        row = lambda taps: _constant(taps, dev, dt).view(1, 1, 1, -1)  # noqa: E731
        b1 = F.conv2d(v[:, 0:1], row(self.g))
        b2 = F.conv2d(v[:, 0:1], row(self.xg))
        b3 = F.conv2d(v[:, 1:2], row(self.g))
        b4 = F.conv2d(v[:, 0:1], row(self.xxg))
        b5 = F.conv2d(v[:, 2:3], row(self.g))
        b6 = F.conv2d(v[:, 1:2], row(self.xg))
        return torch.cat([b3 * self.ig11, b2 * self.ig11, b1 * self.ig03 + b5 * self.ig33,
                          b1 * self.ig03 + b4 * self.ig33, b6 * self.ig55], dim=1)


def _border_weight(h: int, w: int, device) -> torch.Tensor:
    def axis(n):
        wts = torch.ones(n, device=device)
        k = min(len(BORDER_WEIGHTS), n)
        border = _constant(list(BORDER_WEIGHTS[:k]), device)
        wts[:k] *= border
        wts[n - k:] *= border.flip(0)
        return wts

    return axis(h).view(h, 1) * axis(w).view(1, w)


def _matrices(r0: torch.Tensor, r1: torch.Tensor, flow: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The displacement equations at every pixel: (B, 5, H, W) terms of AᵀA and AᵀΔb, flow (B, 2, H, W)."""
    b, _, h, w = r0.shape
    dx, dy = flow[:, 0], flow[:, 1]
    fx = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w) + dx
    fy = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1) + dy
    x1, y1 = torch.floor(fx), torch.floor(fy)
    ax, ay = fx - x1, fy - y1
    inside = (x1 >= 0) & (x1 < w - 1) & (y1 >= 0) & (y1 < h - 1)
    xi = x1.clamp(0, w - 2).long()
    yi = y1.clamp(0, h - 2).long()
    flat = r1.reshape(b, 5, h * w)

    def at(yy, xx):
        return torch.gather(flat, 2, (yy * w + xx).view(b, 1, h * w).expand(b, 5, h * w)).view(b, 5, h, w)

    a00, a01 = ((1 - ax) * (1 - ay)).unsqueeze(1), (ax * (1 - ay)).unsqueeze(1)
    a10, a11 = ((1 - ax) * ay).unsqueeze(1), (ax * ay).unsqueeze(1)
    s = a00 * at(yi, xi) + a01 * at(yi, xi + 1) + a10 * at(yi + 1, xi) + a11 * at(yi + 1, xi + 1)
    inside = inside.unsqueeze(1)
    # Outside the second image only the first image's quadratic terms remain (OpenCV's rule).
    s = torch.where(inside, s, torch.zeros_like(s))
    r4 = torch.where(inside[:, 0], (r0[:, 2] + s[:, 2]) * 0.5, r0[:, 2])
    r5 = torch.where(inside[:, 0], (r0[:, 3] + s[:, 3]) * 0.5, r0[:, 3])
    r6 = torch.where(inside[:, 0], (r0[:, 4] + s[:, 4]) * 0.25, r0[:, 4] * 0.5)
    r2 = (r0[:, 0] - s[:, 0]) * 0.5 + r4 * dy + r6 * dx
    r3 = (r0[:, 1] - s[:, 1]) * 0.5 + r6 * dy + r5 * dx
    r2, r3, r4, r5, r6 = (t * weight for t in (r2, r3, r4, r5, r6))
    return torch.stack([r4 * r4 + r6 * r6, (r4 + r5) * r6, r5 * r5 + r6 * r6, r4 * r2 + r6 * r3, r6 * r2 + r5 * r3], dim=1)


def _box(m: torch.Tensor, size: int) -> torch.Tensor:
    k = size // 2
    return F.avg_pool2d(F.pad(m, (k, k, k, k), mode="replicate"), size, stride=1)


def _solve(m: torch.Tensor) -> torch.Tensor:
    g11, g12, g22, h1, h2 = m.unbind(1)
    idet = 1.0 / (g11 * g22 - g12 * g12 + 1e-3)
    return torch.stack([(g11 * h2 - g12 * h1) * idet, (g22 * h1 - g12 * h2) * idet], dim=1)


def usable_levels(size: tuple[int, int], pyr_scale: float, levels: int, min_size: int = 32) -> int:
    """Pyramid levels above the full image, stopping before a side would fall under `min_size` (as OpenCV does)."""
    h, w = size
    scale = 1.0
    for k in range(levels):
        scale *= pyr_scale
        if w * scale < min_size or h * scale < min_size:
            return k
    return levels


def farneback(prev: torch.Tensor, nxt: torch.Tensor, pyr_scale: float, levels: int, winsize: int, iterations: int,
              poly_n: int, poly_sigma: float, flags: int = 0) -> torch.Tensor:
    """Dense flow (B, H, W, 2) with prev(p) ≈ next(p + flow(p)); prev (B, H, W) float32 gray levels, next the same
    or (1, H, W): one frame shared by every row, whose pyramid and polynomials are then computed once."""
    if flags:
        raise ValueError("only flags=0 (box-averaged equations, no initial flow) is implemented")
    basis = PAPER_BASIS if (poly_n, poly_sigma) == PAPER_POLY else PolyBasis(poly_n, poly_sigma)
    p0, n0 = prev.unsqueeze(1), nxt.unsqueeze(1)
    flow = None
    for k in range(usable_levels(prev.shape[-2:], pyr_scale, levels), -1, -1):
        scale = pyr_scale**k
        r0 = basis.expand(_level_image(p0, scale))
        r1 = basis.expand(_level_image(n0, scale)).expand_as(r0)
        h, w = r0.shape[-2:]
        if flow is None:
            flow = torch.zeros(prev.shape[0], 2, h, w, device=prev.device, dtype=prev.dtype)
        else:
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False) * (1.0 / pyr_scale)
        weight = _border_weight(h, w, prev.device)
        m = _matrices(r0, r1, flow, weight)
        for i in range(iterations):
            flow = _solve(_box(m, winsize))
            if i < iterations - 1:
                m = _matrices(r0, r1, flow, weight)
    return flow.permute(0, 2, 3, 1).contiguous()


# Built once, outside any traced region (its Gram-matrix inverse runs in float64 on the CPU).
PAPER_POLY = (FARNEBACK_PARAMS["poly_n"], FARNEBACK_PARAMS["poly_sigma"])
PAPER_BASIS = PolyBasis(*PAPER_POLY)


def warm_constants(device) -> None:
    """Build every constant tensor on `device` eagerly (one small call), before any trace or graph capture."""
    frames = torch.zeros(1, 64, 64, 3, dtype=torch.uint8, device=device)
    backward_flows(frames, frames[0])


def backward_flows(targets: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Backward flows of several RGB uint8 targets (B, H, W, 3) into one source (H, W, 3): (B, H, W, 2) float32,
    as `shared.flow.backward_flow(target, source)` gives for each."""
    return farneback(gray(targets), gray(source.unsqueeze(0)), **FARNEBACK_PARAMS)
