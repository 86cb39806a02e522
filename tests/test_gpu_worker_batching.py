"""Latency-aware batching: when the GPU worker forms a batch, and which compiled shape it runs at."""

from __future__ import annotations

import numpy as np
import pytest

from services.gpu.engine import EngineConfig, StreamEngine
from services.gpu.worker import dispatch_due, engine_config
from shared.settings import load_settings


@pytest.mark.parametrize(
    ("waiting", "in_flight", "oldest_wait_s", "flushing", "due"),
    [
        (8, 2, 0.0, False, True),  # a full batch goes
        (1, 0, 0.0, False, True),  # an idle GPU takes a lone frame at once
        (3, 1, 0.01, False, False),  # busy GPU, young frames: wait for company
        (3, 2, 0.05, False, True),  # the oldest frame's deadline came
        (2, 1, 0.0, True, True),  # a stream ends or the service drains: flush what waits
    ],
)
def test_dispatch_rule(waiting, in_flight, oldest_wait_s, flushing, due):
    assert dispatch_due(waiting, batch=8, in_flight=in_flight, oldest_wait_s=oldest_wait_s, max_wait_s=0.05,
                        flushing=flushing) is due


def test_settings_buckets_reach_the_engine():
    settings = load_settings(None, env={}, overrides={"engine.batch": 8, "engine.buckets": [1, 2, 4]})
    assert engine_config(settings, cuda=True).buckets == (1, 2, 4)
    assert engine_config(load_settings(None, env={}), cuda=True).buckets == ()


def test_partial_batches_run_at_the_smallest_bucket_that_fits(tiny_bundle):
    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    config = EngineConfig(size=64, batch=4, buckets=(1, 2), hooks="none", compile="none")
    with StreamEngine(config, tiny_bundle) as engine:
        engine.open_stream("s", "oil painting", seed=1)
        shapes = [(len(part), engine.submit(part, "s").result()) for part in (frames[:1], frames[1:4], frames[4:5])]
    assert [(n, out.bucket, len(out.frames)) for n, out in shapes] == [(1, 1, 1), (3, 4, 3), (1, 1, 1)]
