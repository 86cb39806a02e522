"""Latency-aware batching: when the GPU worker forms a batch, and which compiled shape it runs at."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from services.gpu.engine import ByBatchSize, EngineConfig, EngineError, StreamEngine, refresh_compiled
from services.gpu.worker import GpuWorker, dispatch_due, engine_config, refresh_flags, warm_up_sizes
from shared.protocol import FrameFlags, now
from shared.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    ("waiting", "in_flight", "oldest_wait_s", "flushing", "due"),
    [
        (8, 2, 0.0, False, True),  # a full batch goes
        (1, 0, 0.0, False, True),  # an idle GPU takes a lone frame at once
        (3, 1, 0.01, False, False),  # busy GPU, young frames: wait for company
        (3, 1, 0.05, False, True),  # the oldest frame's deadline came, one batch on the GPU: go before it idles
        (3, 2, 0.05, False, False),  # deadline past but two batches queued ahead: fill up meanwhile
        (2, 1, 0.0, True, True),  # a stream ends or the service drains: flush what waits
    ],
)
def test_dispatch_rule(waiting, in_flight, oldest_wait_s, flushing, due):
    assert dispatch_due(waiting, batch=8, in_flight=in_flight, oldest_wait_s=oldest_wait_s, max_wait_s=0.05,
                        flushing=flushing) is due


@pytest.mark.parametrize(
    ("waiting", "in_flight", "oldest_wait_s", "flushing", "due"),
    [
        (1, 0, 0.0, False, False),  # files only, idle GPU, young frames: give the batch time to fill
        (3, 0, 0.049, False, False),
        (3, 0, 0.05, False, True),  # ... but no longer than the deadline
        (6, 1, 0.2, False, False),  # files only, one batch running: fill up meanwhile, however late
        (6, 1, 0.2, True, True),  # ... unless the file ended
        (8, 0, 0.0, False, True),  # a full batch goes at once
        (1, 0, 0.0, True, True),  # the file ended: flush
    ],
)
def test_an_idle_gpu_lets_lossless_frames_fill_the_batch(waiting, in_flight, oldest_wait_s, flushing, due):
    assert dispatch_due(waiting, batch=8, in_flight=in_flight, oldest_wait_s=oldest_wait_s, max_wait_s=0.05,
                        flushing=flushing, live=False) is due


def _stub_worker(queued: int, outputs: int = 0, in_flight: int = 0, live: bool = True, age_s: float = 0.0) -> GpuWorker:
    """A worker with one stream's queue and outputs, without models or sockets: only the dispatch state is read."""
    worker = object.__new__(GpuWorker)
    frames = collections.deque(SimpleNamespace(t_ingest=now() - age_s) for _ in range(queued))
    stream = SimpleNamespace(queue=frames, outputs=collections.deque([None] * outputs), ending=False, live=live)
    worker.streams = {"s": stream} if queued or outputs else {}
    worker.batch, worker.max_wait, worker.draining, worker.in_flight = 8, 0.05, False, in_flight
    worker.live_max_queue = None
    worker.engine = SimpleNamespace(config=SimpleNamespace(pipeline_depth=2))  # at most 3 batches in flight
    return worker


@pytest.mark.parametrize(
    ("queued", "outputs", "in_flight", "live", "age_s", "block"),
    [
        (0, 0, 0, True, 0.0, "no_frames"),
        (3, 8, 1, True, 0.0, "output_full"),  # a batch of outputs waits for egress: this stream takes no more
        (8, 0, 3, True, 0.0, "in_flight"),  # depth 2 + 1 batches on the GPU already
        (3, 0, 1, True, 0.0, "filling"),  # young frames, busy GPU: wait for company
        (8, 7, 2, True, 0.0, None),  # a full batch goes
        (3, 0, 0, True, 0.0, None),  # an idle GPU takes a camera's frames at once
        (3, 0, 0, False, 0.0, "filling"),  # ... but lets a file's young frames fill the batch
        (5, 0, 1, True, 0.2, None),  # a camera's late frames go beside the running batch
        (5, 0, 1, False, 0.2, "filling"),  # a file's late frames keep filling while a batch runs
        (5, 0, 0, False, 0.2, None),  # ... and go once the GPU is idle
    ],
)
def test_the_worker_names_why_no_batch_goes_out(queued, outputs, in_flight, live, age_s, block):
    assert _stub_worker(queued, outputs, in_flight, live, age_s)._dispatch_block() == block


def test_live_frames_past_the_queue_limit_are_dropped_as_late_and_files_never():
    dropped = []
    worker = object.__new__(GpuWorker)
    depth = {}
    gauge = SimpleNamespace(labels=lambda stream, stage: SimpleNamespace(set=lambda n: depth.__setitem__(stream, n)))
    worker.proc = SimpleNamespace(dropped=lambda *args: dropped.append(args), metrics=SimpleNamespace(queue_depth=gauge))
    worker.live_max_queue = 0.2
    t = now()
    ages = (0.5, 0.3, 0.1, 0.0)  # seconds since ingest, oldest first
    worker.streams = {
        name: SimpleNamespace(name=name, live=live, queue=collections.deque(
            SimpleNamespace(seq=i, t_ingest=t - age) for i, age in enumerate(ages)))
        for name, live in (("cam", True), ("file", False))
    }
    worker._shed_late()
    assert dropped == [("cam", 0, "gpu", "late"), ("cam", 1, "gpu", "late")]
    assert [m.seq for m in worker.streams["cam"].queue] == [2, 3]
    assert [m.seq for m in worker.streams["file"].queue] == [0, 1, 2, 3]  # lossless streams wait
    assert depth == {"cam": 2}  # the queue-depth gauge follows
    worker.live_max_queue = None  # off (the default): nothing is dropped for its age
    worker.streams["cam"].queue[0].t_ingest = t - 10
    worker._shed_late()
    assert len(dropped) == 2 and len(worker.streams["cam"].queue) == 2


def test_live_queue_limit_setting():
    assert load_settings(None, env={}).engine.live_max_queue_ms is None
    assert load_settings(None, env={}, overrides={"engine.live_max_queue_ms": 400}).engine.live_max_queue_ms == 400
    with pytest.raises(ConfigError, match="live_max_queue_ms"):
        load_settings(None, env={}, overrides={"engine.live_max_queue_ms": 0})


def test_scene_cuts_refresh_only_when_configured_and_gaps_always():
    on = refresh_flags(load_settings(None, env={}))
    off = refresh_flags(load_settings(None, env={}, overrides={"engine.refresh_on_scene_cut": False}))
    assert on & FrameFlags.SCENE_CUT and on & FrameFlags.DISCONTINUITY
    assert not off & FrameFlags.SCENE_CUT and off & FrameFlags.DISCONTINUITY


def test_settings_pipeline_depth_reaches_the_engine():
    settings = load_settings(None, env={}, overrides={"engine.pipeline_depth": 4})
    assert engine_config(settings, cuda=True).pipeline_depth == 4
    assert engine_config(load_settings(None, env={}), cuda=True).pipeline_depth == 3


def test_settings_cuda_streams_reach_the_engine():
    assert engine_config(load_settings(None, env={}), cuda=True).cuda_streams == 2
    assert engine_config(load_settings(None, env={}, overrides={"engine.cuda_streams": 3}), cuda=True).cuda_streams == 3
    with pytest.raises(ConfigError, match="cuda_streams"):
        load_settings(None, env={}, overrides={"engine.cuda_streams": 4})


@pytest.mark.parametrize(("field", "default", "value", "bad"), [
    ("compile_buckets", "all", "largest", "smallest"),
    ("compile_refresh", "batch", "every_size", "some"),
])
def test_settings_compile_choices_reach_the_engine(field, default, value, bad):
    assert getattr(engine_config(load_settings(None, env={}), cuda=True), field) == default
    settings = load_settings(None, env={}, overrides={f"model.{field}": value})
    assert getattr(engine_config(settings, cuda=True), field) == value
    with pytest.raises(ConfigError, match=field):
        load_settings(None, env={}, overrides={f"model.{field}": bad})
    with pytest.raises(EngineError, match=f"{field} 'some'"):
        EngineConfig(**{field: "some"}).validate()


def test_only_the_chosen_batch_sizes_take_the_compiled_function():
    calls = []
    compiled = lambda x, scale=1: calls.append(("compiled", x.shape[0], scale)) or x  # noqa: E731
    eager = lambda x, scale=1: calls.append(("eager", x.shape[0], scale)) or x  # noqa: E731
    fn = ByBatchSize(compiled, eager, {8})
    for rows in (8, 1, 4, 8):
        fn(torch.zeros(rows, 3), scale=rows)
    assert calls == [("compiled", 8, 8), ("eager", 1, 1), ("eager", 4, 4), ("compiled", 8, 8)]


@pytest.mark.parametrize("every_size", [False, True])
def test_refresh_compiled_keeps_the_full_batch_static_and_compiles_smaller_shares_only_when_asked(every_size):
    """every_size: the smaller shares take one static compile (1 row) and one dynamic one (every other size); the
    full batch keeps its static graph. batch: smaller shares run the plain function."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs, ran = [], []

    def recording(gm, example_inputs):
        tag = len(graphs)
        graphs.append(any(isinstance(x, torch.SymInt) for x in example_inputs))  # a symbolic size: dynamic

        def run(*args):
            ran.append(tag)
            return gm.forward(*args)
        return run

    def rows_plus(x, y):
        return x * 2 + y

    fn = refresh_compiled(rows_plus, batch=8, every_size=every_size, size_arg=0, backend=recording)
    for rows in (8, 1, 2, 4, 8, 3):
        out = fn(torch.ones(rows, 3), torch.ones(1))
        assert out.shape == (rows, 3) and bool((out == 3).all())
    if every_size:
        assert graphs == [False, False, True] and ran == [0, 1, 2, 2, 0, 2]
    else:
        assert graphs == [False] and ran == [0, 0]  # the full batch compiled; the rest ran eagerly
    torch._dynamo.reset()


def test_settings_buckets_reach_the_engine():
    settings = load_settings(None, env={}, overrides={"engine.batch": 8, "engine.buckets": [1, 2, 4]})
    assert engine_config(settings, cuda=True).buckets == (1, 2, 4)
    assert engine_config(load_settings(None, env={}), cuda=True).buckets == ()


def test_settings_compile_parts_and_layout_reach_the_engine():
    default = engine_config(load_settings(None, env={}), cuda=True)
    assert default.compile_parts == ("unet", "text_encoder", "vae") and default.channels_last == ("vae",)
    settings = load_settings(None, env={}, overrides={"model.compile_parts": ["unet"], "model.channels_last": ["unet", "vae"]})
    chosen = engine_config(settings, cuda=True)
    assert chosen.compile_parts == ("unet",) and chosen.channels_last == ("unet", "vae")
    with pytest.raises(ConfigError, match="compile_parts"):
        load_settings(None, env={}, overrides={"model.compile_parts": ["unet", "scheduler"]})
    assert default.autotune == ()
    assert engine_config(load_settings(None, env={}, overrides={"model.autotune": ["unet"]}), cuda=True).autotune == ("unet",)
    assert not default.fused_qkv
    assert engine_config(load_settings(None, env={}, overrides={"model.fused_qkv": True}), cuda=True).fused_qkv
    with pytest.raises(ConfigError, match="autotune"):
        load_settings(None, env={}, overrides={"model.autotune": ["vae"]})


def test_autotuned_parts_compile_with_gemm_autotuning_and_the_rest_with_the_mode(tiny_bundle, monkeypatch):
    """The engine's compile branch walked on the CPU: the part named in `autotune` is compiled with inductor's
    matrix-product autotuning options (no mode: torch.compile takes one or the other), every other part with the mode."""
    from services.gpu.engine import AUTOTUNE_OPTIONS

    calls: dict[str, dict] = {}

    def recording_compile(fn, **kwargs):
        calls.setdefault(getattr(fn, "__name__", type(fn).__name__), kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(StreamEngine, "compiled", property(lambda self: True))
    config = EngineConfig(size=64, batch=2, hooks="none", compile="default", autotune=("text_encoder",))
    with StreamEngine(config, tiny_bundle):
        pass
    assert calls["forward"] == {"dynamic": False, "fullgraph": True, "options": AUTOTUNE_OPTIONS}  # the text encoder
    assert calls["DreamLiteUNetModel"] == {"dynamic": False, "fullgraph": False, "mode": "default"}
    assert calls["decode"]["mode"] == "default" and "options" not in calls["decode"]
    assert AUTOTUNE_OPTIONS["max_autotune_gemm"] is True and AUTOTUNE_OPTIONS["max_autotune_conv_backends"] == "ATEN"


def test_partial_batches_run_at_the_smallest_bucket_that_fits(tiny_bundle):
    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    config = EngineConfig(size=64, batch=4, buckets=(1, 2), hooks="none", compile="none")
    with StreamEngine(config, tiny_bundle) as engine:
        engine.open_stream("s", "oil painting", seed=1)
        shapes = [(len(part), engine.submit(part, "s").result()) for part in (frames[:1], frames[1:4], frames[4:5])]
    assert [(n, out.bucket, len(out.frames)) for n, out in shapes] == [(1, 1, 1), (3, 4, 3), (1, 1, 1)]


def test_the_engine_builds_and_runs_with_only_the_largest_bucket_compiled(tiny_bundle, bikes_path, monkeypatch):
    """The engine's compile branch (CUDA only) walked on the CPU with torch.compile recording what it wraps:
    every compiled part must take its place (the U-Net's inside the denoiser module) and smaller batches run the
    plain functions."""
    from tests.conftest import real_frames

    wrapped = []

    def recording_compile(fn, **kwargs):
        def traced(*args, **kw):
            wrapped.append(getattr(fn, "__name__", type(fn).__name__))
            return fn(*args, **kw)
        return traced

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(StreamEngine, "compiled", property(lambda self: True))
    config = EngineConfig(size=64, batch=4, buckets=(1, 4), hooks="down_blocks", compile="default",
                          compile_buckets="largest")
    frames = real_frames(bikes_path, 64, 5)
    with StreamEngine(config, tiny_bundle) as engine:
        assert isinstance(engine.denoiser.unet_fn, ByBatchSize) and engine.denoiser.unet_fn.sizes == {4}
        engine.open_stream("s", "make it an oil painting")
        four = engine.submit(frames[:4], "s").result()
        calls_at_four = len(wrapped)
        one = engine.submit(frames[4:5], "s").result()
    assert {"DreamLiteUNetModel", "forward", "_vae_encode_fn", "decode"} <= set(wrapped[:calls_at_four])
    assert "DreamLiteUNetModel" not in wrapped[calls_at_four:]  # the 1-row batch ran the plain U-Net
    assert four.frames.shape == (4, 64, 64, 3) and one.frames.shape == (1, 64, 64, 3) and one.bucket == 1


@pytest.mark.parametrize(("buckets", "refreshes", "sizes"), [
    ([32], True, [32, 1, 2, 4, 8, 16]),  # one compiled bucket: every smaller refresh size is captured too
    ([1, 2, 4, 8], True, [1, 2, 4, 8]),  # each bucket's own refresh covers them all
    ([3, 8], True, [3, 8, 1, 2]),  # a bucket of 3 refreshes at 4
    ([32], False, [32]),  # no adapter: nothing refreshes
])
def test_the_warm_up_runs_every_bucket_and_every_refresh_size(buckets, refreshes, sizes):
    assert warm_up_sizes(buckets, buckets[-1], refreshes) == sizes


def test_the_warm_up_refreshes_at_every_refresh_size(tiny_bundle):
    """With one bucket of 4, the warm-up also builds the conditioning at 1 and 2 rows: a live stream's small share
    of a batch finds its shape ready (on CUDA: compiled or captured before READY)."""
    config = EngineConfig(size=64, batch=4, hooks="down_blocks", compile="none")
    with StreamEngine(config, tiny_bundle) as engine:
        sizes = []
        cond_fn = engine._cond_fn
        engine._cond_fn = lambda previous, flows: sizes.append(len(flows)) or cond_fn(previous, flows)
        GpuWorker._warm_up(SimpleNamespace(engine=engine, batch=4, size=64))
        assert sizes == [4, 1, 2]
        assert not engine.streams and engine.counters["refreshes"] == 0  # the warm-up leaves no trace
