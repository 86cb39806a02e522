"""shared/records.py: benchmark records that grow as a run goes on."""

from __future__ import annotations

import json

from shared.records import GrowingRecord


def test_a_growing_record_rewrites_one_file_after_each_step(tmp_path, capsys):
    record = {"kind": "demo", "steps": []}
    growing = GrowingRecord(record, tmp_path / "results", "demo_B8")
    for step in (1, 2):
        record["steps"].append(step)
        path = growing.save()
        assert json.loads(path.read_text())["steps"] == list(range(1, step + 1))  # on disk after each step
    assert list((tmp_path / "results").iterdir()) == [path] and path.name.startswith("demo_B8_")
    assert growing.done() == 0 and capsys.readouterr().out == f"wrote {path}\n"


def test_a_growing_record_without_a_folder_writes_nothing(tmp_path, capsys):
    growing = GrowingRecord({"kind": "demo"}, "", "demo")
    assert growing.save() is None and growing.done() == 0
    assert capsys.readouterr().out == "" and not list(tmp_path.iterdir())
