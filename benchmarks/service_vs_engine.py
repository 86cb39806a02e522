"""The cost of the process split: `stylecast run` (all processes) against the engine alone, same clip, same call.

    python benchmarks/service_vs_engine.py --profile synthetic-full --clip CLIP --frames 480 [--batch 16] [--out benchmarks/results]

Both figures are frames over wall-clock seconds after warm-up (the engine bench drops its warm-up
batches; the service starts its clock once the GPU worker has compiled and captured and said READY).
The naive per-frame DreamLiteMobilePipeline at 4 steps is measured in the same call (its first frame is warm-up).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from services.gpu.bench import bench
from services.gpu.engine import EngineConfig
from services.runner import run_pipeline
from shared.records import card_slug, write_result
from shared.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", required=True)
    parser.add_argument("--frames", type=int, default=480)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--naive-frames", type=int, default=4, help="frames of the naive 4-step pipeline (0: skip it)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    engine = bench(args.profile, args.clip, args.prompt, EngineConfig(size=args.size, batch=args.batch),
                   frames=args.frames, naive_steps=(4,) if args.naive_frames else (), naive_frames=args.naive_frames + 1,
                   out_dir=None)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, overrides={
            "model.profile": args.profile, "engine.size": args.size, "engine.batch": args.batch,
            "streams": [{"name": "bench", "source": args.clip, "prompt": args.prompt,
                         "sinks": [{"type": "mp4", "target": str(Path(tmp) / "out.mp4")}]}],
        })
        service = run_pipeline(settings, progress=False)
    record = {
        "kind": "service_vs_engine", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        **{k: engine[k] for k in ("card", "torch", "cuda", "diffusers", "transformers", "profile", "random_weights", "note")
           if k in engine},
        "clip": Path(args.clip).name, "config": engine["config"],
        "engine": {k: engine["engine"][k] for k in ("fps", "frames", "wall_s", "batch_wall_ms_p50", "batch_wall_ms_p95")},
        "service": {"fps": service.fps, "wall_fps": service.wall_fps, "frames_in": service.frames_in,
                    "frames_out": service.frames_out, "dropped": service.dropped, "wall_s": service.wall_s,
                    "stage_means_ms": service.stage_means_ms,
                    "latency_ms_p50": service.latency_ms_p50, "latency_ms_p95": service.latency_ms_p95,
                    "streams": service.streams, "logs": service.logs},
    }
    record["service_over_engine"] = service.fps / engine["engine"]["fps"]
    if engine["naive"]:
        record["naive"] = engine["naive"]
        record["engine"]["ratio_to_naive_steps4"] = engine["engine"]["ratio_to_naive_steps4"]
        record["service"]["ratio_to_naive_steps4"] = service.fps / engine["naive"]["steps4"]["fps"]
    print(json.dumps(record, indent=2))
    if args.out:
        card = card_slug(record.get("card", "unknown"))
        write_result(record, args.out, f"service_vs_engine_{args.profile}_{card}_B{args.batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
