"""benchmarks/autotune_timings.py on CPU: the per-shape summary of an inductor autotuning cache file, and its
install into this machine's cache (the card stubbed: the real check needs CUDA)."""

from __future__ import annotations

import json

import pytest

from benchmarks import autotune_timings as timings

H100 = "NVIDIA H100 80GB HBM3"
# Keys as inductor writes them: each input's (device, dtype, *sizes, *strides, offset); addmm's first is the bias.
ADDMM = str([("cuda", "torch.bfloat16", 4096, 1024, 0, 1, 0), ("cuda", "torch.bfloat16", 4096, 4096, 4096, 1, 0),
             ("cuda", "torch.bfloat16", 4096, 1024, 1, 4096, 0)])
MM = str([("cuda", "torch.bfloat16", 1664, 2048, 2048, 1, 0), ("cuda", "torch.bfloat16", 2048, 6144, 1, 2048, 0)])
BMM = str([("cuda", "torch.bfloat16", 16, 8192, 256, 2097152, 1, 8192, 0),
           ("cuda", "torch.bfloat16", 16, 256, 128, 0, 1, 256, 0)])


def cache_file(tmp_path, card=H100, system_hash="abc", cache=None):
    cache = cache if cache is not None else {
        "addmm": {ADDMM: {"highest": {"bias_addmm-x": 0.0875, "addmm-y": 0.09, "triton_mm-a": 0.0512, "triton_mm-b": float("inf")}}},
        "mm": {MM: {"highest": {"mm-z": 0.0619, "triton_mm-c": 0.0737}}},
        "bmm": {BMM: {"highest": {"bmm-w": 0.05, "triton_bmm-d": 0.06}}},
    }
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"system": {"device": {"name": card}, "version": {"cuda": "13.0"}, "hash": system_hash},
                                "cache": cache}))
    return path


def test_the_summary_names_each_product_and_its_winner(tmp_path):
    rows = {r["op"]: r for r in timings.summarise(timings.load(cache_file(tmp_path)))}
    assert (rows["addmm"]["m"], rows["addmm"]["k"], rows["addmm"]["n"]) == (4096, 4096, 1024)  # the bias is not a factor
    assert rows["addmm"]["aten_ms"] == 0.0875 and rows["addmm"]["triton_ms"] == 0.0512  # a failed (inf) candidate is left out
    assert rows["addmm"]["winner"] == "triton" and rows["addmm"]["aten_over_triton"] == pytest.approx(0.0875 / 0.0512)
    assert (rows["mm"]["m"], rows["mm"]["k"], rows["mm"]["n"], rows["mm"]["winner"]) == (1664, 2048, 6144, "aten")
    assert (rows["bmm"]["batch"], rows["bmm"]["m"], rows["bmm"]["k"], rows["bmm"]["n"]) == (16, 8192, 256, 128)


def test_the_summary_command_writes_a_record(tmp_path, capsys):
    out = tmp_path / "results"
    assert timings.main(["summary", str(cache_file(tmp_path)), "--note", "bench B=16", "--out", str(out)]) == 0
    (path,) = out.glob("autotune_timings_NVIDIA_H100_80GB_HBM3_*.json")
    record = json.loads(path.read_text())
    assert record["card"] == H100 and record["shapes"] == 3 and record["triton_wins"] == 1 and record["note"] == "bench B=16"
    assert "4096×4096×1024: cuBLAS    87.5 µs, Triton    51.2 µs (1.71×, triton)" in capsys.readouterr().out


def test_a_file_that_is_not_a_timings_cache_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cache": {}}))
    assert timings.main(["summary", str(bad)]) == 2
    assert "not inductor's autotuning cache" in capsys.readouterr().err
    assert timings.main(["summary", str(tmp_path / "missing.json")]) == 2
    assert "not a readable JSON file" in capsys.readouterr().err


def test_install_needs_a_card_to_compare(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert timings.main(["install", str(cache_file(tmp_path))]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


def test_install_merges_into_this_machines_cache_and_refuses_another_card(tmp_path, monkeypatch, capsys):
    target = tmp_path / "inductor" / "cache" / "abc"
    monkeypatch.setattr(timings, "local_cache_path", lambda: (target, {"hash": "abc", "device": {"name": H100}}))
    monkeypatch.setattr(timings, "this_card", lambda: H100)
    target.parent.mkdir(parents=True)
    earlier = {"mm": {"other": {"highest": {"mm-q": 0.01}}}}
    target.write_text(json.dumps({"system": {}, "cache": earlier}))
    assert timings.main(["install", str(cache_file(tmp_path))]) == 0
    installed = json.loads(target.read_text())
    assert installed["system"]["hash"] == "abc"
    assert set(installed["cache"]["mm"]) == {"other", MM} and ADDMM in installed["cache"]["addmm"]  # merged, nothing lost

    other = cache_file(tmp_path, card="NVIDIA H200")
    assert timings.main(["install", str(other)]) == 2
    assert "timed on NVIDIA H200, this is NVIDIA H100 80GB HBM3: not installed" in capsys.readouterr().err


def test_install_from_other_versions_says_only_identical_candidates_are_reused(tmp_path, monkeypatch, capsys):
    target = tmp_path / "cache" / "new"
    monkeypatch.setattr(timings, "local_cache_path", lambda: (target, {"hash": "new"}))
    monkeypatch.setattr(timings, "this_card", lambda: H100)
    assert timings.main(["install", str(cache_file(tmp_path, system_hash="old"))]) == 0
    assert "other versions" in capsys.readouterr().out and target.is_file()
