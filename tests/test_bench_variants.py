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
