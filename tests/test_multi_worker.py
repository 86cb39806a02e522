"""Several GPU workers on one node (CPU workers here, same plumbing): streams are balanced across them,
the API shows which worker serves which stream, and each worker's streams run to the end."""

from __future__ import annotations

import av
import pytest

from tests.support.service import Service, wait_for


def test_streams_are_balanced_across_workers(tmp_path, bikes_path):
    from pathlib import Path

    from tests.support.service import trim_clip

    clip = trim_clip(Path(bikes_path), tmp_path / "clip.mp4", 60)
    streams = [{"name": f"s{i}", "source": str(clip), "prompt": "oil",
                "sinks": [{"type": "mp4", "target": str(tmp_path / f"s{i}.mp4")}]} for i in range(3)]
    svc = Service(tmp_path, streams, model={"device": "cpu", "gpus": 2})
    try:
        svc.wait_ready()
        health = {p["name"] for p in svc.client.get("/healthz").json()["processes"]}
        assert {"gpu", "gpu-1", "flow", "flow-1"} <= health
        served = {s["name"]: svc.stream(s["name"])["gpu"] for s in streams}
        assert served == {"s0": "cpu (gpu)", "s1": "cpu (gpu-1)", "s2": "cpu (gpu)"}
        wait_for(lambda: all(svc.stream(s["name"])["state"] == "stopped" for s in streams), 240, "every stream to end")
        assert svc.stop() == 0
    finally:
        svc.kill()
    for s in streams:
        assert len(list(av.open(str(tmp_path / f"{s['name']}.mp4")).decode(video=0))) == 60


def test_more_gpus_than_the_node_has_is_refused():
    from services.supervisor import SupervisorError, gpu_workers
    from shared.settings import load_settings

    settings = load_settings(None, env={}, overrides={"model.device": "cuda", "model.gpus": 64})
    with pytest.raises(SupervisorError, match="model.gpus is 64"):
        gpu_workers(settings)


def test_replicas_split_the_configured_streams_by_name(monkeypatch):
    from services.supervisor import Supervisor
    from shared import sharding
    from shared.settings import load_settings

    names = [f"cam{i}" for i in range(12)]
    owned = []
    for ordinal in range(3):
        monkeypatch.setenv("STYLECAST_POD_NAME", f"stylecast-{ordinal}")
        settings = load_settings(None, env={}, overrides={"sharding.replicas": 3})
        shard = Supervisor(settings).shard()
        assert shard.ordinal == ordinal and shard.replicas == 3
        owned.append({n for n in names if shard.owns(n)})
    assert set().union(*owned) == set(names)  # every stream has a replica ...
    assert sum(len(o) for o in owned) == len(names)  # ... exactly one
    assert all(o == {n for n in names if sharding.owner(n, 3) == k} for k, o in enumerate(owned))
