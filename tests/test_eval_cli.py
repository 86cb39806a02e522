"""`stylecast eval`: per-clip means, skipped metrics with their reasons, and exit 2 on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.support.media import make_random_bytes
from tests.support.quality_clips import clip_frames, colour_map, write_video
from tests.support.quality_models import write_random_lpips

FRAMES = 4


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_cli")
    inputs = clip_frames("carphone_pristine.mp4", FRAMES)
    return {
        "input": write_video(folder / "input.mkv", inputs),
        "output": write_video(folder / "output.mkv", [colour_map(f) for f in inputs]),
        "short": write_video(folder / "short.mkv", [colour_map(f) for f in inputs[:2]]),
        "folder": folder,
    }


def _eval(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_prints_means_and_says_what_was_skipped(videos, tmp_path):
    report_path, plot_path = tmp_path / "report.json", tmp_path / "report.png"
    result = _eval(videos["input"], videos["output"], "--json", report_path, "--plot", plot_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{FRAMES} frames at 176x144")
    for name in ("warping_error", "warping_error_occlusion_masked", "sobel_output", "hf_fft_input"):
        mean = report["metrics"][name]["mean"]
        assert any(line.split()[:2] == [name, f"{mean:.4g}"] for line in lines), name
    skipped = lines[lines.index("skipped:") + 1 :]
    assert any(line.strip().startswith("lpips_input_output: no LPIPS weights given") for line in skipped)
    assert any(line.strip().startswith("clip_similarity_output: no CLIP weights given") for line in skipped)
    assert f"report: {report_path}" in result.output


def test_lpips_runs_when_weights_are_given(videos, tmp_path):
    weights = tmp_path / "lpips.safetensors"
    write_random_lpips(weights)
    result = _eval(videos["input"], videos["output"], "--lpips-weights", weights)
    assert result.exit_code == 0, result.output
    assert any(line.split()[:1] == ["lpips_input_output"] for line in result.output.splitlines())
    skipped = result.output.split("skipped:", 1)[1]
    assert "lpips_input_output" not in skipped and "clip_similarity_output" in skipped


@pytest.mark.parametrize("case,message", [
    ("missing", "video file not found"),
    ("not_video", "not a video"),
    ("mismatch", f"input {{input!r}} has {FRAMES} frames, output {{short!r}} has 2 frames"),
    ("clip_without_prompt", "clip_weights given without a prompt"),
])
def test_bad_input_exits_2_with_the_reason(videos, case, message):
    folder = videos["folder"]
    args = {
        "missing": [folder / "nope.mp4", videos["output"]],
        "not_video": [videos["input"], make_random_bytes(folder / "noise.mp4")],
        "mismatch": [videos["input"], videos["short"]],
        "clip_without_prompt": [videos["input"], videos["output"], "--clip-weights", folder],
    }[case]
    result = _eval(*args)
    assert result.exit_code == 2, result.output
    assert message.format(input=str(videos["input"]), short=str(videos["short"])) in result.output
    assert "Traceback" not in result.output
