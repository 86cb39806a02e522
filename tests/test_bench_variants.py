"""benchmarks/service_vs_engine.py variants: 'NAME KEY=VALUE ...' becomes settings overrides."""

from __future__ import annotations

import pytest

from benchmarks.service_vs_engine import parse_variant


def test_variant_values_parse_as_json_where_they_can():
    assert parse_variant("ring128 service.ring_slots=128 engine.buckets=[1,2]") == (
        "ring128", {"service.ring_slots": 128, "engine.buckets": [1, 2]})
    assert parse_variant("nosink sinks=none") == ("nosink", {"sinks": "none"})


def test_a_pair_without_a_value_is_named():
    with pytest.raises(SystemExit, match="'ring_slots' is not KEY=VALUE"):
        parse_variant("bad ring_slots")
