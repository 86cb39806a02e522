"""Load TAESDXL weights in their original two-file layout (encoder / decoder) into diffusers' AutoencoderTiny."""

from __future__ import annotations

import os
from pathlib import Path

import torch

ENCODER_FILE = "taesdxl_encoder.safetensors"
DECODER_FILE = "taesdxl_decoder.safetensors"


class TaesdError(ValueError):
    """The TAESDXL weight folder is missing files or holds weights of another layout."""


def _remap(encoder: dict, decoder: dict) -> dict:
    # The original files number the encoder's layers from 0 and the decoder's from 1 (its 0 is a clamp).
    state = {f"encoder.layers.{k}": v for k, v in encoder.items()}
    for key, value in decoder.items():
        index, rest = key.split(".", 1)
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    return state


def load_taesdxl(path: str | os.PathLike, device: torch.device, dtype: torch.dtype):
    """AutoencoderTiny with TAESDXL weights from a folder holding the encoder and decoder safetensors files."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    from .profiles import VAE_FULL

    root = Path(path)
    files = [root / ENCODER_FILE, root / DECODER_FILE]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise TaesdError(f"TAESDXL weights not found: {missing} (expected a folder with {ENCODER_FILE} and {DECODER_FILE})")
    vae = AutoencoderTiny(**VAE_FULL)
    result = vae.load_state_dict(_remap(load_file(files[0]), load_file(files[1])), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TaesdError(
            f"TAESDXL weights under {root} do not fit AutoencoderTiny: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
