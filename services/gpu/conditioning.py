"""Temporal conditioning for the LLLite adapter: the previous output, warped onto each new input.

Flow is Farnebäck: OpenCV's on the CPU (cv2 releases the GIL, so a thread pool runs frames in parallel
and ahead of the GPU), or on a CUDA engine by default the torch version in farneback.py, which computes
the same flows on the device (flow_backend). The warp itself runs on the GPU with grid_sample, which
with align_corners=True and border padding samples exactly as cv2.remap(INTER_LINEAR, BORDER_REPLICATE).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from shared.flow import backward_flow


def warp_on_device(source: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
    """source (3, H, W) or (B, 3, H, W); flows (B, H, W, 2) backward flow in pixels → (B, 3, H, W)."""
    b, h, w, _ = flows.shape
    if source.dim() == 3:
        source = source.unsqueeze(0).expand(b, -1, -1, -1)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=flows.device, dtype=torch.float32),
        torch.arange(w, device=flows.device, dtype=torch.float32), indexing="ij",
    )
    gx = (xs + flows[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flows[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(source.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


class DeviceFlow:
    """A refresh whose flows the engine computes on its device (EngineConfig.flow_backend "torch"), from
    the batch's frames already uploaded there: no host cores, no wait for another process."""

    def __init__(self, previous: np.ndarray):
        self.previous = previous  # (S, S, 3) uint8: the stream's last input before this batch


class FlowPool:
    """Computes backward flows (each current input → the previous batch's last input) in threads."""

    def __init__(self, workers: int = 8):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flow")

    def submit(self, previous: np.ndarray, currents: np.ndarray, refs=None) -> Future:
        out: Future = Future()
        remaining = [len(currents)]
        lock = threading.Lock()

        def gather(_):
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            try:
                out.set_result(np.stack([f.result() for f in futures]))
            except Exception as exc:  # a failed flow fails the refresh, visibly
                out.set_exception(exc)

        futures = [self._pool.submit(backward_flow, cur, previous) for cur in currents]

        for f in futures:
            f.add_done_callback(gather)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
