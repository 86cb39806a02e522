"""CLIP image–text similarity from a local directory holding a tiny random-weight CLIP the test saves itself."""

import numpy as np
import pytest
import torch

from shared.quality.clip_score import ClipSimilarity
from tests.support.quality_clips import clip_frames
from tests.support.quality_models import write_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def scorer(clip_dir):
    return ClipSimilarity.from_directory(clip_dir)


def test_similarity_is_a_cosine_per_frame(scorer):
    frames = clip_frames("carphone_pristine.mp4", 3)
    values = scorer.similarities(frames, "an oil painting of a man in a car")
    assert values.shape == (3,)
    assert np.all(np.isfinite(values))
    assert np.all((values >= -1.0) & (values <= 1.0))


def test_matches_the_cosine_of_the_model_embeddings(scorer):
    frame = clip_frames("carphone_pristine.mp4", 1)[0]
    prompt = "a watercolour"
    with torch.inference_mode():
        tokens = scorer.tokenizer([prompt], return_tensors="pt")
        text = scorer.model.get_text_features(**tokens).pooler_output[0]
        from PIL import Image

        pixels = scorer.image_processor(images=[Image.fromarray(frame)], return_tensors="pt")["pixel_values"]
        image = scorer.model.get_image_features(pixel_values=pixels).pooler_output[0]
    expected = float(torch.nn.functional.cosine_similarity(text, image, dim=0))
    assert scorer.similarities([frame], prompt)[0] == pytest.approx(expected, abs=1e-5)


def test_different_prompts_score_differently(scorer):
    frame = clip_frames("carphone_pristine.mp4", 1)[0]
    a, b = (scorer.similarities([frame], p)[0] for p in ("oil painting", "pencil sketch, monochrome"))
    assert a != b


def test_empty_prompt_is_refused(scorer):
    with pytest.raises(ValueError, match="non-empty prompt"):
        scorer.similarities(clip_frames("carphone_pristine.mp4", 1), "  ")


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP weights directory not found: .*absent"):
        ClipSimilarity.from_directory(tmp_path / "absent")


def test_directory_without_a_model_is_refused_without_downloading(tmp_path):
    with pytest.raises(ValueError, match="cannot be loaded as a local CLIP model"):
        ClipSimilarity.from_directory(tmp_path)
