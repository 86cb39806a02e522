"""Training checkpoints: the adapter in the kohya-style layout, AdamW's state, and the run's JSON — no pickle.

    OUT/adapter.safetensors                   the latest adapter (what EngineConfig.adapter_weights takes)
    OUT/checkpoints/step-000200/
        adapter.safetensors                   TemporalLLLite.save: kohya keys + metadata
        optimizer.safetensors                 per parameter name: `<name>.exp_avg`, `.exp_avg_sq`, `.step`
        state.json                            step, losses, settings, pair fingerprint, versions
A checkpoint folder is written under a temporary name and renamed when complete, so the newest
folder is always whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

CHECKPOINTS = "checkpoints"
LATEST_ADAPTER = "adapter.safetensors"
ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")
_NAME = re.compile(r"^step-(\d{6,})$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit this run; the message says which and why."""


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(out_dir: str | os.PathLike, step: int, adapter, optimizer: torch.optim.Optimizer,
                    state: dict, adapter_metadata: dict[str, str]) -> Path:
    final = checkpoint_dir(out_dir, step)
    partial = final.with_name(final.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    adapter.save(partial / ADAPTER_FILE, extra_metadata=adapter_metadata)
    save_optimizer(partial / OPTIMIZER_FILE, optimizer, dict(adapter.named_parameters()))
    (partial / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    latest = Path(out_dir) / LATEST_ADAPTER
    copying = latest.with_name(latest.name + ".part")
    shutil.copyfile(final / ADAPTER_FILE, copying)
    os.replace(copying, latest)
    return final


def read_state(checkpoint: Path) -> dict:
    path = checkpoint / STATE_FILE
    for required in (path, checkpoint / ADAPTER_FILE, checkpoint / OPTIMIZER_FILE):
        if not required.is_file():
            raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {required.name} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: {STATE_FILE} is not valid JSON ({exc})") from exc


def save_optimizer(path: Path, optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, param in params.items():
        for key, value in optimizer.state.get(param, {}).items():
            if key not in ADAM_STATE:
                raise CheckpointError(f"optimizer state {key!r} of {name} has no place in the checkpoint layout")
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    save_file(tensors, str(path), metadata={"optimizer": type(optimizer).__name__})


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]) -> None:
    """Put the saved moments and step counts back on the parameters of the same names."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        kind = (f.metadata() or {}).get("optimizer")
    if kind != type(optimizer).__name__:
        raise CheckpointError(f"{path} holds {kind} state, this run uses {type(optimizer).__name__}")
    known = {f"{name}.{key}" for name in params for key in ADAM_STATE}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise CheckpointError(f"{path} has state for parameters this adapter lacks, e.g. {unknown[:3]}")
    for name, param in params.items():
        entries = {key: saved[f"{name}.{key}"] for key in ADAM_STATE if f"{name}.{key}" in saved}
        if not entries:
            continue
        if set(entries) != set(ADAM_STATE):
            raise CheckpointError(f"{path}: the state of {name} is incomplete ({sorted(entries)})")
        if entries["exp_avg"].shape != param.shape:
            raise CheckpointError(f"{path}: {name} has moments of shape {tuple(entries['exp_avg'].shape)}, "
                                  f"the parameter is {tuple(param.shape)}")
        # AdamW keeps `step` as a float32 scalar on the CPU unless capturable; moments live with the parameter.
        optimizer.state[param] = {
            "step": entries["step"].to(torch.float32),
            "exp_avg": entries["exp_avg"].to(param.device, param.dtype),
            "exp_avg_sq": entries["exp_avg_sq"].to(param.device, param.dtype),
        }
