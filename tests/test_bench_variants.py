"""benchmarks/service_vs_engine.py variants: 'NAME KEY=VALUE ...' becomes settings overrides."""

from __future__ import annotations

import pytest

from benchmarks.service_vs_engine import bench_sinks, parse_variant


def test_variant_values_parse_as_json_where_they_can():
    assert parse_variant("ring128 service.ring_slots=128 engine.buckets=[1,2]") == (
        "ring128", {"service.ring_slots": 128, "engine.buckets": [1, 2]})
    assert parse_variant("nosink sinks=none") == ("nosink", {"sinks": "none"})


def test_a_pair_without_a_value_is_named():
    with pytest.raises(SystemExit, match="'ring_slots' is not KEY=VALUE"):
        parse_variant("bad ring_slots")


def test_variant_sink_options_reach_the_mp4_sink_and_leave_the_settings():
    _, overrides = parse_variant("fast sink.preset=ultrafast sink.encoder_threads=12 engine.batch=16")
    assert bench_sinks(overrides, "/tmp/x") == [{"type": "mp4", "target": "/tmp/x/out.mp4", "preset": "ultrafast",
                                                 "encoder_threads": 12}]
    assert overrides == {"engine.batch": 16}
    _, overrides = parse_variant("nosink sinks=none")
    assert bench_sinks(overrides, "/tmp/x") == [] and overrides == {}


def test_a_comparison_cut_short_keeps_the_engine_figures(tmp_path, bikes_path, monkeypatch):
    """A device call can end mid-run: the record is on disk before the service runs, and grows after each run."""
    import json

    import benchmarks.service_vs_engine as script

    def cut_off(*_args, **_kwargs):
        raise KeyboardInterrupt("the call's time limit")

    monkeypatch.setattr(script, "in_child", cut_off)
    with pytest.raises(KeyboardInterrupt):
        script.main(["--profile", "synthetic-tiny", "--clip", bikes_path, "--frames", "8", "--size", "64", "--batch", "2",
                     "--naive-frames", "0", "--out", str(tmp_path)])
    [path] = tmp_path.glob("service_vs_engine_synthetic-tiny_*_B2_*.json")
    record = json.loads(path.read_text())
    assert record["engine"]["fps"] > 0 and record["engine"]["frames"] > 0 and record["service"] == "not run yet"
