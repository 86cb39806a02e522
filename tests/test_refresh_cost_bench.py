"""benchmarks/refresh_cost.py: one refresh's cost by rows (CPU, toy size, eager), and its argument checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.refresh_cost import parse_args
from tests.support.service import REPO


def test_refresh_cost_records_each_size_of_each_mode(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "benchmarks/refresh_cost.py", "--profile", "synthetic-tiny", "--batch", "4", "--sizes", "1,4",
           "--modes", "eager", "--repeats", "2", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("refresh_cost_synthetic-tiny_*_B4_S64_*.json")
    record = json.loads(path.read_text())
    assert record["card"].startswith("CPU") and record["batch"] == 4 and record["size"] == 64
    rows = record["modes"]["eager"]
    assert set(rows) == {"1", "4"}
    for n, row in rows.items():
        assert row["flow_ms"] > 0 and row["cond_ms"] > 0
        assert row["ms"] == pytest.approx(row["flow_ms"] + row["cond_ms"])
        assert row["ms_per_row"] == pytest.approx(row["ms"] / int(n))


@pytest.mark.parametrize(("argv", "message"), [
    (["--modes", "eager,fast"], "unknown mode"),
    (["--batch", "8", "--sizes", "1,16"], "outside 1..--batch"),
])
def test_refresh_cost_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
