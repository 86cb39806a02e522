"""`stylecast run`: the whole multi-process pipeline on one machine, for a file or a camera, in the foreground.

Bad input fails before anything starts (the source is probed first); a file shows a progress bar;
the run ends with a summary (frames in, out, dropped; fps; end-to-end latency p50/p95). Ctrl-C
drains: what was accepted is written or counted, the output file is finalised, nothing is left behind.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.supervisor import Supervisor
from shared.process import parse_detail
from shared.settings import Settings


@dataclass
class RunSummary:
    frames_in: int = 0
    frames_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    fps: float = 0.0  # steady state: frames between the first and the last written, over that time
    wall_fps: float = 0.0  # frames over the whole run, start-up of the stream's processes included
    wall_s: float = 0.0
    stage_means_ms: dict[str, float] = field(default_factory=dict)
    stream_fps: dict[str, float] = field(default_factory=dict)  # each stream's own steady rate
    stream_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # each stream's p50 / p95 / max

    @property
    def aggregate_fps(self) -> float:
        """Sum of the streams' steady rates: the node's throughput while they run side by side."""
        return sum(self.stream_fps.values())
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    streams: dict = field(default_factory=dict)
    interrupted: bool = False
    logs: str = ""
    model: str = ""
    gpu: dict = field(default_factory=dict)  # each GPU worker's batch timings and dispatch waits (worker_stats)

    def lines(self) -> list[str]:
        dropped = sum(self.dropped.values())
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
        latency = (f"end-to-end latency p50 {self.latency_ms_p50:.0f} ms, p95 {self.latency_ms_p95:.0f} ms"
                   if self.latency_ms_p50 is not None else "end-to-end latency: no frames written")
        return [
            f"model: {self.model}",
            f"frames in {self.frames_in}, out {self.frames_out}, dropped {dropped}" + (f" ({why})" if why else ""),
            f"{self.fps:.1f} fps steady, {self.wall_fps:.1f} fps over {self.wall_s:.1f} s; {latency}",
            "mean ms per frame by stage: " + ", ".join(f"{k} {v:.0f}" for k, v in self.stage_means_ms.items()),
            *(f"stream {name}: {info['state']}{' - ' + info['reason'] if info['reason'] else ''}"
              for name, info in self.streams.items()),
            *(gpu_line(name, data) for name, data in sorted(self.gpu.items())),
            f"logs: {self.logs}",
        ]


def gpu_line(name: str, data: dict) -> str:
    """One line of a GPU worker's summary: batch rate, the main path's idle gaps, where dispatch waited."""
    if not data.get("batches"):
        return f"{name}: no batches"
    waits = ", ".join(f"{k} {v:.1f} s" for k, v in data.get("wait_s", {}).items())
    cadence = f"every {data['cadence_ms_p50']:.1f} ms" if "cadence_ms_p50" in data else ""
    gap = f", main idle gap p50 {data['main_gap_ms_p50']:.1f} ms" if "main_gap_ms_p50" in data else ""
    gap += f", {data['refreshes']} conditioning refreshes" if "refreshes" in data else ""
    gap += f" (flows: {data['flow_backend']})" if "flow_backend" in data else ""
    return (f"{name}: {data['frames']} frames in {data['batches']} batches ({data['rows_mean']:.1f} each) {cadence}{gap}; "
            f"dispatch waits: {waits}")


def latency_ms(latencies_s: list[float]) -> dict[str, float]:
    """p50 / p95 / max in milliseconds of end-to-end latencies in seconds."""
    ms = np.asarray(latencies_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())}


def _collect(run_dir: Path, summary: RunSummary) -> None:
    latencies, first, last = [], [], []
    timed = 0  # frames written inside the [first_write, last_write] windows (rates and stage means)
    for path in run_dir.glob("summary-*.json"):
        data = json.loads(path.read_text())
        if path.name.startswith("summary-gpu"):
            summary.gpu[path.name[len("summary-"):-len(".json")]] = data
        elif path.name.startswith("summary-ingest-"):
            summary.frames_in += data.get("read", 0)
        elif path.name.startswith("summary-egress-"):
            name = path.name[len("summary-egress-"):-len(".json")]
            summary.frames_out += data["written"]
            here = data.get("written_here", data["written"])  # after an egress restart: this process's frames only
            if data["first_write"] is not None and data["last_write"] > data["first_write"]:
                summary.stream_fps[name] = (here - 1) / (data["last_write"] - data["first_write"])
            latencies += data["latencies_s"]
            if data["latencies_s"]:
                summary.stream_latency_ms[name] = latency_ms(data["latencies_s"])
            if data["first_write"] is not None:
                first.append(data["first_write"])
                last.append(data["last_write"])
                timed += here
                for stage, ms in data.get("stage_means_ms", {}).items():
                    summary.stage_means_ms[stage] = summary.stage_means_ms.get(stage, 0.0) + ms * here
    if timed:
        summary.stage_means_ms = {k: v / timed for k, v in summary.stage_means_ms.items()}
    if first and max(last) > min(first):
        summary.fps = (timed - 1) / (max(last) - min(first))
    if latencies:
        overall = latency_ms(latencies)
        summary.latency_ms_p50, summary.latency_ms_p95 = overall["p50"], overall["p95"]


def run_pipeline(settings: Settings, *, progress: bool = True) -> RunSummary:
    """Run every configured stream to its end (files) or until interrupted; returns the summary."""
    from tqdm import tqdm

    sup = Supervisor(settings, exit_when_done=True)
    probed = {cfg.name: sup.probe(cfg) for cfg in settings.streams}  # bad input fails here, before any start
    random = settings.model.profile.startswith("synthetic-")
    summary = RunSummary(model=f"{settings.model.profile}" + (" - RANDOM WEIGHTS: the output is not a stylisation" if random else ""))
    interrupts = []

    def on_signal(signum, _frame):
        interrupts.append(signum)
        sup.stop_requested.set()
        if len(interrupts) > 1:  # a second Ctrl-C: stop waiting for the drain
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    total = sum(count or 0 for _, count in probed.values()) or None
    bar = tqdm(total=total, unit="frame", disable=not progress, desc="loading models", leave=True)
    t_start = time.monotonic()
    try:
        sup.start()
        sup.wait_ready()
        bar.set_description("styling")
        for cfg in sup._streams_cfg:  # every stream ready before any starts: they begin together
            sup.add_stream(cfg, probed[cfg.name], start=False)
        for cfg in sup._streams_cfg:
            sup.start_stream(cfg.name)
        t_start = time.monotonic()
        while not sup.stop_requested.is_set():
            sup.step(0.1)
            written = sum(int(parse_detail(c.detail).get("written", 0)) for c in sup.children.values()
                          if c.module == "services.egress")
            bar.update(max(0, written - bar.n))
            if sup.failure:
                break
            if sup.all_streams_done():
                break
    finally:
        summary.interrupted = bool(interrupts)
        summary.wall_s = time.monotonic() - t_start
        bar.close()
        summary.logs = str(sup.log_dir or "")
        try:
            sup.shutdown(on_drained=lambda run_dir: _collect(run_dir, summary))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        summary.streams = sup.summary_streams()
        for info in summary.streams.values():
            for reason, n in info["dropped"].items():
                summary.dropped[reason] = summary.dropped.get(reason, 0) + n
        if summary.frames_out and summary.wall_s > 0:
            summary.wall_fps = summary.frames_out / summary.wall_s
    if sup.failure:
        summary.streams["service"] = {"state": "failed", "reason": sup.failure}
    return summary
