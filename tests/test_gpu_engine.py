"""GPU-only checks (skipped without CUDA): graphs + compile compute what the CPU engine computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.gpu.engine import EngineConfig, StreamEngine
from tests.conftest import real_frames
from tests.support.fp8_runs import fp8_against_reference
from tests.support.refresh_padding import own_rows_and_whole_batch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_bundle(tiny_bundle):
    return tiny_bundle.to("cuda", torch.bfloat16)  # the CPU bundle's weights: the comparison is like for like


@pytest.fixture(scope="module")
def cuda_fp32_bundle(tiny_bundle):
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32, not TF32 convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    return tiny_bundle.to("cuda", torch.float32)


@pytest.mark.parametrize("compile_mode,graphs,dtype,tolerance", [
    ("none", False, "float32", 0.05), ("none", True, "float32", 0.05), ("default", True, "float32", 0.5),
    ("default", True, "bfloat16", 8.0),
])
def test_cuda_engine_matches_the_cpu_engine(request, tiny_bundle, bikes_path, compile_mode, graphs, dtype, tolerance):
    cuda_bundle = request.getfixturevalue("cuda_fp32_bundle" if dtype == "float32" else "cuda_bundle")
    frames = real_frames(bikes_path, 128, 16)
    results = {}
    for name, bundle, cfg in (
        ("cpu", tiny_bundle, EngineConfig(size=128, batch=4, hooks="down_blocks", cond_refresh=2)),
        ("cuda", cuda_bundle, EngineConfig(size=128, batch=4, hooks="down_blocks", cond_refresh=2, compile=compile_mode, cuda_graphs=graphs)),
    ):
        with StreamEngine(cfg, bundle) as engine:
            engine.open_stream("s", "make it an oil painting", seed=2)
            futures = [engine.submit(frames[i : i + 4], "s") for i in range(0, 16, 4)]  # queued: pipelined on CUDA
            outs = [f.result() for f in futures]
            results[name] = np.concatenate([o.frames for o in outs])
            assert [i for o in outs for i in o.indices] == list(range(16)), name
            assert engine.streams["s"].refreshes == 2, (name, engine.streams["s"].refreshes, engine.counters)
    diff = np.abs(results["cuda"].astype(float) - results["cpu"].astype(float))
    assert diff.mean() < tolerance, f"{dtype} CUDA vs float32 CPU: mean abs diff {diff.mean():.3f} grey levels"


def test_no_recompilation_when_the_conditioning_changes_on_cuda(cuda_bundle, bikes_path):
    import torch._dynamo.utils

    frames = real_frames(bikes_path, 128, 24)
    config = EngineConfig(size=128, batch=4, hooks="down_blocks", cond_refresh=1, compile="default", cuda_graphs=False)
    with StreamEngine(config, cuda_bundle) as engine:
        engine.open_stream("s", "make it an oil painting")
        engine.submit(frames[:4], "s").result()
        engine.submit(frames[4:8], "s").result()  # first refresh
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for i in range(8, 24, 4):  # a refresh on every batch: new conditioning each time
            engine.submit(frames[i : i + 4], "s").result()
        after = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert engine.streams["s"].refreshes == 5
    assert after == before


@pytest.mark.parametrize("graphs", [False, True])
def test_three_cuda_streams_compute_what_two_compute(cuda_bundle, bikes_path, graphs):
    """cuda_streams 3 decodes on a stream of its own and takes the flows to the side stream; a refresh on the main
    stream must wait for the previous batch's decode there. A live adapter makes every output depend on it."""
    frames = real_frames(bikes_path, 128, 24)
    results = {}
    for streams in (2, 3):
        torch.manual_seed(0)
        config = EngineConfig(size=128, batch=4, hooks="down_blocks", cond_refresh=1, compile="none", cuda_graphs=graphs,
                              cuda_streams=streams)
        with StreamEngine(config, cuda_bundle) as engine:
            for module in engine.adapter.modules_dict.values():  # the zero-initialised output layer made live
                torch.nn.init.normal_(module.up[0].weight, std=0.05)
            engine.open_stream("s", "make it an oil painting", seed=1)
            futures = [engine.submit(frames[i : i + 4], "s") for i in range(0, 24, 4)]  # queued: pipelined
            outs = [f.result() for f in futures]
            assert engine.counters["refreshes"] == 5 and engine.flow_backend == "torch"
            assert (engine.out_stream is None) == (streams == 2)
        results[streams] = np.concatenate([o.frames for o in outs]).astype(float)
    diff = np.abs(results[3] - results[2])
    assert diff.mean() < 0.05 and diff.max() <= 2, f"mean {diff.mean():.3f}, max {diff.max():.0f} grey levels"


def test_compiling_only_the_largest_bucket_leaves_smaller_batches_uncompiled(cuda_bundle, bikes_path):
    import torch._dynamo.utils

    frames = real_frames(bikes_path, 128, 13)
    config = EngineConfig(size=128, batch=4, buckets=(1, 4), hooks="down_blocks", compile="default",
                          compile_buckets="largest")
    with StreamEngine(config, cuda_bundle) as engine:
        engine.open_stream("s", "make it an oil painting")
        engine.submit(frames[:4], "s").result()
        engine.submit(frames[4:8], "s").result()  # the refresh path compiles too (always at the full batch)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        one = engine.submit(frames[8:9], "s").result()
        four = engine.submit(frames[9:13], "s").result()
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # the 1-row batch compiled nothing
    assert (one.bucket, four.bucket) == (1, 4) and one.frames.shape == (1, 128, 128, 3)


def test_fp8_linears_compile_capture_and_stay_close_on_cuda(cuda_bundle, bikes_path, monkeypatch):
    """FP8 products (torch._scaled_mm, per-row scales) need compute capability 8.9+; compiled and graphed here."""
    from services.gpu import fp8

    if fp8.fp8_problem(torch.device("cuda")):
        pytest.skip(fp8.fp8_problem(torch.device("cuda")))
    monkeypatch.setattr(fp8, "MIN_FEATURES", 16)  # the tiny profile's layers are 32–128 wide
    similarity, layers = fp8_against_reference(cuda_bundle, real_frames(bikes_path, 128, 8), batch=4, compile_mode="default")
    assert layers[0] == 0 and layers[1] > 0
    assert 0.98 < similarity < 1.0, similarity


@pytest.mark.parametrize("choice", ["key_channel", "key_channel_fused_kv"])
def test_key_channel_cross_attention_compiles_captures_and_matches_the_bias_on_cuda(cuda_fp32_bundle, bikes_path, choice):
    """The mask in a key channel (and the fused key/value product) through inductor and a CUDA graph: the same frames
    as the bias form (float32)."""
    frames = real_frames(bikes_path, 128, 8)
    results = {}
    for name in ("bias", choice):
        config = EngineConfig(size=128, batch=4, hooks="down_blocks", compile="default", cuda_graphs=True,
                              keep_latents=True, cross_attention=name)
        with StreamEngine(config, cuda_fp32_bundle) as engine:
            engine.open_stream("s", "make it an oil painting", seed=2)
            results[name] = [engine.submit(frames[i : i + 4], "s").result() for i in (0, 4)]
            assert (engine.cross_attentions > 0) == (name != "bias")
    for bias, key_channel in zip(results["bias"], results[choice]):
        torch.testing.assert_close(key_channel.latents, bias.latents, rtol=1e-3, atol=1e-3)
        assert np.abs(key_channel.frames.astype(int) - bias.frames.astype(int)).max() <= 2


def test_sdpa_has_a_fused_kernel_for_the_key_channel_shapes():
    """A value width (64) unlike the query/key width (72) rules out the flash kernel: cuDNN's (what the U-Net runs now)
    or the memory-efficient one must still take the level-0 cross-attention's shapes, or SDPA would fall back to
    the math path."""
    from torch.backends.cuda import SDPAParams, can_use_cudnn_attention, can_use_efficient_attention

    q = torch.randn(8, 4, 8192, 72, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(8, 4, 128, 72, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(8, 4, 128, 64, device="cuda", dtype=torch.bfloat16)
    params = SDPAParams(q, k, v, None, 0.0, False, False)
    assert can_use_cudnn_attention(params, True) or can_use_efficient_attention(params, True)


@pytest.mark.parametrize("compile_refresh", ["batch", "every_size"])
def test_a_small_refresh_share_runs_in_its_own_graph_and_matches_the_compiled_whole_batch(cuda_fp32_bundle, bikes_path,
                                                                                          monkeypatch, compile_refresh):
    """Streams sharing 3 + 1 rows of a compiled B=4 engine: the 3-row refresh runs compiled at 4, the 1-row one in a
    graph of its own (refresh_size; eager, or compiled with every_size), and both give what whole-batch padding gave."""
    frames = real_frames(bikes_path, 128, 8)
    config = EngineConfig(size=128, batch=4, hooks="down_blocks", cond_refresh=1, compile="default", cuda_graphs=True,
                          flow_backend="torch", compile_refresh=compile_refresh)

    def run(engine):
        for name in ("a", "b"):
            engine.open_stream(name, "make it an oil painting")
        engine.submit_mixed([("a", frames[:3]), ("b", frames[3:4])]).result()
        engine.submit_mixed([("a", frames[4:7]), ("b", frames[7:8])]).result()  # both refresh
        keys = {key for key in engine.captured() if key[0] in ("flow", "refresh_cond")}
        return keys, {n: {k: v.float().cpu() for k, v in engine.streams[n].cond.items()} for n in ("a", "b")}

    runs = own_rows_and_whole_batch(monkeypatch, lambda: StreamEngine(config, cuda_fp32_bundle), run)
    assert runs["own_rows"][0] == {("flow", 4), ("flow", 1), ("refresh_cond", 4), ("refresh_cond", 1)}
    assert runs["whole_batch"][0] == {("flow", 4), ("refresh_cond", 4)}
    for name, rows in (("a", 3), ("b", 1)):
        for key, whole in runs["whole_batch"][1][name].items():
            own = runs["own_rows"][1][name][key]
            assert own.shape[0] == rows == whole.shape[0]
            # the compiled whole batch against the one-row graph (other kernels) in float32: close, not bitwise
            assert (own - whole).abs().mean() <= 0.01 * whole.abs().mean() + 1e-6, (name, key)


def test_released_token_graphs_are_captured_again_and_compute_the_same_on_cuda(cuda_fp32_bundle, bikes_path):
    """model.token_graphs 1: each prompt change releases the other length's graphs and captures again; the frames
    match an engine that keeps them all."""
    from tests.test_token_shapes import LONG, SHORT

    frames = real_frames(bikes_path, 64, 12)
    results, kept = {}, {}
    for limit in (1, 32):
        with StreamEngine(EngineConfig(size=64, batch=2, hooks="none", token_graphs=limit), cuda_fp32_bundle) as engine:
            engine.open_stream("s", SHORT, seed=3)
            outs = []
            for i, prompt in zip(range(0, 12, 2), (SHORT, LONG, SHORT, LONG, SHORT, SHORT)):
                engine.set_prompt("s", prompt)
                outs.append(engine.submit(frames[i : i + 2], "s").result().frames)
            results[limit] = np.concatenate(outs)
            kept[limit] = {k[2] for k in engine.captured() if k[0] == "denoise"}
    assert len(kept[1]) == 1 and len(kept[32]) == 2
    diff = np.abs(results[1].astype(int) - results[32].astype(int))
    assert diff.max() <= 1, f"frames differ by up to {diff.max()} grey levels"


def test_stacked_qkv_compiles_captures_and_matches_the_separate_projections_on_cuda(cuda_fp32_bundle, bikes_path):
    """The text encoder's stacked q/k/v product through inductor and a CUDA graph: the same frames (float32)."""
    frames = real_frames(bikes_path, 128, 4)
    latents = {}
    for fused in (False, True):  # the unfused engine first: fusing re-points the bundle's weights (same values)
        config = EngineConfig(size=128, batch=4, hooks="none", compile="default", cuda_graphs=True, keep_latents=True,
                              fused_qkv=fused)
        with StreamEngine(config, cuda_fp32_bundle) as engine:
            engine.open_stream("s", "make it an oil painting", seed=2)
            latents[fused] = engine.submit(frames, "s").result().latents
    torch.testing.assert_close(latents[True], latents[False], rtol=1e-3, atol=1e-3)


def test_depthwise_taps_compile_capture_and_match_cudnn_on_cuda(cuda_fp32_bundle, bikes_path):
    """The U-Net's depthwise convolutions as inductor-generated taps, in a CUDA graph: the same latents (float32)."""
    frames = real_frames(bikes_path, 128, 4)
    latents = {}
    for choice in ("cudnn", "taps"):
        config = EngineConfig(size=128, batch=4, hooks="down_blocks", compile="default", cuda_graphs=True,
                              keep_latents=True, depthwise=choice, compile_parts=("unet",))
        with StreamEngine(config, cuda_fp32_bundle) as engine:
            engine.open_stream("s", "make it an oil painting", seed=2)
            latents[choice] = engine.submit(frames, "s").result().latents
            assert (engine.depthwise_convs > 0) == (choice == "taps")
    torch.testing.assert_close(latents["taps"], latents["cudnn"], rtol=1e-3, atol=1e-3)
