"""The engine computes the same function as diffusers' DreamLiteMobilePipeline, alone and in batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.gpu.engine import EngineConfig, StreamEngine
from services.gpu.profiles import VisionPreprocess
from services.gpu.reference import build_reference_pipeline
from services.gpu.streams import noise_seed
from tests.conftest import real_frames

PROMPT = "make it an oil painting"


def test_engine_equals_pipeline_at_four_steps(tiny_bundle, bikes_path):
    """K=4, B=1, encoder fed at the frame size (the pipeline's processor then does no resampling)."""
    size = 512
    frame = real_frames(bikes_path, size, 1)[0]
    pipe = build_reference_pipeline(tiny_bundle, VisionPreprocess(min_pixels=size * size, max_pixels=size * size))
    generator = torch.Generator("cpu").manual_seed(noise_seed(7, 0))
    reference = pipe(prompt=PROMPT, image=Image.fromarray(frame), height=size, width=size, num_inference_steps=4,
                     generator=generator, output_type="np").images[0]
    config = EngineConfig(size=size, batch=1, steps=4, hooks="none", encoder_size=size, keep_latents=True)
    with StreamEngine(config, tiny_bundle) as engine:
        engine.open_stream("s", PROMPT, seed=7)
        out = engine.submit(frame, "s").result()
    expected = np.round(reference * 255)
    diff = np.abs(out.frames[0].astype(np.float64) - expected)
    assert out.frames.shape == (1, size, size, 3)
    assert diff.max() <= 1.0, f"max uint8 difference {diff.max()}"
    assert diff.mean() < 0.01
    assert reference.std() > 0.01  # the comparison is not between two blank images


def _run(bundle, parts, size=64, batch=4, first_indices=None, prompts=None):
    config = EngineConfig(size=size, batch=batch, steps=1, hooks="none", keep_latents=True)
    with StreamEngine(config, bundle) as engine:
        for name, _ in parts:
            st = engine.open_stream(name, (prompts or {}).get(name, PROMPT), seed=3)
            st.next_index = (first_indices or {}).get(name, 0)
        return engine.submit_mixed(parts).result()


def test_each_frame_of_a_batch_equals_the_frame_alone(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 4)
    batch = _run(tiny_bundle, [("s", frames)])
    for i in range(4):
        alone = _run(tiny_bundle, [("s", frames[i : i + 1])], first_indices={"s": i})
        assert np.abs(alone.frames[0].astype(int) - batch.frames[i].astype(int)).max() <= 1
        torch.testing.assert_close(alone.latents[0], batch.latents[i], atol=1e-4, rtol=1e-4)


def test_streams_with_different_prompts_share_a_batch(tiny_bundle, bikes_path):
    """Prompts of different lengths pad to one token length; padding and masks must not leak."""
    frames = real_frames(bikes_path, 64, 4)
    prompts = {"a": "oil", "b": "a watercolour painting with soft washes, paper grain and wet edges"}
    mixed = _run(tiny_bundle, [("a", frames[:2]), ("b", frames[2:])], prompts=prompts)
    assert mixed.streams == ["a", "a", "b", "b"] and mixed.prompts == [prompts["a"]] * 2 + [prompts["b"]] * 2
    alone_a = _run(tiny_bundle, [("a", frames[:2])], prompts=prompts)
    alone_b = _run(tiny_bundle, [("b", frames[2:])], prompts=prompts)
    torch.testing.assert_close(mixed.latents[:2], alone_a.latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed.latents[2:], alone_b.latents, atol=1e-4, rtol=1e-4)
    # The two prompts really condition differently (else the test above could not fail).
    swapped = _run(tiny_bundle, [("a", frames[2:])], prompts=prompts)
    assert (swapped.latents - alone_b.latents).abs().max() > 1e-3


def test_encoder_rows_of_a_batch_equal_rows_alone(tiny_bundle, bikes_path):
    from services.gpu.prompt_encoder import EditPromptEncoder

    encoder = EditPromptEncoder(tiny_bundle.text_encoder, tiny_bundle.tokenizer, tiny_bundle.vision, 256)
    frames = torch.from_numpy(real_frames(bikes_path, 128, 3)).permute(0, 3, 1, 2).float() / 255
    prompts = ["oil", "pencil sketch with heavy cross-hatching and smudges", "oil"]
    embeds, mask = encoder.encode(frames, prompts)
    for i in range(3):
        one, one_mask = encoder.encode(frames[i : i + 1], prompts[i : i + 1])
        n = int(one_mask.sum())
        assert int(mask[i].sum()) == n
        torch.testing.assert_close(embeds[i, :n], one[0, :n], atol=1e-5, rtol=1e-5)
        assert embeds[i, n:].abs().max() == 0  # padded rows are zero, as the pipeline pads


@pytest.mark.parametrize("b", [1, 3])
def test_partial_batches_pad_to_the_bucket_and_drop_the_padding(tiny_bundle, bikes_path, b):
    frames = real_frames(bikes_path, 64, b)
    out = _run(tiny_bundle, [("s", frames)], batch=4)
    assert out.frames.shape == (b, 64, 64, 3)
    assert out.indices == list(range(b))
