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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, however it is run

from benchmarks.isolation import in_child  # noqa: E402
from services.gpu.bench import bench  # noqa: E402
from services.gpu.engine import EngineConfig  # noqa: E402
from services.runner import run_pipeline  # noqa: E402
from shared.records import card_slug, write_result  # noqa: E402
from shared.settings import load_settings  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME KEY=VALUE ...' → (NAME, {KEY: VALUE}); values are JSON where they parse as JSON (numbers, lists)."""
    name, *pairs = text.split()
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"variant {name!r}: {pair!r} is not KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def bench_sinks(overrides: dict, folder: str) -> list[dict]:
    """The run's sinks: one MP4 in `folder`, none for `sinks=none`; `sink.KEY=VALUE` sets the MP4 sink's KEY
    (preset, crf, encoder_threads). Pops what it uses from `overrides`."""
    if overrides.pop("sinks", None) == "none":
        return []
    options = {key.removeprefix("sink."): overrides.pop(key) for key in [k for k in overrides if k.startswith("sink.")]}
    return [{"type": "mp4", "target": str(Path(folder) / "out.mp4"), **options}]


def run_service(args, overrides: dict):
    """`stylecast run` on the clip, with the sinks of `bench_sinks`; other overrides are settings paths."""
    overrides = dict(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        sinks = bench_sinks(overrides, tmp)
        settings = load_settings(None, overrides={
            "model.profile": args.profile, "engine.size": args.size, "engine.batch": args.batch,
            "engine.refresh_on_scene_cut": args.scene_cuts, "engine.flow_backend": args.flow_backend,
            "streams": [{"name": "bench", "source": args.clip, "prompt": args.prompt, "sinks": sinks}], **overrides,
        })
        return run_pipeline(settings, progress=False)


def service_record(service, engine: dict) -> dict:
    return {"fps": service.fps, "wall_fps": service.wall_fps, "frames_in": service.frames_in,
            "frames_out": service.frames_out, "dropped": service.dropped, "wall_s": service.wall_s,
            "stage_means_ms": service.stage_means_ms,
            "latency_ms_p50": service.latency_ms_p50, "latency_ms_p95": service.latency_ms_p95,
            "over_engine": service.fps / engine["engine"]["fps"],
            "gpu": service.gpu, "streams": service.streams, "logs": service.logs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", required=True)
    parser.add_argument("--frames", type=int, default=480)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--naive-frames", type=int, default=4, help="frames of the naive 4-step pipeline (0: skip it)")
    parser.add_argument("--scene-cuts", action="store_true",
                        help="refresh the conditioning at scene cuts too, in both the engine and the service "
                             "(off: the paper's periodic schedule only, the issue's champion settings)")
    parser.add_argument("--flow-backend", choices=("auto", "opencv", "torch"), default="auto",
                        help="where refresh flows run, in both the engine and the service (variants may override it)")
    parser.add_argument("--variant", action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                        help="also run the service with these settings (e.g. 'ring128 service.ring_slots=128'; "
                             "'nosink sinks=none' writes no output file); repeatable")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    variants = [parse_variant(text) for text in args.variant]
    engine = bench(args.profile, args.clip, args.prompt,
                   EngineConfig(size=args.size, batch=args.batch, refresh_on_scene_cut=args.scene_cuts,
                                flow_backend=args.flow_backend),
                   frames=args.frames, naive_steps=(4,) if args.naive_frames else (), naive_frames=args.naive_frames + 1,
                   out_dir=None)
    record = {
        "kind": "service_vs_engine", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        **{k: engine[k] for k in ("card", "cpu", "cpu_cores", "torch", "cuda", "diffusers", "transformers", "profile", "random_weights", "note")
           if k in engine},
        "clip": Path(args.clip).name, "config": engine["config"],
        "engine": {k: v for k, v in engine["engine"].items()
                   if k in ("fps", "frames", "wall_s", "batch_wall_ms_p50", "batch_wall_ms_p95", "side_ms_p50", "main_ms_p50",
                            "refreshes")
                   or k.startswith(("main_gap", "side_wait", "side_lag", "refresh_ms_"))},
        "service": "not run yet",
    }
    if engine["naive"]:
        record["naive"] = engine["naive"]
        record["engine"]["ratio_to_naive_steps4"] = engine["engine"]["ratio_to_naive_steps4"]
    stem = f"service_vs_engine_{args.profile}_{card_slug(record.get('card', 'unknown'))}_B{args.batch}"
    # Written now and rewritten after each run, so a call cut short (a device time limit) keeps what it measured.
    path = write_result(record, args.out, stem) if args.out else None
    service = in_child(run_service, args, {})
    record["service"] = service_record(service, engine)
    record["service_over_engine"] = service.fps / engine["engine"]["fps"]
    if engine["naive"]:
        record["service"]["ratio_to_naive_steps4"] = service.fps / engine["naive"]["steps4"]["fps"]
    for name, overrides in variants:  # the record is rewritten after each, so a run cut short keeps what it measured
        record["variants_done"] = f"{len(record.get('variants', {}))} of {len(variants)}"
        path = write_result(record, args.out, stem, path) if args.out else None
        record.setdefault("variants", {})[name] = {"overrides": overrides, **service_record(in_child(run_service, args, overrides), engine)}
    record.pop("variants_done", None)
    print(json.dumps(record, indent=2))
    if args.out:
        write_result(record, args.out, stem, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
