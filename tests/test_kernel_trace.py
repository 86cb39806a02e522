"""The kernel trace ranks what ran during pipelined batches and groups it into families by name."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.gpu.kernel_trace import duration_bin, family


@pytest.mark.parametrize("name, expected", [
    ("nvjet_sm90_tst_128x128_64x6_4x1_v_bz_TNT", "matmul"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
    ("triton_per_fused_native_group_norm_0", "fused (inductor)"),
    # Named after the attention it feeds, but inductor's own code (a norm, a mask): not the attention kernel.
    ("triton_per_fused__scaled_dot_product_cudnn_attention__to_copy_clone_expand_mean_31", "fused (inductor)"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64", "attention"),
    ("Memcpy HtoD (Pinned -> Device)", "copy"),
    ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16>", "copy"),
    ("aten::addmm", "matmul"),
    ("void at::native::reduce_kernel<512, 1>", "other"),
])
def test_family_by_kernel_name(name, expected):
    assert family(name) == expected


@pytest.mark.parametrize("mean_us, label", [(0.5, "<5us"), (4.99, "<5us"), (5.0, "<20us"), (60, "<100us"), (100, ">=100us")])
def test_duration_bins(mean_us, label):
    assert duration_bin(mean_us) == label


def test_bench_traces_kernels_into_the_record(tmp_path, bikes_path):
    result = CliRunner().invoke(app, [
        "bench", "--profile", "synthetic-tiny", "--device", "cpu", "--clip", bikes_path, "--size", "64", "--batch", "2",
        "--frames", "8", "--warmup-batches", "1", "--naive-frames", "2", "--trace-batches", "2", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    kernels = json.loads(next(tmp_path.glob("bench_*.json")).read_text())["kernels"]
    assert kernels["batches"] == 2 and kernels["frames"] == 4
    top = kernels["top"]
    assert top and all(r["ms"] > 0 and r["calls"] >= 1 for r in top)
    assert [r["ms"] for r in top] == sorted((r["ms"] for r in top), reverse=True)
    assert 0 < sum(r["share"] for r in top) <= 1 + 1e-9
    # On the CPU the operators stand in for kernels: the U-Net's convolutions and the encoders' matmuls ran.
    assert kernels["families_ms_per_frame"]["convolution"] > 0 and kernels["families_ms_per_frame"]["matmul"] > 0
    assert kernels["device_ms_per_frame"] == pytest.approx(sum(kernels["families_ms_per_frame"].values()))
    durations = kernels["by_mean_duration"]
    assert list(durations) == ["<5us", "<20us", "<100us", ">=100us"]
    assert kernels["device_ms_per_frame"] == pytest.approx(sum(d["ms_per_frame"] for d in durations.values()))
    assert sum(d["calls"] for d in durations.values()) >= sum(r["calls"] for r in top)
    assert "traced 4 frames" in result.output
