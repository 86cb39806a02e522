"""Benchmark result records: one JSON file per run, named by what ran and when (UTC)."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path


def cpu_name() -> str:
    """The host's processor model: host-bound figures (the naive pipeline, the service's CPU stages) move with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict:
    """What a record says of the host besides the card: processor model and usable cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_name(), "cpu_cores": cores}


def card_slug(card: str) -> str:
    """A card's name as it goes into a result file name."""
    return card.replace(" ", "_").replace("/", "_")


def write_result(record: dict, out_dir: str | Path, stem: str, path: Path | None = None) -> Path:
    """Write a benchmark record as `<out_dir>/<stem>_<UTC time>.json`, making the folder if needed.

    `path` (what an earlier call returned) rewrites that file instead: a record that grows as a long run
    goes on, so a run cut short still leaves what it measured."""
    if path is None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{stem}_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2, default=float))
    return path


class GrowingRecord:
    """A benchmark record written again after each step, so a run cut short keeps what it measured.
    `out_dir` None or '': nothing is written."""

    def __init__(self, record: dict, out_dir: str | Path | None, stem: str):
        self.record, self.out_dir, self.stem = record, out_dir, stem
        self.path: Path | None = None

    def save(self) -> Path | None:
        if self.out_dir:
            self.path = write_result(self.record, self.out_dir, self.stem, self.path)
        return self.path

    def done(self) -> int:
        """Say where the record is; the script's exit status."""
        if self.path:
            print(f"wrote {self.path}")
        return 0
