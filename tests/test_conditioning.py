"""Temporal conditioning: the GPU warp matches cv2.remap, and the refresh schedule is the paper's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.gpu.conditioning import FlowPool, warp_on_device
from services.gpu.engine import EngineConfig, StreamEngine
from shared.flow import backward_flow, backward_warp
from tests.conftest import real_frames
from tests.support.refresh_padding import own_rows_and_whole_batch


def test_device_warp_equals_cv2_remap(bikes_path):
    previous, current = real_frames(bikes_path, 128, 2, start=10)
    flow = backward_flow(current, previous)
    assert np.abs(flow).max() > 0.5  # real motion, so the warp is not an identity
    expected = backward_warp(previous, flow).astype(np.float32)
    source = torch.from_numpy(previous).permute(2, 0, 1).float()
    got = warp_on_device(source, torch.from_numpy(flow)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() < 1.0  # cv2 rounds to uint8; grid_sample keeps floats
    assert np.abs(got - previous).mean() > 1.0


def test_flow_pool_computes_every_frame(bikes_path):
    frames = real_frames(bikes_path, 64, 4)
    pool = FlowPool(workers=2)
    try:
        flows = pool.submit(frames[0], frames[1:]).result(timeout=30)
    finally:
        pool.close()
    assert flows.shape == (3, 64, 64, 2) and flows.dtype == np.float32
    np.testing.assert_allclose(flows[1], backward_flow(frames[2], frames[0]))


def test_refresh_runs_on_batch_one_then_every_n(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 14)
    config = EngineConfig(size=64, batch=2, hooks="down_blocks", cond_refresh=3)
    with StreamEngine(config, tiny_bundle) as engine:
        st = engine.open_stream("s", "oil painting")
        history = []
        for n in range(7):
            engine.submit(frames[2 * n : 2 * n + 2], "s").result()
            history.append((st.refreshes, engine.adapter.multiplier[:2].flatten().tolist()))
    assert [r for r, _ in history] == [0, 1, 1, 1, 2, 2, 2]  # batches 1 and 4 (1 + N) refresh
    assert history[0][1] == [0.0, 0.0]  # no previous output yet: the adapter is off
    assert all(m == [1.0, 1.0] for _, m in history[1:])


def test_refresh_conditioning_is_the_warped_previous_output(tiny_bundle, bikes_path):
    frames = real_frames(bikes_path, 64, 4)
    config = EngineConfig(size=64, batch=2, hooks="down_blocks", cond_refresh=8)
    with StreamEngine(config, tiny_bundle) as engine:
        st = engine.open_stream("s", "oil painting")
        first = engine.submit(frames[:2], "s").result()
        engine.submit(frames[2:], "s").result()
        flows = np.stack([backward_flow(f, frames[1]) for f in frames[2:]])
        previous = torch.from_numpy(first.frames[1]).permute(2, 0, 1).float() / 127.5 - 1
        expected = engine.adapter.compute_embeddings(warp_on_device(previous, torch.from_numpy(flows)))
        unwarped = engine.adapter.compute_embeddings(previous[None].expand(2, -1, -1, -1))
        for key, value in expected.items():
            # The engine warps the decoded float image, the test its uint8 copy: about a grey level apart.
            near = (st.cond[key] - value).abs().mean()
            assert near < 0.01, key
            assert (st.cond[key] - unwarped[key]).abs().mean() > 3 * near, key


@pytest.mark.parametrize("flow_backend", ["opencv", "torch"])
def test_a_streams_refresh_computes_its_own_rows_with_the_same_result_as_the_whole_batch(tiny_bundle, bikes_path, monkeypatch,
                                                                                    flow_backend):
    """Two streams share B=8 rows 3 + 5: their refreshes run at 4 and 8 rows (refresh_size), not 8 and 8, and
    give what refreshes padded to the whole batch gave."""
    frames = real_frames(bikes_path, 64, 16)
    config = EngineConfig(size=64, batch=8, hooks="down_blocks", cond_refresh=8, flow_backend=flow_backend)

    def run(engine):
        sizes = []
        cond_fn = engine._cond_fn
        engine._cond_fn = lambda previous, flows: sizes.append(len(flows)) or cond_fn(previous, flows)
        for name in ("a", "b"):
            engine.open_stream(name, "make it an oil painting")
        outputs = [engine.submit_mixed([("a", frames[i:i + 3]), ("b", frames[8 + i:13 + i])]).result().frames
                   for i in (0, 3)]  # the second batch refreshes both streams
        assert engine.counters["refreshes"] == 2
        return sizes, np.concatenate(outputs), {n: engine.streams[n].cond for n in ("a", "b")}

    results = own_rows_and_whole_batch(monkeypatch, lambda: StreamEngine(config, tiny_bundle), run)
    assert results["own_rows"][0] == [4, 8] and results["whole_batch"][0] == [8, 8]
    assert np.abs(results["own_rows"][1].astype(int) - results["whole_batch"][1]).max() <= 1
    for name in ("a", "b"):
        assert results["own_rows"][2][name].keys() == results["whole_batch"][2][name].keys()
        for key, value in results["own_rows"][2][name].items():
            assert value.shape[0] == (3 if name == "a" else 5)
            torch.testing.assert_close(value, results["whole_batch"][2][name][key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("batch", "cpus", "gpu_workers", "threads"),
                         [(8, 16, 1, 8), (16, 16, 1, 16), (16, 16, 2, 8), (8, 2, 1, 2), (4, 1, 4, 1)])
def test_flow_process_runs_a_refresh_batch_at_once_within_its_share_of_cores(batch, cpus, gpu_workers, threads):
    from services.flow.__main__ import flow_threads

    assert flow_threads(batch, cpus, gpu_workers) == threads


def test_conditioning_traces_as_one_graph_equal_to_eager(tiny_bundle):
    """The engine compiles warp + the hooks' conditioning networks with fullgraph=True on CUDA."""
    import torch._dynamo

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    config = EngineConfig(size=64, batch=2, hooks="down_blocks", compile="none")
    with StreamEngine(config, tiny_bundle) as engine:
        previous = torch.rand(3, 64, 64) * 2 - 1
        flows = torch.randn(2, 64, 64, 2) * 3
        torch._dynamo.reset()
        try:
            traced = torch.compile(engine._conditioning, backend=counting, dynamic=False, fullgraph=True)
            got = traced(previous, flows)
        finally:
            torch._dynamo.reset()
        want = engine.adapter.compute_embeddings(warp_on_device(previous, flows).to(engine.dtype))
    assert len(graphs) == 1 and len(got) == len(want)
    for value, key in zip(got, want):
        torch.testing.assert_close(value, want[key])
