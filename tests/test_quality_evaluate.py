"""evaluate(): JSON fields, the PNG, optional LPIPS / CLIP, and errors that name the problem."""

import json

import matplotlib.image
import numpy as np
import pytest

from shared.quality import FrameCountMismatchError, VideoError, evaluate, fit_to_size
from tests.support.quality_clips import clip_frames, colour_map, write_video
from tests.support.quality_models import write_random_lpips, write_tiny_clip

FRAMES = 5
ALWAYS = ("warping_error", "warping_error_occlusion_masked", "sobel_output", "sobel_input", "hf_fft_output",
          "hf_fft_input")
OPTIONAL = ("lpips_input_output", "clip_similarity_output")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Carphone (176×144, real motion) as input; its colour-mapped copy as a same-size output."""
    folder = tmp_path_factory.mktemp("videos")
    inputs = clip_frames("carphone_pristine.mp4", FRAMES)
    return {
        "input": write_video(folder / "input.mkv", inputs),
        "output": write_video(folder / "output.mkv", [colour_map(f) for f in inputs]),
        "square_output": write_video(folder / "square.mkv", [colour_map(fit_to_size(f, 96, 96)) for f in inputs]),
        "short_output": write_video(folder / "short.mkv", [colour_map(f) for f in inputs[:3]]),
        "folder": folder,
    }


def test_writes_json_with_documented_fields_and_a_png(videos, tmp_path):
    json_path, plot_path = tmp_path / "out" / "report.json", tmp_path / "out" / "report.png"
    result = evaluate(videos["input"], videos["output"], json_path=json_path, plot_path=plot_path)

    report = json.loads(json_path.read_text())  # strict JSON: no NaN tokens
    assert report == result
    assert report["schema_version"] == 1
    assert report["frames"] == FRAMES
    assert report["input"] == {"path": str(videos["input"]), "frames": FRAMES, "width": 176, "height": 144, "fps": 25.0}
    assert report["output"]["frames"] == FRAMES
    assert report["input_fitted_to_output"] is False
    assert report["flow"]["method"] == "farneback" and report["flow"]["computed_on"] == "input"
    assert report["flow"]["params"]["winsize"] == 15
    assert report["scene_cuts"] == []
    assert report["device"] is None
    for name in ALWAYS:
        metric = report["metrics"][name]
        assert metric["status"] == "ok", name
        expected_frames = list(range(1, FRAMES)) if name.startswith("warping") else list(range(FRAMES))
        assert metric["frame_indices"] == expected_frames
        assert len(metric["per_frame"]) == len(expected_frames)
        assert metric["mean"] == pytest.approx(np.mean(metric["per_frame"]))
        assert metric["description"] and metric["unit"]
    masked = report["metrics"]["warping_error_occlusion_masked"]
    assert len(masked["occluded_fraction"]) == FRAMES - 1
    assert all(0 <= f <= 1 for f in masked["occluded_fraction"])
    assert report["metrics"]["warping_error"]["mean_without_scene_cuts"] == report["metrics"]["warping_error"]["mean"]
    for name in OPTIONAL:
        assert report["metrics"][name]["status"] == "skipped"
        assert "nothing is downloaded" in report["metrics"][name]["reason"]

    image = matplotlib.image.imread(plot_path)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] > 400 and image.shape[1] > 800


def test_input_is_centre_cropped_and_resized_to_the_output(videos):
    report = evaluate(videos["input"], videos["square_output"])
    assert report["input_fitted_to_output"] is True
    assert (report["output"]["width"], report["output"]["height"]) == (96, 96)
    # The output is a pixelwise map of the fitted input, so the warp tracks it: far below the unwarped change.
    assert report["metrics"]["warping_error"]["mean"] < 10


def test_scene_cut_is_reported_and_left_out_of_the_cut_free_mean(tmp_path):
    shots = [fit_to_size(f, 96, 96) for f in clip_frames("bigbuckbunny.mp4", 4)]
    shots += [fit_to_size(f, 96, 96) for f in clip_frames("carphone_pristine.mp4", 4)]
    source = write_video(tmp_path / "cut.mkv", shots)
    styled = write_video(tmp_path / "cut_styled.mkv", [colour_map(f) for f in shots])
    report = evaluate(source, styled)
    assert report["scene_cuts"] == [4]
    plain = report["metrics"]["warping_error"]
    assert plain["per_frame"][3] == max(plain["per_frame"])  # frame 4, across the cut
    expected = np.mean([v for t, v in zip(plain["frame_indices"], plain["per_frame"]) if t != 4])
    assert plain["mean_without_scene_cuts"] == pytest.approx(expected)
    assert plain["mean_without_scene_cuts"] < 0.5 * plain["mean"]


def test_lpips_and_clip_run_when_weights_are_given(videos, tmp_path):
    lpips_path = tmp_path / "lpips.safetensors"
    write_random_lpips(lpips_path)
    clip_dir = write_tiny_clip(tmp_path / "clip")
    report = evaluate(videos["input"], videos["output"], lpips_weights=lpips_path, clip_weights=clip_dir,
                      prompt="an oil painting")
    lpips, clip = report["metrics"]["lpips_input_output"], report["metrics"]["clip_similarity_output"]
    assert lpips["status"] == "ok" and len(lpips["per_frame"]) == FRAMES and lpips["mean"] > 0
    assert clip["status"] == "ok" and clip["prompt"] == "an oil painting"
    assert all(-1 <= v <= 1 for v in clip["per_frame"])
    assert report["device"] in ("cpu", "cuda")


def test_prompt_without_clip_weights_is_skipped_with_the_reason(videos):
    report = evaluate(videos["input"], videos["output"], prompt="ukiyo-e")
    reason = report["metrics"]["clip_similarity_output"]["reason"]
    assert "no CLIP weights given" in reason and "'ukiyo-e'" in reason


def test_clip_weights_without_prompt_is_an_error(videos, tmp_path):
    with pytest.raises(ValueError, match="clip_weights given without a prompt"):
        evaluate(videos["input"], videos["output"], clip_weights=tmp_path)


def test_missing_lpips_weights_is_an_error_not_a_skip(videos, tmp_path):
    with pytest.raises(FileNotFoundError, match="LPIPS weights not found"):
        evaluate(videos["input"], videos["output"], lpips_weights=tmp_path / "absent.safetensors")


def test_missing_file_is_named(videos, tmp_path):
    with pytest.raises(FileNotFoundError, match="video file not found: .*nothing.mp4"):
        evaluate(tmp_path / "nothing.mp4", videos["output"])


def test_not_a_video_is_named(videos, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="not a video: .*notes.mp4"):
        evaluate(videos["input"], text)
    with pytest.raises(VideoError, match="not a video: .*is a directory"):
        evaluate(tmp_path, videos["output"])


def test_frame_count_mismatch_names_both_counts(videos):
    with pytest.raises(FrameCountMismatchError, match=r"input .*input.mkv' has 5 frames, output .*short.mkv' has 3 frames"):
        evaluate(videos["input"], videos["short_output"])
