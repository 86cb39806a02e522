"""The streaming prompt encoder computes what Qwen3-VL computes through the stock processor."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from services.gpu.prompt_encoder import (
    EDIT_DROP_IDX,
    EDIT_INSTRUCTION,
    EDIT_TEMPLATE,
    MAX_PROMPT_TOKENS,
    EditPromptEncoder,
    PromptError,
)
from services.gpu.reference import ImageOnlyEditProcessor, build_reference_pipeline
from tests.conftest import real_frames


@pytest.fixture(scope="module")
def encoder(tiny_bundle):
    return EditPromptEncoder(tiny_bundle.text_encoder, tiny_bundle.tokenizer, tiny_bundle.vision, 256)


def test_template_matches_the_pipeline(tiny_bundle):
    pipe = build_reference_pipeline(tiny_bundle)
    assert pipe.prompt_template_encode_edit == EDIT_TEMPLATE
    assert pipe.prompt_template_encode_edit_start_idx == EDIT_DROP_IDX


def test_prefix_is_the_dropped_system_prompt(encoder):
    assert encoder.prefix_len == EDIT_DROP_IDX
    assert encoder.image_tokens == 64  # 256² at patch 16, merged 2×2
    assert encoder.image_offset == 1  # right after <|vision_start|>


def test_patchify_matches_the_image_processor(encoder, tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 256, 2)
    processor = ImageOnlyEditProcessor(tiny_bundle.tokenizer, tiny_bundle.vision)
    expected = processor.image_processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    pixels = encoder.preprocess(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(encoder.patchify(pixels), expected, atol=1e-5, rtol=1e-5)


def test_encoder_equals_qwen3vl_with_the_stock_processor(encoder, tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 256, 3)
    prompts = ["oil painting", "a watercolour with soft washes and visible paper texture everywhere", "oil painting"]
    processor = ImageOnlyEditProcessor(tiny_bundle.tokenizer, tiny_bundle.vision)
    texts = [EDIT_TEMPLATE.format(EDIT_INSTRUCTION.format(p)) for p in prompts]
    inputs = processor(text=texts, images=[Image.fromarray(f) for f in frames])
    with torch.no_grad():
        hidden = tiny_bundle.text_encoder(**inputs, output_hidden_states=True).hidden_states[-1]
    embeds, mask = encoder.encode(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, prompts)
    assert embeds.shape[1] % 16 == 0  # token bucket
    for i in range(3):
        reference = hidden[i][inputs["attention_mask"][i].bool()][EDIT_DROP_IDX:]
        n = reference.shape[0]
        assert int(mask[i].sum()) == n
        torch.testing.assert_close(embeds[i, :n], reference, atol=1e-5, rtol=1e-5)
        assert embeds[i, n:].abs().max() == 0


def test_bad_prompts_are_named(encoder):
    with pytest.raises(PromptError, match="empty"):
        encoder.layout("   ")
    with pytest.raises(PromptError, match=f"limit is {MAX_PROMPT_TOKENS}"):
        encoder.layout("paint " * 2000)


def test_non_latin_prompt_encodes(encoder):
    layout = encoder.layout("油絵のように、筆致を残して")
    assert layout.length > encoder.image_tokens + 2


def test_forward_compiles_as_one_graph_equal_to_eager(encoder, tiny_bundle):
    """The engine compiles the encoder with fullgraph=True on CUDA: no graph break may hide in it, and the
    traced function must compute what the eager one does (checked here with the CPU-friendly aot_eager)."""
    import torch._dynamo

    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids, pos, lengths = encoder.pack([encoder.layout("oil painting"), encoder.layout("a much longer instruction, in pencil")])
    cos, sin = encoder.rope_tables(pos, torch.float32)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    encoder.prepare(torch.device("cpu"), torch.float32)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(encoder.forward, backend=counting, dynamic=False, fullgraph=True)
        with torch.no_grad():
            got, got_mask = compiled(frames, ids, cos, sin, lengths)
            compiled(frames, ids, cos, sin, lengths)
            want, want_mask = encoder(frames, ids, cos, sin, lengths)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1  # one trace, reused on the second call
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.abs().sum() > 0
