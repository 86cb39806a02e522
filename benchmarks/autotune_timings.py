"""Inductor's matrix-product autotuning timings: per shape, cuBLAS against the best Triton template, and the
same timings reused on a fresh machine of the same card.

    python benchmarks/autotune_timings.py summary CACHE_FILE [--note TEXT] [--out benchmarks/results]
    python benchmarks/autotune_timings.py install CACHE_FILE

With `model.autotune` (the engine's AUTOTUNE_OPTIONS) inductor times every candidate kernel of each
matrix-product shape once and keeps the timings in one JSON file of its cache folder:
`<TORCHINDUCTOR_CACHE_DIR>/cache/<hash of the card and the torch/Triton/CUDA versions>`.
- `summary` turns such a file into a record under benchmarks/results/: for each shape, ATen's best choice
  (cuBLAS), the best Triton template, their ratio and the winner. Timings are inductor's own, each kernel alone.
- `install` merges the timings into this machine's cache file, so a fresh machine of the same card compiles the
  chosen kernels without timing every candidate again (7-28 s per shape on an H100, minutes per part: a whole
  engine's tuning did not fit one 10-minute device call). It refuses a file from another card, whose choices
  would not be this card's, and needs CUDA to know which card this is.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.records import card_slug, write_result  # noqa: E402


class TimingsError(ValueError):
    """A timings file that cannot be read or installed here; the message says why."""


def load(path: str | Path) -> dict:
    """A cache file as inductor writes it: {"system": {"device": {"name"}, "version", "hash"}, "cache": {...}}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TimingsError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cache"), dict) or not isinstance(data.get("system"), dict):
        raise TimingsError(f"{path}: not inductor's autotuning cache (no 'system' and 'cache' objects)")
    return data


def card_of(data: dict) -> str | None:
    return (data["system"].get("device") or {}).get("name")


def shape_of(op: str, inputs_key: str) -> dict:
    """Inductor keys a shape by each input's (device, dtype, *sizes, *strides, offset); addmm's first input is the
    bias. Returns the product's sizes: M×K times K×N (and the batch of a bmm)."""
    tensors = ast.literal_eval(inputs_key)
    mats = tensors[1:] if op == "addmm" else tensors

    def sizes(t) -> list[int]:
        return list(t[2: 2 + (len(t) - 3) // 2])

    a, b = sizes(mats[0]), sizes(mats[1])
    shape = {"m": a[-2], "k": a[-1], "n": b[-1]}
    if len(a) == 3:
        shape["batch"] = a[0]
    return shape


def summarise(data: dict) -> list[dict]:
    """One row per timed shape and precision, slowest cuBLAS call first."""
    rows = []
    for op, by_inputs in data["cache"].items():
        for inputs_key, by_precision in by_inputs.items():
            for precision, timings in by_precision.items():
                aten = [ms for name, ms in timings.items() if not name.startswith("triton") and math.isfinite(ms)]
                triton = [ms for name, ms in timings.items() if name.startswith("triton") and math.isfinite(ms)]
                if not aten or not triton:
                    continue  # nothing to compare (every candidate of one kind failed to build)
                row = {"op": op, **shape_of(op, inputs_key), "precision": precision, "candidates": len(timings),
                       "aten_ms": min(aten), "triton_ms": min(triton)}
                row["aten_over_triton"] = row["aten_ms"] / row["triton_ms"]
                row["winner"] = "triton" if row["triton_ms"] < row["aten_ms"] else "aten"
                rows.append(row)
    return sorted(rows, key=lambda r: -r["aten_ms"])


def merge(into: dict, new: dict) -> dict:
    """Nested dict merge; `new`'s timings replace `into`'s where both timed the same candidate."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def this_card() -> str:
    import torch

    if not torch.cuda.is_available():
        raise TimingsError("no CUDA device here: timings are per card, and install needs to know which card this is")
    return torch.cuda.get_device_name(torch.cuda.current_device())


def local_cache_path() -> tuple[Path, dict]:
    """Where inductor on this machine reads its autotuning timings (under TORCHINDUCTOR_CACHE_DIR), and its system key."""
    from torch._inductor.codecache import CacheBase

    return CacheBase.get_local_cache_path(), CacheBase.get_system()


def install(path: str | Path) -> Path:
    data = load(path)
    card, theirs = this_card(), card_of(data)
    if theirs != card:
        raise TimingsError(f"{path} was timed on {theirs or 'an unnamed device'}, this is {card}: not installed")
    target, system = local_cache_path()
    cache = load(target)["cache"] if target.is_file() else {}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"system": system, "cache": merge(cache, data["cache"])}, indent=1))
    if data["system"].get("hash") != system.get("hash"):
        # The same card with other torch/Triton/CUDA versions: a candidate's name hashes its generated source, so
        # only candidates generated identically hit; the rest are timed as usual.
        print(f"note: {path} came from other versions than this machine's; only identical candidates are reused")
    return target


def summary_record(path: str | Path, note: str) -> dict:
    data = load(path)
    rows = summarise(data)
    return {
        "kind": "autotune_timings", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "source": Path(path).name, "card": card_of(data),
        "versions": data["system"].get("version", {}), "note": note,
        "shapes": len(rows), "triton_wins": sum(r["winner"] == "triton" for r in rows), "rows": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="a record of each shape's cuBLAS and best Triton timings")
    s.add_argument("cache_file")
    s.add_argument("--note", default="", help="what ran: the engine command and batch whose shapes these are")
    s.add_argument("--out", default="benchmarks/results")
    i = sub.add_parser("install", help="merge the timings into this machine's inductor cache")
    i.add_argument("cache_file")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(f"installed into {install(args.cache_file)}")
            return 0
        record = summary_record(args.cache_file, args.note)
    except TimingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in record["rows"]:
        batch = f"{r['batch']}×" if "batch" in r else ""
        print(f"{r['op']:6s} {batch}{r['m']}×{r['k']}×{r['n']}: cuBLAS {r['aten_ms'] * 1e3:7.1f} µs, "
              f"Triton {r['triton_ms'] * 1e3:7.1f} µs ({r['aten_over_triton']:.2f}×, {r['winner']})")
    print(f"wrote {write_result(record, args.out, 'autotune_timings_' + card_slug(record['card'] or 'unknown'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
