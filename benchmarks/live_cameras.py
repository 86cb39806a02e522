"""Live cameras on one GPU worker: end-to-end latency and drops of N paced 30 fps sources through the service.

    python benchmarks/live_cameras.py --profile synthetic-full --clip CLIP --cameras 1 8 --seconds 60 [--out benchmarks/results]

Each camera is the clip looped to `--seconds` at `--fps`, played in real time (`pace`) as a live
source: a frame the service cannot keep up with is dropped and counted, never queued without bound.
Every stream is encoded to an MP4 (capture → encoded is what the latency measures: a paced frame is
stamped at its due time, so a late release does not hide lateness). One `stylecast run` per entry of
`--cameras`, all with the same engine settings (batch, buckets), so the compiler cache of the first
serves the next. The naive per-frame 4-step pipeline is timed in the same call for scale.
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

from benchmarks.isolation import in_child  # noqa: E402
from benchmarks.service_vs_engine import parse_variant  # noqa: E402
from services.runner import run_pipeline  # noqa: E402
from shared.records import GrowingRecord, card_slug  # noqa: E402
from shared.settings import load_settings  # noqa: E402


def looped_clip(source: str, target: Path, frames: int, fps: int, size: int) -> Path:
    """The source clip's frames, centre-cropped to size², repeated to `frames` frames at `fps` (H.264)."""
    import av

    from services.gpu.bench import clip_frames

    images = list(clip_frames(source, size, min(frames, 480)))
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(images[i % len(images)], format="rgb24")))
        out.mux(stream.encode(None))
    return target

def naive_baseline(profile: str, clip: str, size: int, frames: int, prompt: str) -> dict:
    """The stock pipeline at 4 steps, one frame per call (first frame: warm-up)."""
    from services.gpu.bench import _device_info, clip_frames, run_naive
    from services.gpu.profiles import load_profile

    bundle = load_profile(profile, "auto")
    result = run_naive(bundle, list(clip_frames(clip, size, frames + 1)), prompt, 4, size)
    return {"device": _device_info(bundle.device), "steps4": result}


def device_info() -> dict:
    """Card, versions and host of the device the service will pick (what the naive run records otherwise)."""
    from services.gpu.bench import _device_info
    from services.gpu.profiles import resolve_device

    return _device_info(resolve_device("auto"))


def run_cameras(args, clip: Path, cameras: int, tmp: Path) -> dict:
    streams = [{"name": f"cam{i}", "source": str(clip), "prompt": args.prompt, "pace": True, "live": True,
                "sinks": [{"type": "mp4", "target": str(tmp / f"cam{cameras}_{i}.mp4")}]} for i in range(cameras)]
    settings = load_settings(None, overrides={
        "model.profile": args.profile, "engine.size": args.size, "engine.batch": args.batch,
        "engine.buckets": args.buckets, "engine.max_batch_wait_ms": args.max_batch_wait_ms,
        "model.compile_mode": args.compile, "model.compile_buckets": args.compile_buckets, "streams": streams,
        **args.overrides,
    })
    summary = run_pipeline(settings, progress=False)
    per_stream = {}
    for s in streams:
        info = summary.streams.get(s["name"], {})
        per_stream[s["name"]] = {
            "latency_ms": summary.stream_latency_ms.get(s["name"]), "fps": summary.stream_fps.get(s["name"]),
            "dropped": sum(info.get("dropped", {}).values()), "dropped_by_reason": info.get("dropped", {}),
            "state": info.get("state"),
        }
    p95s = [v["latency_ms"]["p95"] for v in per_stream.values() if v["latency_ms"]]
    return {
        "cameras": cameras, "frames_in": summary.frames_in, "frames_out": summary.frames_out,
        "dropped": sum(summary.dropped.values()), "dropped_by_reason": summary.dropped,
        "aggregate_fps": summary.aggregate_fps, "latency_ms_p50": summary.latency_ms_p50,
        "latency_ms_p95": summary.latency_ms_p95, "worst_stream_p95_ms": max(p95s) if p95s else None,
        "stage_means_ms": summary.stage_means_ms, "streams": per_stream, "wall_s": summary.wall_s,
        "gpu": summary.gpu,  # the worker's batches: rows, cadence, why it waited (is the GPU the limit?)
    }

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--clip", required=True, help="any clip; it is looped and paced")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--buckets", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 2, 4])
    parser.add_argument("--max-batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--compile-buckets", choices=("all", "largest"), default="all",
                        help="compile every bucket, or only the full batch (one compile at start-up)")
    parser.add_argument("--naive-frames", type=int, default=4, help="frames of the naive 4-step pipeline (0: skip)")
    parser.add_argument("--prompt", default="make it an oil painting")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a settings path for every run, e.g. engine.refresh_on_scene_cut=false (repeatable)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    args.overrides = parse_variant(" ".join(["set", *args.set]))[1]
    record = {
        "kind": "live_cameras", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv), "profile": args.profile,
        "config": {"batch": args.batch, "buckets": args.buckets, "size": args.size, "fps": args.fps,
                   "seconds": args.seconds, "max_batch_wait_ms": args.max_batch_wait_ms, "compile": args.compile,
                   "compile_buckets": args.compile_buckets, "overrides": args.overrides},
        "note": "random weights: speed only, output is not a stylisation" if args.profile.startswith("synthetic-") else "",
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = looped_clip(args.clip, tmp / "camera.mp4", int(args.seconds * args.fps), args.fps, args.size)
        if args.naive_frames:
            naive = in_child(naive_baseline, args.profile, args.clip, args.size, args.naive_frames, args.prompt)
            record.update(naive.pop("device"))
            record["naive"] = naive
        else:  # the card still names the record
            record.update(in_child(device_info))
        cams = "-".join(str(c) for c in args.cameras)
        stem = f"live_cameras_{args.profile}_{card_slug(str(record.get('card', 'unknown')))}_{cams}cams_B{args.batch}"
        growing = GrowingRecord(record, args.out, stem)  # rewritten after each run: a call cut short keeps the runs it finished
        for cameras in args.cameras:
            run = in_child(run_cameras, args, clip, cameras, tmp)
            record["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "streams"}, indent=1), flush=True)
            growing.save()
    return growing.done()


if __name__ == "__main__":
    sys.exit(main())
