"""The VAE's encode and decode as the engine compiles them on CUDA: one graph each, the same numbers as eager,
and the channels-last layout it gives the VAE changes no value."""

import numpy as np
import pytest
import torch

from services.gpu.engine import EngineConfig, StreamEngine


@pytest.fixture
def engine(tiny_bundle):
    with StreamEngine(EngineConfig(size=64, batch=2, hooks="none", compile="none"), tiny_bundle) as eng:
        yield eng


def _counting_compile(fn, graphs):
    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return torch.compile(fn, backend=counting, dynamic=False, fullgraph=True)


def test_vae_encode_and_decode_each_trace_as_one_graph_equal_to_eager(engine):
    import torch._dynamo

    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    graphs = []
    torch._dynamo.reset()
    try:
        encode = _counting_compile(engine._vae_encode_fn, graphs)
        decode = _counting_compile(engine.denoiser.decode, graphs)
        with torch.no_grad():
            latents = encode(frames)
            encode(frames)
            image, out = decode(latents)
            decode(latents)
            want_latents = engine._vae_encode_fn(frames)
            want_image, want_out = engine.denoiser.decode(want_latents)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 2  # encode and decode, each traced once and reused
    torch.testing.assert_close(latents, want_latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image, want_image, rtol=1e-5, atol=1e-5)
    assert out.dtype == torch.uint8 and out.shape == (2, 64, 64, 3)
    assert (out.int() - want_out.int()).abs().max() <= 1
    assert latents.abs().sum() > 0


def test_channels_last_vae_computes_the_same_latents_and_frames(tiny_bundle):
    """The engine turns the VAE's weights channels-last on CUDA; the same change on the CPU must not move the
    outputs beyond float rounding (a copy, so the session's shared bundle keeps its layout)."""
    import copy

    from services.gpu.denoise import EditDenoiser

    vae = copy.deepcopy(tiny_bundle.vae)
    plain = EditDenoiser(tiny_bundle.unet, vae, tiny_bundle.scheduler, 1, 64)
    frames01 = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1)).permute(0, 3, 1, 2)
    with torch.no_grad():
        want_latents = plain.encode(frames01.contiguous())
        want_image, _ = plain.decode(want_latents)
        vae.to(memory_format=torch.channels_last)
        latents = plain.encode(frames01)  # NHWC-strided input, as the engine's permuted uint8 frames are
        image, _ = plain.decode(latents)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in vae.parameters())  # the layout did change
    torch.testing.assert_close(latents, want_latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(image, want_image, rtol=1e-4, atol=1e-5)
    assert image.is_contiguous(memory_format=torch.channels_last)  # so the decoder's permute to NHWC is free
