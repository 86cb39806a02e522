"""Occlusion mask by forward–backward flow consistency (Lai et al., ECCV 2018; after Ruder et al. 2016).

For a pixel p of the current frame t:
    F_f(p)        = flow from frame t into frame t-1 (the backward flow the warp uses),
    F_b(p + F_f)  = flow from frame t-1 into frame t, sampled bilinearly where F_f lands,
and p is occluded when the round trip does not come back:

    |F_f + F_b(p + F_f)|²  >  0.01 · (|F_f|² + |F_b(p + F_f)|²) + 0.5

(flows in pixels). The relative term tolerates error that grows with motion; the constant 0.5 px²
tolerates sub-pixel noise. Only this test is applied (no motion-boundary test). Where p + F_f falls
outside the frame, F_b is read from the nearest border pixel (replicated border, as the warp does).
"""

from __future__ import annotations

import numpy as np

from shared.flow import backward_warp

RELATIVE_TOLERANCE = 0.01
ABSOLUTE_TOLERANCE_PX2 = 0.5


def occlusion_mask(flow_to_previous: np.ndarray, flow_from_previous: np.ndarray) -> np.ndarray:
    """Boolean H×W mask on frame t's grid, True where occluded.

    flow_to_previous:   backward_flow(frame_t, frame_t_minus_1)  (on t's grid, points into t-1) = F_f
    flow_from_previous: backward_flow(frame_t_minus_1, frame_t)  (on t-1's grid, points into t) = F_b
    """
    if flow_to_previous.shape != flow_from_previous.shape or flow_to_previous.shape[-1] != 2:
        raise ValueError(
            f"flows must both be H×W×2 of one size, got {flow_to_previous.shape} and {flow_from_previous.shape}"
        )
    f_f = flow_to_previous.astype(np.float32, copy=False)
    # F_b sampled at p + F_f: exactly a backward warp of the F_b field by F_f.
    f_b_at = backward_warp(flow_from_previous.astype(np.float32, copy=False), f_f)
    round_trip = np.sum((f_f + f_b_at) ** 2, axis=-1)
    magnitudes = np.sum(f_f**2, axis=-1) + np.sum(f_b_at**2, axis=-1)
    return round_trip > RELATIVE_TOLERANCE * magnitudes + ABSOLUTE_TOLERANCE_PX2
