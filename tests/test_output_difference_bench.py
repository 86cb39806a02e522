"""benchmarks/output_difference.py on the tiny profile: each variant's distance from the exact default, and its speed."""

from __future__ import annotations

import json

import pytest

from benchmarks.output_difference import main


def test_approximations_move_the_output_and_exact_settings_do_not(tmp_path, bikes_path, capsys):
    assert main(["--profile", "synthetic-tiny", "--clip", bikes_path, "--frames", "8", "--batch", "2",
                 "--variant", "te_batch_one te_mode=batch_one",
                 "--variant", "key_channel cross_attention=key_channel",
                 "--variant", "parts compile_parts=[\"unet\"]", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("output_difference_synthetic-tiny_cpu_B2_*.json")
    record = json.loads(path.read_text())
    rows = {row["name"]: row for row in record["variants"]}
    assert record["frames"] == 8 and record["reference"]["fps"] > 0 and record["random_weights"] is True
    assert record["engines"] == "a process each" and record["reference_dtype"] == "float32"
    # The same function: the outputs agree to float rounding.
    assert rows["key_channel"]["latent_cosine"]["min"] > 0.99999 and rows["key_channel"]["frame_psnr_db"]["mean"] > 40
    assert rows["parts"]["frames_identical"]  # compiling nothing on the CPU either way: the same arithmetic
    # One frame's text encoding broadcast to the batch: the other frames' conditioning changes. (The tiny random
    # U-Net hardly listens to its text, so the move is small in absolute terms, but far above rounding.)
    assert rows["te_batch_one"]["settings"] == {"te_mode": "batch_one"}
    moved = {name: 1 - rows[name]["latent_cosine"]["mean"] for name in ("te_batch_one", "key_channel")}
    assert moved["te_batch_one"] > 1e-6 and moved["te_batch_one"] > 20 * moved["key_channel"]
    assert rows["parts"]["settings"] == {"compile_parts": ["unet"]}  # a JSON list became the config's tuple
    assert all(row["fps"] > 0 and row["fps_over_default"] > 0 for row in rows.values())
    assert "te_batch_one: latent cosine" in capsys.readouterr().out


@pytest.mark.parametrize("variant, message", [
    ("big batch=16", "'batch' is not an engine setting a variant can change"),
    ("typo te_moed=batch_one", "'te_moed' is not an engine setting"),
    ("bad te_mode=sometimes", "variant 'bad': te_mode 'sometimes'"),
])
def test_a_bad_variant_is_refused_by_name_before_any_run(tmp_path, variant, message):
    with pytest.raises(SystemExit, match=message):
        main(["--profile", "synthetic-tiny", "--frames", "4", "--batch", "2", "--variant", variant, "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_a_run_cut_off_mid_variant_keeps_what_it_measured(tmp_path, bikes_path, monkeypatch):
    """A device call's time limit kills the process during a later engine: the record on disk already holds the
    default and every finished variant (the stand-in 'cut' raises where a kill would land)."""
    import benchmarks.output_difference as script

    real_run = script.run

    def run_until_cut(bundle, config, frames, prompt):
        if config.cross_attention == "key_channel":
            raise KeyboardInterrupt("cut off")
        return real_run(bundle, config, frames, prompt)

    monkeypatch.setattr(script, "run", run_until_cut)
    with pytest.raises(KeyboardInterrupt):
        main(["--profile", "synthetic-tiny", "--clip", bikes_path, "--frames", "4", "--batch", "2",
              "--variant", "again", "--variant", "cut cross_attention=key_channel", "--same-process",
              "--out", str(tmp_path)])
    [path] = tmp_path.glob("output_difference_synthetic-tiny_cpu_B2_*.json")
    record = json.loads(path.read_text())
    assert record["reference"]["fps"] > 0
    assert [row["name"] for row in record["variants"]] == ["again"]
    assert record["variants"][0]["frames_identical"]  # the default run twice: the same frames
