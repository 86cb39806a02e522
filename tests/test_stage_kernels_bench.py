"""benchmarks/stage_kernels.py: named inductor settings that exist, clear refusals, and (on a GPU) a record per stage."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.stage_kernels import VARIANTS, main, parse_args


def test_every_variant_names_real_settings():
    import dataclasses

    import torch._inductor.config as inductor_config

    from services.gpu.engine import EngineConfig

    assert VARIANTS["default"] == {"inductor": {}, "engine": {}}
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    for name, variant in VARIANTS.items():
        for key, value in variant["inductor"].items():
            assert hasattr(inductor_config, key), f"{name}: torch._inductor.config has no {key!r}"
            assert type(getattr(inductor_config, key)) is type(value), f"{name}: {key} takes {type(getattr(inductor_config, key))}"
        assert set(variant["engine"]) <= fields, name
        EngineConfig(**variant["engine"]).validate()


def test_arguments_are_checked_before_any_work(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--clip", "x.mp4", "--variant", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--clip", "x.mp4", "--stages", "flow", "--warmup-batches", "1"])
    assert "need --warmup-batches of at least 2" in capsys.readouterr().err
    assert parse_args(["--clip", "x.mp4"]).variant == ["default"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, capsys, bikes_path):
    assert main(["--profile", "synthetic-tiny", "--clip", bikes_path, "--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_each_stage_is_timed_and_traced_alone(tmp_path, bikes_path):
    assert main(["--profile", "synthetic-tiny", "--clip", bikes_path, "--size", "64", "--batch", "2",
                 "--stages", "denoise", "decode", "--compile-parts", "vae", "--repeats", "5", "--trace", "2",
                 "--output-code", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("stage_kernels_synthetic-tiny_*_B2_S64_*.json")
    [variant] = json.loads(path.read_text())["variants"]
    assert {key.split("/")[0] for key in variant["stages"]} == {"denoise", "decode"}
    for stage in variant["stages"].values():
        assert stage["ms_per_call"] > 0 and stage["ms_per_frame"] == pytest.approx(stage["ms_per_call"] / stage["rows"])
        kernels = stage["kernels"]
        assert kernels["device_ms_per_frame"] == pytest.approx(sum(kernels["families_ms_per_frame"].values()))
    # The compiled decode's fused kernels are found in inductor's generated code, which stays beside the record.
    decode = next(stage for key, stage in variant["stages"].items() if key.startswith("decode"))
    assert decode["kernels"]["sources"] and all("def triton" in src for src in decode["kernels"]["sources"].values())
    assert list((tmp_path / "inductor_default").rglob("output_code.py"))


def test_output_code_keeps_only_the_generated_code_and_finds_each_kernels_source(tmp_path):
    from types import SimpleNamespace

    import torch._inductor.config as inductor_config

    from benchmarks.stage_kernels import OUTPUT_CODE_ONLY, keep_output_code, kernel_sources

    real = set(k.split(".", 1)[1] for k in inductor_config._config if k.startswith("trace."))
    assert set(OUTPUT_CODE_ONLY) <= real  # every switch is one inductor has
    config = SimpleNamespace(trace=SimpleNamespace())
    keep_output_code(config, tmp_path / "code")
    assert config.trace.enabled and config.trace.output_code and not config.trace.ir_post_fusion
    assert config.trace.debug_dir == str(tmp_path / "code")
    assert config.fx_graph_cache is False and hasattr(inductor_config, "fx_graph_cache")

    quotes = "'" * 3
    graph = tmp_path / "code" / "run" / "model__0_inference_0.0"
    graph.mkdir(parents=True)
    (graph / "output_code.py").write_text(
        f"triton_poi_fused_silu_3 = async_compile.triton('triton_poi_fused_silu_3', {quotes}\n@triton.jit\ndef silu(): pass\n"
        f"{quotes}, device_str='cuda')\n"
        f"triton_per_fused_norm_4 = async_compile.triton('triton_per_fused_norm_4', {quotes}\ndef norm(): pass\n{quotes})\n")
    found = kernel_sources(tmp_path / "code", ["triton_per_fused_norm_4", "triton_poi_fused_silu_3", "nvjet_sm90_tst"], limit=20)
    assert set(found) == {"triton_per_fused_norm_4", "triton_poi_fused_silu_3"}  # cuBLAS kernels have no source here
    assert found["triton_poi_fused_silu_3"] == "\n@triton.jit\ndef silu(): pass\n"[:20]
    assert "norm" in found["triton_per_fused_norm_4"] and "silu" not in found["triton_per_fused_norm_4"]
