"""Smoke test of the paper reproduction scripts (benchmarks/paper_table*.py): each runs on the CPU at toy
sizes and writes a record that says what it ran on and what its numbers are worth."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from tests.support.quality_models import write_random_lpips

# (script, extra arguments that keep it to a few seconds)
SCRIPTS = {
    "paper_table5_batch_scaling": ["--batches", "1,2", "--repeats", "1"],
    "paper_table3_sustained": ["--rows", "2:2,2:inf", "--frames", "8"],
    "paper_table6_refresh_sweep": ["--clips", "sample:carphone_pristine", "--frames", "8", "--sweep", "1,2", "--batch", "2"],
    "paper_table7_drift": ["--frames", "24", "--chunk", "4", "--batch", "2", "--refresh", "2", "--warmup-batches", "1"],
    "paper_table8_scene_cuts": ["--pairs", "sample:carphone_pristine+sample:bigbuckbunny", "--segment", "4",
                                "--batch", "2", "--window", "2"],
}


@pytest.fixture
def quick(tiny_bundle, monkeypatch, one_torch_thread):
    """One thread (tiny ops; shared cores), and the session's synthetic-tiny instead of loading it again."""
    import services.gpu.profiles

    monkeypatch.setattr(services.gpu.profiles, "load_profile", lambda profile, device, **kw: tiny_bundle)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_on_the_cpu_and_records_what_it_is(script, quick, tmp_path):
    module = importlib.import_module(f"benchmarks.{script}")
    extra = list(SCRIPTS[script])
    if script == "paper_table8_scene_cuts":
        write_random_lpips(tmp_path / "lpips.safetensors")
        extra += ["--lpips-weights", str(tmp_path / "lpips.safetensors")]
    assert module.main(["--profile", "synthetic-tiny", "--device", "cpu", "--out", str(tmp_path), *extra]) == 0
    files = list(tmp_path.glob(f"paper_{module.TABLE}_synthetic-tiny_CPU*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    assert rec["kind"] == f"paper_{module.TABLE}" and rec["random_weights"] is True
    assert rec["card"].startswith("CPU") and rec["torch"] == torch.__version__ and "--profile synthetic-tiny" in rec["command"]
    assert rec["notes"][0].startswith("RANDOM WEIGHTS") and any("CPU smoke run" in n for n in rec["notes"])
    assert rec["settings"]["size"] == 64
    check = globals()[f"_check_{module.TABLE}"]
    check(rec)


def _check_table5(rec):
    for component in ("text_encoder", "unet"):
        row = rec["results"][component]
        assert row["batch"] == [1, 2] and all(ms > 0 for ms in row["ms_mean"]) and row["sublinearity"][0] == 1.0


def _check_table3(rec):
    rows = rec["results"]
    assert [(r["batch"], r["refresh"]) for r in rows] == [(2, 2), (2, "inf")]
    assert all(r["fps"] > 0 and r["e2e_ms_p50"] > r["batch_wall_ms_p50"] for r in rows)
    assert [r["refreshes"] for r in rows] == [2, 1]  # 4 batches: N=2 refreshes at batches 1 and 3, ∞ at 1 only


def _check_table6(rec):
    by_refresh = rec["results"]["by_refresh"]
    assert set(by_refresh) == {"1", "2"}
    assert by_refresh["1"]["l1_to_n1"]["mean"] == 0 and by_refresh["2"]["lpips_to_n1"] is None
    assert rec["quality_models"]["absent"]["lpips"].startswith("no --lpips-weights")
    assert "random non-zero weights" in rec["settings"]["adapter"]


def _check_table7(rec):
    chunks = rec["results"]["chunks"]
    assert len(chunks) == 5 and chunks[0]["l1_to_chunk0"] == 0 and chunks[0]["frames"] == [2, 6]
    assert rec["results"]["std"]["chunks_1_on"]["sobel"] is not None


def _check_table8(rec):
    pair = rec["results"]["per_pair"]["sample:carphone_pristine+sample:bigbuckbunny"]
    assert set(pair) == {"n8", "n1", "n8_scene_cut"}
    assert pair["n1"]["l1_post"] == 0 and pair["n1"]["lpips_post"] == 0
    assert pair["n8_scene_cut"]["refreshes"].get("scene_cut") == 2
    assert rec["quality_models"]["lpips"] == "LPIPS-Alex" and "lpips" not in rec["quality_models"]["absent"]
