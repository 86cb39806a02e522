"""The torch Farnebäck (services/gpu/farneback.py) against OpenCV's, and the engine refreshing with it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from services.gpu.conditioning import FlowPool
from services.gpu.engine import EngineConfig, EngineError, StreamEngine, resolve_flow_backend
from services.gpu.farneback import backward_flows, farneback, gray, usable_levels, warm_constants
from shared.flow import FARNEBACK_PARAMS, backward_flow, backward_warp, to_gray
from tests.conftest import real_frames


def smooth_texture(seed: int, size: int = 300) -> np.ndarray:
    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32) * 255
    img = cv2.GaussianBlur(noise, (0, 0), 3)
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)


def test_gray_levels_are_opencvs():
    frames = np.random.default_rng(0).integers(0, 256, (3, 17, 19, 3), dtype=np.uint8)
    expected = np.stack([to_gray(f) for f in frames]).astype(np.float32)
    np.testing.assert_array_equal(gray(torch.from_numpy(frames)).numpy(), expected)


def test_levels_stop_before_a_side_falls_under_32_pixels():
    assert usable_levels((512, 512), 0.5, 3) == 3
    assert usable_levels((128, 128), 0.5, 3) == 2  # 16 px at the third level: OpenCV stops at 32
    assert usable_levels((64, 96), 0.5, 3) == 1


@pytest.mark.parametrize("shift", [(1.0, 0.0), (-2.0, 1.0)])
def test_a_translation_gives_opencvs_flow(shift):
    big = smooth_texture(1)
    dx, dy = int(shift[0]), int(shift[1])
    prev = big[60:188, 60:188]
    nxt = big[60 + dy:188 + dy, 60 + dx:188 + dx]  # prev(p) = next(p - shift): the flow is -shift
    ref = cv2.calcOpticalFlowFarneback(prev, nxt, None, **FARNEBACK_PARAMS)
    ours = farneback(torch.from_numpy(prev).float()[None], torch.from_numpy(nxt).float()[None], **FARNEBACK_PARAMS)[0].numpy()
    inner = (slice(20, -20), slice(20, -20))
    np.testing.assert_allclose(ours[inner].mean(axis=(0, 1)), [-dx, -dy], atol=0.02)
    assert np.linalg.norm(ours - ref, axis=-1)[inner].mean() < 0.01


def test_real_frames_give_opencvs_flows(bikes_path):
    frames = real_frames(bikes_path, size=128, count=6, start=40)
    source, targets = frames[0], frames[1:]
    ours = backward_flows(torch.from_numpy(targets), torch.from_numpy(source)).numpy()
    assert ours.shape == targets.shape[:3] + (2,) and ours.dtype == np.float32 and np.isfinite(ours).all()
    for target, flow in zip(targets, ours):
        ref = backward_flow(target, source)
        epe = np.linalg.norm(flow - ref, axis=-1)
        # Float rounding only; it grows where the 2×2 systems are nearly singular (textureless spots).
        assert np.median(epe) < 1e-3 and epe.mean() < 0.01
        warped_ours = backward_warp(source, flow).astype(np.float32)
        warped_ref = backward_warp(source, ref).astype(np.float32)
        assert np.abs(warped_ours - warped_ref).mean() < 0.05  # gray levels
        assert np.abs(warped_ours - target).mean() < np.abs(source.astype(np.float32) - target).mean()


def test_the_expansion_spans_poly_n_pixels_each_side():
    """OpenCV passes poly_n to the polynomial expansion as its half-width; a 5-tap fit gives other flows."""
    big = smooth_texture(2)
    prev, nxt = big[40:168, 40:168], big[42:170, 41:169]
    narrow = dict(FARNEBACK_PARAMS, levels=0, iterations=1)
    ref = cv2.calcOpticalFlowFarneback(prev, nxt, None, **narrow)
    ours = farneback(torch.from_numpy(prev).float()[None], torch.from_numpy(nxt).float()[None], **narrow)[0].numpy()
    assert np.abs(ours - ref).max() < 1e-3


def test_engine_refreshes_with_torch_flows(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, size=64, count=8)
    config = EngineConfig(size=64, batch=2, cond_refresh=1, hooks="down_blocks", compile="none", flow_backend="torch")
    with StreamEngine(config, tiny_bundle) as engine:
        assert engine.flows is None  # no host flow pool to ask
        engine.open_stream("cam", "make it an oil painting")
        outs = [engine.process(frames[i:i + 2], "cam") for i in range(0, 8, 2)]
        assert engine.counters["refreshes"] == 3 and engine.counters["refresh_failures"] == 0
    assert all(o.shape == (2, 64, 64, 3) for o in outs)


def test_auto_flows_are_opencvs_on_the_cpu(tiny_bundle):
    with StreamEngine(EngineConfig(size=64, batch=2, compile="none"), tiny_bundle) as engine:
        assert engine.flow_backend == "opencv" and isinstance(engine.flows, FlowPool)
    assert resolve_flow_backend("auto", cuda=True) == "torch" and resolve_flow_backend("opencv", cuda=True) == "opencv"


def test_flows_on_the_device_start_no_host_flow_threads(tiny_bundle):
    with StreamEngine(EngineConfig(size=64, batch=2, compile="none", flow_backend="torch"), tiny_bundle) as engine:
        assert engine.flows is None


def test_an_unknown_flow_backend_is_named(tiny_bundle):
    with pytest.raises(EngineError, match="flow_backend 'gpu'"):
        EngineConfig(flow_backend="gpu").validate()


def test_flows_trace_as_one_graph_equal_to_eager(bikes_path):
    """The engine compiles backward_flows with fullgraph=True on CUDA: nothing in it may break the graph."""
    import torch._dynamo

    frames = torch.from_numpy(real_frames(bikes_path, size=64, count=3))
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    warm_constants("cpu")  # as the engine does before compiling
    try:
        traced = torch.compile(backward_flows, backend=counting, dynamic=False, fullgraph=True)
        got = traced(frames[1:], frames[0])
        traced(frames[1:], frames[0])
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    torch.testing.assert_close(got, backward_flows(frames[1:], frames[0]), rtol=1e-5, atol=1e-4)


def test_engine_pads_a_streams_rows_to_its_refresh_size(tiny_bundle, bikes_path):
    """Each stream's refresh runs at refresh_size of its own rows (3 → 4, 1 → 1), not at the whole batch."""
    frames = real_frames(bikes_path, size=64, count=8)
    config = EngineConfig(size=64, batch=4, cond_refresh=1, hooks="down_blocks", compile="none", flow_backend="torch")
    with StreamEngine(config, tiny_bundle) as engine:
        shapes, cond_shapes = [], []
        flow_fn, cond_fn = engine._flow_fn, engine._cond_fn
        engine._flow_fn = lambda cur, prev: shapes.append(tuple(cur.shape)) or flow_fn(cur, prev)
        engine._cond_fn = lambda out, flows: cond_shapes.append(tuple(flows.shape)) or cond_fn(out, flows)
        a = engine.open_stream("a", "make it an oil painting")
        b = engine.open_stream("b", "make it a watercolour")
        engine.submit_mixed([("a", frames[:3]), ("b", frames[3:4])]).result()
        out = engine.submit_mixed([("a", frames[4:7]), ("b", frames[7:8])]).result()
    assert shapes == [(4, 64, 64, 3), (1, 64, 64, 3)]  # stream a's 3 rows padded to 4, b's 1 row alone
    assert cond_shapes == [(4, 64, 64, 2), (1, 64, 64, 2)]  # the conditioning networks too
    assert out.frames.shape == (4, 64, 64, 3) and engine.counters["refreshes"] == 2
    # Each stream keeps only its own rows of the padded result.
    assert {v.shape[0] for v in a.cond.values()} == {3} and {v.shape[0] for v in b.cond.values()} == {1}


@pytest.mark.gpu
def test_flows_on_cuda_match_the_cpu(bikes_path):
    frames = torch.from_numpy(real_frames(bikes_path, size=256, count=5, start=40))
    cpu = backward_flows(frames[1:], frames[0])
    cuda = backward_flows(frames[1:].cuda(), frames[0].cuda()).cpu()
    epe = (cuda - cpu).norm(dim=-1)
    assert epe.median() < 1e-3 and epe.mean() < 0.05  # float32 on both; textureless spots may differ more


def test_after_warm_up_no_constant_is_built_from_host_numbers(monkeypatch):
    """A CUDA graph cannot capture a host-to-device copy: once warmed, the flows must build no tensor from host data."""
    import services.gpu.farneback as farneback_module

    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    farneback_module.warm_constants("cpu")
    built = []
    real_tensor = torch.tensor
    monkeypatch.setattr(farneback_module.torch, "tensor", lambda *a, **k: built.append(a) or real_tensor(*a, **k))
    backward_flows(frames, frames[0])
    assert built == []


def test_flows_computed_by_the_side_stage_give_the_same_frames(tiny_bundle, bikes_path):
    """cuda_streams 3 moves a refresh's torch flows from the main stage to the side stage: same results."""
    frames = real_frames(bikes_path, size=64, count=8)
    outputs, conds = {}, {}
    for streams in (2, 3):
        config = EngineConfig(size=64, batch=2, cond_refresh=1, hooks="down_blocks", compile="none", flow_backend="torch",
                              cuda_streams=streams)
        torch.manual_seed(0)  # the same adapter initialisation for both engines
        with StreamEngine(config, tiny_bundle) as engine:
            calls = []
            side, main = engine._side, engine._main
            engine._side = lambda job: calls.append("side") or side(job)
            engine._main = lambda job: calls.append("main") or main(job)
            flow_fn = engine._flow_fn
            engine._flow_fn = lambda cur, prev: calls.append("flow") or flow_fn(cur, prev)
            st = engine.open_stream("cam", "make it an oil painting")
            outputs[streams] = np.concatenate([engine.process(frames[i:i + 2], "cam") for i in range(0, 8, 2)])
            conds[streams] = st.cond
            assert engine.counters["refreshes"] == 3
        # Where the flows ran: inside the side stage (before its main stage) with 3 streams, inside main with 2.
        expected = ["side", "main"] + ["side", "main", "flow"] * 3 if streams == 2 else ["side", "main"] + ["side", "flow", "main"] * 3
        assert calls == expected, (streams, calls)
    np.testing.assert_array_equal(outputs[2], outputs[3])
    for key in conds[2]:  # the conditioning is built from the flows: equal only if the flows were
        torch.testing.assert_close(conds[2][key], conds[3][key], rtol=0, atol=0)


def test_an_unknown_stream_layout_is_named():
    with pytest.raises(EngineError, match="cuda_streams 4"):
        EngineConfig(cuda_streams=4).validate()
