"""Long soak: N streams (half paced files, half live RTSP cameras) for a long time through `stylecast serve`.

    python benchmarks/soak.py --minutes 30 --streams 8 [--fps 4] [--out benchmarks/results]

Samples every process's resident memory and open descriptors, and records frames lost by the file
streams (must be 0), frames the cameras dropped (counted, when the machine is slower than they are),
and each stream's end-to-end latency. Runs on the CPU with synthetic-tiny by default (a soak tests
the service, not the model); pass --profile/--device for a GPU soak. Needs Debian's GStreamer RTSP
server for the cameras (without it every stream is a paced file).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.records import write_result  # noqa: E402
from tests.support.rtsp_server import RtspServer, gstreamer_missing_reason  # noqa: E402
from tests.support.service import Service  # noqa: E402
from tests.support.soak import SoakProbe, long_clip  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--fps", type=int, default=4, help="frame rate of every source")
    parser.add_argument("--profile", default="synthetic-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sample-s", type=float, default=30)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = int(seconds * args.fps)
        clip = long_clip(tmp / "long.mp4", frames, args.fps)
        n_cams = args.streams // 2 if gstreamer_missing_reason() is None else 0
        cameras = [RtspServer(fps=args.fps).start() for _ in range(n_cams)]
        streams = [{"name": f"file{i}", "source": str(clip), "prompt": "oil painting", "pace": True,
                    "sinks": [{"type": "mp4", "target": str(tmp / f"file{i}.mp4")}]} for i in range(args.streams - n_cams)]
        streams += [{"name": f"cam{i}", "source": cam.url, "prompt": "watercolour"} for i, cam in enumerate(cameras)]
        svc = Service(tmp, streams, model={"profile": args.profile, "device": args.device},
                      engine={"size": args.size, "batch": 8})
        timeline = []
        try:
            svc.wait_ready(timeout=1800)
            probe = SoakProbe(svc)
            started = time.monotonic()
            files = [s["name"] for s in streams if s["name"].startswith("file")]
            while True:
                probe.sample()
                infos = {s["name"]: svc.stream(s["name"]) for s in streams}
                timeline.append({"t_s": round(time.monotonic() - started, 1),
                                 **{n: {"out": i["counters"]["frames_out"], "dropped": sum(i["counters"]["dropped"].values()),
                                        "p95_ms": i["latency_ms"]["p95"]} for n, i in infos.items()}})
                if all(infos[f]["state"] == "stopped" for f in files) and time.monotonic() - started > seconds:
                    break
                if time.monotonic() - started > seconds * 3 + 600:
                    raise SystemExit("the file streams did not finish in three times their length")
                time.sleep(args.sample_s)
            final = {s["name"]: svc.stream(s["name"]) for s in streams}
            svc.stop(timeout=300)
        finally:
            svc.kill()
            for cam in cameras:
                cam.stop()
    report = probe.report()
    record = {
        "kind": "soak", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "host": platform.node(), "cpu": platform.processor() or platform.machine(),
        "profile": args.profile, "device": args.device, "size": args.size, "minutes": args.minutes,
        "streams": {"files": len(streams) - n_cams, "cameras": n_cams, "fps_each": args.fps},
        "memory_and_fds": report,
        "files_lost": {n: frames - final[n]["counters"]["frames_out"] for n in final if n.startswith("file")},
        "cameras_dropped": {n: final[n]["counters"]["dropped"] for n in final if n.startswith("cam")},
        "latency_ms": {n: final[n]["latency_ms"] for n in final},
        "timeline": timeline,
    }
    print(json.dumps({k: v for k, v in record.items() if k != "timeline"}, indent=2))
    if args.out:
        write_result(record, args.out, f"soak_{args.streams}streams_{args.minutes:g}min")
    return 0 if all(v == 0 for v in record["files_lost"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
