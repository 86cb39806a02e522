"""The run summary adds up what each process wrote when it drained."""

from __future__ import annotations

import json

import pytest

from services.runner import RunSummary, _collect, gpu_line


def test_summary_has_totals_and_each_streams_rate_and_latency(tmp_path):
    def egress(name, written, first, last, latencies):
        (tmp_path / f"summary-egress-{name}.json").write_text(json.dumps(
            {"written": written, "first_write": first, "last_write": last, "latencies_s": latencies,
             "stage_means_ms": {"gpu": 10.0}}))

    (tmp_path / "summary-ingest-a.json").write_text(json.dumps({"read": 11}))
    (tmp_path / "summary-ingest-b.json").write_text(json.dumps({"read": 5}))
    egress("a", 11, 100.0, 101.0, [0.1] * 10 + [0.5])
    egress("b", 5, 100.5, 102.5, [0.2] * 5)
    summary = RunSummary()
    _collect(tmp_path, summary)
    assert (summary.frames_in, summary.frames_out) == (16, 16)
    assert summary.stream_fps == {"a": pytest.approx(10.0), "b": pytest.approx(2.0)}
    assert summary.fps == pytest.approx(15 / 2.5)
    assert summary.stream_latency_ms["a"] == {"p50": pytest.approx(100.0), "p95": pytest.approx(300.0), "max": pytest.approx(500.0)}
    assert summary.stream_latency_ms["b"]["p95"] == pytest.approx(200.0)
    assert summary.latency_ms_p50 == pytest.approx(100.0)
    assert summary.stage_means_ms == {"gpu": pytest.approx(10.0)}


def test_summary_carries_the_gpu_workers_account(tmp_path):
    (tmp_path / "summary-gpu.json").write_text(json.dumps(
        {"batches": 3, "frames": 24, "rows_mean": 8.0, "cadence_ms_p50": 54.2, "main_gap_ms_p50": 1.5,
         "wait_s": {"in_flight": 2.0, "no_frames": 0.5}, "refreshes": 2, "flow_backend": "torch"}))
    summary = RunSummary()
    _collect(tmp_path, summary)
    assert summary.gpu["gpu"]["frames"] == 24
    line = gpu_line("gpu", summary.gpu["gpu"])
    assert line == ("gpu: 24 frames in 3 batches (8.0 each) every 54.2 ms, main idle gap p50 1.5 ms, 2 conditioning refreshes "
                    "(flows: torch); dispatch waits: in_flight 2.0 s, no_frames 0.5 s")
    assert line in summary.lines()


def test_a_restarted_egress_counts_its_predecessors_frames_but_times_its_own(tmp_path):
    """After a kill -9 the new egress reports the stream's total (55 kept + 65 its own); rates and stage
    means use only the frames inside its own first..last window."""
    (tmp_path / "summary-egress-a.json").write_text(json.dumps(
        {"written": 120, "written_here": 65, "first_write": 10.0, "last_write": 12.6, "latencies_s": [0.1] * 65,
         "stage_means_ms": {"gpu": 20.0}}))
    summary = RunSummary()
    _collect(tmp_path, summary)
    assert summary.frames_out == 120
    assert summary.stream_fps["a"] == pytest.approx(64 / 2.6)
    assert summary.fps == pytest.approx(64 / 2.6)
    assert summary.stage_means_ms == {"gpu": pytest.approx(20.0)}
