"""The GPU worker's account of its time: dispatch states by elapsed time, batch timings summarised."""

from __future__ import annotations

import pytest

from services.gpu.worker_stats import WorkerStats


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_time_goes_to_the_state_the_worker_was_in():
    clock = FakeClock()
    heard = {}
    stats = WorkerStats(clock=clock, on_wait=lambda reason, s: heard.__setitem__(reason, heard.get(reason, 0) + s))
    for block, busy, dt in [("no_frames", False, 1.0), ("filling", False, 0.25), (None, True, 0.01),
                            ("in_flight", True, 2.0), ("output_full", True, 0.5), ("no_frames", False, 0.0)]:
        stats.state(block, busy)
        clock.t += dt
    stats.state("no_frames", False)
    summary = stats.summary()
    assert summary["wait_s"] == {"dispatching": 0.01, "filling": 0.25, "in_flight": 2.0, "no_frames": 1.0,
                                 "output_full": 0.5}
    assert summary["gpu_idle_s"] == pytest.approx(1.25)  # only the turns with nothing in flight
    assert heard == pytest.approx(summary["wait_s"])  # what the metrics counter hears, as it happens


def test_batch_timings_summarise_to_percentiles_and_cadence():
    stats = WorkerStats(keep=3)
    for i, (rows, gap) in enumerate([(8, 100.0), (8, 1.0), (4, 3.0), (8, 2.0)]):
        stats.batch(rows, 8, {"t_done": 10.0 + 0.05 * i, "main_gap_ms": gap, "side_ms": 30.0, "main_ms": 50.0})
    summary = stats.summary()
    assert (summary["batches"], summary["frames"], summary["rows_mean"]) == (4, 28, 7.0)
    assert summary["main_gap_ms_p50"] == pytest.approx(2.0)  # the oldest batch fell out of the window
    assert summary["cadence_ms_p50"] == pytest.approx(50.0)
    assert "side_lag_ms_p50" not in summary  # never measured, never reported
    series = summary["series"]
    assert series["columns"][:4] == ("rows", "t_done", "side_ms", "main_ms")
    assert [row[:2] for row in series["rows"]] == [[8, 0.0], [4, 50.0], [8, 100.0]]  # ms since the first kept batch
    assert series["rows"][0][series["columns"].index("main_gap_ms")] == 1.0


def test_no_batches_no_figures():
    summary = WorkerStats().summary()
    assert summary["batches"] == 0 and summary["rows_mean"] is None and "cadence_ms_p50" not in summary
