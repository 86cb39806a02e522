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


@pytest.fixture(scope="module")
def own_bundle():
    """A bundle of this module's own: fuse_qkv re-points the language model's weights (same values) in place."""
    from services.gpu.profiles import load_profile

    return load_profile("synthetic-tiny", "cpu", "float32")


def test_stacked_qkv_computes_what_the_separate_projections_do(own_bundle, bikes_path):
    frames = torch.from_numpy(real_frames(bikes_path, 256, 2)).permute(0, 3, 1, 2).float() / 255
    prompts = ["oil painting", "a watercolour with soft washes"]
    separate = EditPromptEncoder(own_bundle.text_encoder, own_bundle.tokenizer, own_bundle.vision, 256)
    want, want_mask = separate.encode(frames, prompts)
    layer0 = own_bundle.text_encoder.model.language_model.layers[0].self_attn
    q_before = layer0.q_proj.weight.clone()
    x = torch.randn(3, layer0.q_proj.in_features)
    k_before = layer0.k_proj(x)

    fused = EditPromptEncoder(own_bundle.text_encoder, own_bundle.tokenizer, own_bundle.vision, 256)
    layers = len(own_bundle.text_encoder.model.language_model.layers)
    assert fused.fuse_qkv() == layers
    got, got_mask = fused.encode(frames, prompts)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_mask, want_mask)
    # The modules keep their values as views of the stack: no second copy, and other callers see no change.
    stack, bias, widths = fused._qkv[0]
    assert widths == [layer0.q_proj.out_features, layer0.k_proj.out_features, layer0.v_proj.out_features]
    assert layer0.q_proj.weight.data_ptr() == stack.data_ptr() and torch.equal(layer0.q_proj.weight, q_before)
    assert layer0.k_proj.weight.data_ptr() == stack[widths[0]:].data_ptr()
    torch.testing.assert_close(layer0.k_proj(x), k_before)
    assert bias is None or bias.shape == (sum(widths),)


def test_stacking_refuses_projections_that_are_not_plain_linear_layers(own_bundle):
    attn = own_bundle.text_encoder.model.language_model.layers[1].self_attn
    original = attn.k_proj
    attn.k_proj = torch.nn.Sequential(original)  # what an FP8 swap would leave: not a Linear
    try:
        encoder = EditPromptEncoder(own_bundle.text_encoder, own_bundle.tokenizer, own_bundle.vision, 256)
        with pytest.raises(PromptError, match="layer 1's q/k/v are not plain Linear layers"):
            encoder.fuse_qkv()
    finally:
        attn.k_proj = original


def test_stacked_qkv_traces_as_one_graph(own_bundle):
    """The engine compiles the encoder with fullgraph=True: the stacked weights (plain tensors in a list) must trace."""
    import torch._dynamo

    encoder = EditPromptEncoder(own_bundle.text_encoder, own_bundle.tokenizer, own_bundle.vision, 64)
    encoder.fuse_qkv()
    encoder.prepare(torch.device("cpu"), torch.float32)
    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids, pos, lengths = encoder.pack([encoder.layout("oil painting"), encoder.layout("pencil")])
    cos, sin = encoder.rope_tables(pos, torch.float32)
    graphs = []
    torch._dynamo.reset()
    try:
        compiled = torch.compile(encoder.forward, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)
        with torch.no_grad():
            got, _ = compiled(frames, ids, cos, sin, lengths)
            want, _ = encoder(frames, ids, cos, sin, lengths)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    torch.testing.assert_close(got, want)


def test_patches_are_embedded_as_the_vision_towers_conv3d_embeds_them(encoder, tiny_bundle, bikes_path):
    frames = torch.from_numpy(real_frames(bikes_path, 256, 2)).permute(0, 3, 1, 2).float() / 255
    patches = encoder.patchify(encoder.preprocess(frames))
    with torch.no_grad():
        want = tiny_bundle.text_encoder.model.visual.patch_embed(patches)
        got = encoder.embed_patches(patches)
    assert got.shape == want.shape == (2 * 256, tiny_bundle.text_encoder.model.visual.config.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
