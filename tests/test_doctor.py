"""`stylecast doctor`: each check finds what it should on this (CPU) machine and on broken setups."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from services.cli import app
from services.commands.doctor import (
    Status,
    check_cuda,
    check_h264,
    check_packages,
    check_ports,
    check_profile,
    check_runtime_dir,
    check_shm,
    check_taesd,
    run_checks,
    stream_shm_bytes,
)
from services.gpu.profiles import COMPONENTS
from shared.ring import Ring
from shared.runtime import new_run_id
from shared.settings import Settings, load_settings

NO_CUDA = not torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(tmp_path: Path, **sections) -> Settings:
    sections.setdefault("service", {})
    sections["service"] = {"runtime_dir": str(tmp_path / "rt"), "api_port": _free_port(), **sections["service"]}
    return Settings.model_validate(sections)


def _by_name(rows):
    return {row.name: row for row in rows}


@pytest.mark.skipif(not NO_CUDA, reason="checks the CPU-only verdict; this machine has CUDA")
def test_on_a_cpu_machine_cuda_is_a_warning_and_the_rest_is_ok(tmp_path: Path) -> None:
    rows = run_checks(_settings(tmp_path))
    cuda = _by_name(rows)["cuda"]
    assert cuda.status is Status.WARN and "no CUDA GPU is visible" in cuda.detail and "NVIDIA driver" in cuda.fix
    others = [r for r in rows if r.name != "cuda"]
    assert all(r.status is Status.OK for r in others), [(r.name, r.status, r.detail) for r in others if r.status is not Status.OK]
    assert {"python", "torch", "diffusers", "transformers", "h264", "model profile", "taesd", "api port", "bus sockets",
            "shared memory", "runtime dir"} <= set(_by_name(rows))
    assert "RANDOM WEIGHTS" in _by_name(rows)["model profile"].detail


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_cuda_asked_for_but_absent_fails() -> None:
    [row] = check_cuda("cuda:0")
    assert row.status is Status.FAIL and "model.device is 'cuda:0'" in row.detail


def test_package_rows_name_versions_and_wishes() -> None:
    rows = _by_name(check_packages())
    assert rows["torch"].detail.startswith(f"torch {torch.__version__}") and "wants" in rows["torch"].detail
    assert rows["diffusers"].status is Status.OK and "==0.42.1" in rows["diffusers"].detail
    assert rows["model classes"].status is Status.OK


def test_h264_round_trip() -> None:
    row = check_h264()
    assert row.status is Status.OK and "libx264" in row.detail


def _checkpoint(root: Path) -> Path:
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({c: ["x", "y"] for c in COMPONENTS}))
    for component in COMPONENTS:
        (root / component).mkdir()
        (root / component / "config.json").write_text("{}")
    for component in ("unet", "vae", "text_encoder"):
        (root / component / "model.safetensors").write_bytes(b"\0" * 16)
    return root


def test_profile_directory_layout(tmp_path: Path) -> None:
    root = _checkpoint(tmp_path / "ckpt")
    assert check_profile(str(root)).status is Status.OK
    (root / "vae" / "model.safetensors").unlink()
    row = check_profile(str(root))
    assert row.status is Status.FAIL and "vae/ holds no weights" in row.detail
    for path in (root / "scheduler").iterdir():
        path.unlink()
    (root / "scheduler").rmdir()
    assert "scheduler/ is missing" in check_profile(str(root)).detail
    (root / "model_index.json").unlink()
    assert "model_index.json is missing" in check_profile(str(root)).detail
    assert check_profile(str(tmp_path / "nowhere")).detail.endswith("is not a directory")


def test_taesd_folder(tmp_path: Path) -> None:
    assert check_taesd(None).status is Status.OK
    (tmp_path / "taesdxl_encoder.safetensors").write_bytes(b"\0" * 1024)
    row = check_taesd(str(tmp_path))
    assert row.status is Status.FAIL and "taesdxl_decoder.safetensors" in row.detail
    (tmp_path / "taesdxl_decoder.safetensors").write_bytes(b"\0" * 1024)
    assert check_taesd(str(tmp_path)).status is Status.OK


def test_taken_ports_fail(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        settings = _settings(tmp_path, service={"api_port": port, "bus_transport": "tcp", "bus_tcp_base_port": port})
        rows = _by_name(check_ports(settings.service))
    assert rows["api port"].status is Status.FAIL and f"127.0.0.1:{port} is in use" in rows["api port"].detail
    assert rows["bus ports"].status is Status.FAIL and "bus_tcp_base_port" in rows["bus ports"].fix


def test_long_runtime_dir_breaks_ipc_sockets(tmp_path: Path) -> None:
    row = _by_name(check_ports(_settings(tmp_path, service={"runtime_dir": "/tmp/" + "d" * 90}).service))["bus sockets"]
    assert row.status is Status.FAIL and "107-byte limit" in row.detail


def test_shared_memory_estimate_matches_real_rings(tmp_path: Path) -> None:
    settings = _settings(tmp_path, engine={"size": 64, "batch": 4}, service={"ring_slots": 4})
    slots = settings.stream_ring_slots()  # as the supervisor sizes them
    assert slots == 6 * 4 + 2  # four batches in flight (depth 3), one filling, one at egress, the flow source
    run = new_run_id()
    rings = [Ring.create(run, "cam", "in", slots=slots, shape=(64, 64, 3), dtype="u1"),
             Ring.create(run, "cam", "out", slots=slots, shape=(64, 64, 3), dtype="u1"),
             Ring.create(run, "cam", "flow", slots=8, shape=(64, 64, 2), dtype="f4")]
    try:
        real = sum(os.stat(f"/dev/shm/{ring.name}").st_size for ring in rings)
    finally:
        for ring in rings:
            ring.unlink()
    assert stream_shm_bytes(settings) == real


def test_shared_memory_too_small_fails(tmp_path: Path, bikes_path: str) -> None:
    many = [{"name": f"cam{i}", "source": bikes_path, "prompt": "x"} for i in range(400)]
    settings = _settings(tmp_path, engine={"size": 1024}, service={"ring_slots": 256}, streams=many)
    row = check_shm(settings)
    assert row.status is Status.FAIL and "the 400 configured streams need" in row.detail and "shm" in row.fix
    assert check_shm(_settings(tmp_path), shm_dir=str(tmp_path / "no-shm")).status is Status.FAIL
    assert check_shm(_settings(tmp_path)).status is Status.OK


def test_runtime_dir_permissions(tmp_path: Path) -> None:
    assert "will be created" in check_runtime_dir(tmp_path / "new" / "rt").detail
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    row = check_runtime_dir(open_dir)
    assert row.status is Status.FAIL and row.fix == f"chmod 700 {open_dir}"
    open_dir.chmod(0o700)
    assert check_runtime_dir(open_dir).status is Status.OK


def test_command_table_json_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "stylecast.yaml"
    config.write_text(yaml.safe_dump({"service": {"api_port": _free_port(), "runtime_dir": str(tmp_path / "rt")}}))
    good = runner.invoke(app, ["doctor", "--config", str(config)])
    assert good.exit_code == 0, good.stdout  # a missing GPU is a WARN, not a FAIL
    assert "CHECK" in good.stdout and " FAIL  " not in good.stdout and good.stdout.rstrip().endswith(" 0 FAIL")

    as_json = runner.invoke(app, ["doctor", "--config", str(config), "--json", "--profile", str(tmp_path / "missing")])
    assert as_json.exit_code == 1
    rows = {row["check"]: row for row in json.loads(as_json.stdout)}
    assert rows["model profile"]["status"] == "FAIL" and rows["config"]["status"] == "OK"

    config.write_text(yaml.safe_dump({"engine": {"size": 500}, "service": {"runtime_dir": str(tmp_path / "rt")}}))
    bad = runner.invoke(app, ["doctor", "--config", str(config)])
    assert bad.exit_code == 1 and "engine.size: 500 is not a multiple of 64" in bad.stdout
    assert load_settings(None, env={}).engine.size == 512  # doctor left the defaults alone


def test_doctor_reads_no_secret_into_its_output(tmp_path: Path) -> None:
    secret = "doctor-s3cret-token-value"
    config = tmp_path / "stylecast.yaml"
    config.write_text(yaml.safe_dump({"service": {"api_port": _free_port(), "runtime_dir": str(tmp_path / "rt"), "token": secret}}))
    out = CliRunner().invoke(app, ["doctor", "--config", str(config), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout) and secret not in out.stdout
