"""Scale-out on one host: aggregate throughput of N streams with one GPU worker against one per GPU.

    python benchmarks/multi_gpu.py --profile synthetic-full --clip CLIP --streams 4 --gpus 2 [--out benchmarks/results]

Both runs use the whole service (`stylecast run`'s pipeline) with the same streams. The figure is the
aggregate throughput: the sum of each stream's steady rate (its frames over the time from its first to
its last written frame), models loaded and warmed up before any clock starts. Streams join one after
another, so the first-to-last-write rate over all streams (also recorded) understates short runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.runner import run_pipeline  # noqa: E402
from shared.records import card_slug, write_result  # noqa: E402
from shared.settings import load_settings  # noqa: E402


def run(args, gpus: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        streams = [{"name": f"s{i}", "source": args.clip, "prompt": args.prompt,
                    "sinks": [{"type": "mp4", "target": str(Path(tmp) / f"s{i}.mp4")}]} for i in range(args.streams)]
        settings = load_settings(None, overrides={
            "model.profile": args.profile, "model.device": args.device, "model.gpus": gpus,
            "model.compile_mode": args.compile, "engine.size": args.size, "engine.batch": args.batch, "streams": streams,
        })
        summary = run_pipeline(settings, progress=False)
    return {"gpus": gpus, "aggregate_fps": summary.aggregate_fps, "stream_fps": summary.stream_fps,
            "first_to_last_fps": summary.fps, "frames_out": summary.frames_out, "frames_in": summary.frames_in,
            "dropped": summary.dropped, "latency_ms_p50": summary.latency_ms_p50, "latency_ms_p95": summary.latency_ms_p95,
            "streams": summary.streams}


def _in_subprocess(gpus: int) -> dict:
    """Each configuration runs in a fresh process: a process hosts one supervisor (and one metrics dir)."""
    import subprocess

    done = subprocess.run([sys.executable, *sys.argv, "--only", str(gpus)], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"the {gpus}-worker run failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", required=True)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--compile", default="auto", help="model.compile_mode for both runs")
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--only", type=int, help=argparse.SUPPRESS)  # one configuration, in its own process
    args = parser.parse_args()
    if args.only is not None:
        print("RESULT " + json.dumps(run(args, args.only)))
        return 0
    one, many = (_in_subprocess(gpus) for gpus in (1, args.gpus))
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    record = {
        "kind": "multi_gpu", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv), "card": card, "torch": torch.__version__,
        "visible_gpus": torch.cuda.device_count(), "profile": args.profile,
        "note": "random weights: speed only" if args.profile.startswith("synthetic-") else "",
        "clip": Path(args.clip).name, "streams": args.streams, "size": args.size, "batch": args.batch,
        "compile": args.compile, "one_worker": one, "workers": many,
        "speedup": many["aggregate_fps"] / one["aggregate_fps"] if one["aggregate_fps"] else None,
    }
    print(json.dumps({k: v for k, v in record.items() if k not in ("one_worker", "workers")}, indent=2))
    print(f"aggregate: 1 worker {one['aggregate_fps']:.1f} fps, {args.gpus} workers {many['aggregate_fps']:.1f} fps: "
          f"×{record['speedup']:.2f} (first-to-last write: {one['first_to_last_fps']:.1f} vs {many['first_to_last_fps']:.1f})")
    if args.out:
        write_result(record, args.out, f"multi_gpu_{args.profile}_{card_slug(card)}_x{args.gpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
