"""Teacher pairs on disk: one `.npz` per clip, read back with `allow_pickle=False`.

Arrays (P pairs of S×S RGB uint8 frames, pair k belongs to clip frame k+1):
    inputs   the input frame t the adapter sees (it goes to the VAE and the text encoder)
    conds    the cond image: the previous target out_{t-1} backward-warped onto frame t
    targets  the teacher target out_t
    meta     a JSON string: clip, prompt, profile, size, teacher steps, alpha, frame count, key
Targets and cond images are rounded to uint8, as the engine shows its outputs.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
ARRAYS = ("inputs", "conds", "targets")


class PairsError(ValueError):
    """A pairs file is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class PairSet:
    inputs: np.ndarray
    conds: np.ndarray
    targets: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = {name: getattr(self, name).shape for name in ARRAYS}
        first = shapes["inputs"]
        if len(first) != 4 or first[3] != 3 or first[1] != first[2]:
            raise PairsError(f"pairs must be (P, S, S, 3) frames, got inputs {first}")
        if len(set(shapes.values())) != 1 or any(getattr(self, n).dtype != np.uint8 for n in ARRAYS):
            raise PairsError(f"inputs, conds and targets must be uint8 arrays of one shape, got {shapes}")

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def size(self) -> int:
        return self.inputs.shape[1]

    @classmethod
    def concat(cls, sets: list[PairSet]) -> PairSet:
        if not sets:
            raise PairsError("no teacher pairs to train on")
        sizes = {s.size for s in sets}
        if len(sizes) > 1:
            raise PairsError(f"pair sets have different frame sizes {sorted(sizes)}")
        return cls(*(np.concatenate([getattr(s, n) for s in sets]) for n in ARRAYS),
                   meta={"clips": [s.meta for s in sets]})


def save_pairs(path: str | os.PathLike, pairs: PairSet) -> Path:
    """Write atomically (a half-written cache file is never taken for a finished one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"format_version": FORMAT_VERSION, **pairs.meta})
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.part", delete=False) as handle:
        np.savez_compressed(handle, meta=np.array(meta), **{n: getattr(pairs, n) for n in ARRAYS})
    os.replace(handle.name, path)
    return path


def load_pairs(path: str | os.PathLike) -> PairSet:
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"pairs file {path} not found")
    contents = _read_npz(path)
    missing = [n for n in (*ARRAYS, "meta") if n not in contents]
    if missing:
        raise PairsError(f"pairs file {path} lacks array(s) {missing}")
    meta = json.loads(str(contents.pop("meta")))
    if meta.get("format_version") != FORMAT_VERSION:
        raise PairsError(f"pairs file {path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return PairSet(**contents, meta=meta)


# Not a zip, a damaged member, or (ValueError) an object array that numpy will not read without pickle.
_NPZ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise PairsError(f"pairs file {path} is not a readable npz: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise PairsError(f"pairs file {path} holds a single array, not an npz archive of pairs")
    try:
        with data:
            return {n: data[n] for n in (*ARRAYS, "meta") if n in data.files}
    except _NPZ_ERRORS as exc:
        raise PairsError(f"pairs file {path} is not a readable npz: {exc}") from exc
