"""What one conditioning refresh costs by rows: flows + conditioning, eager or compiled, each as the engine runs it.

    python benchmarks/refresh_cost.py --profile synthetic-full --batch 32 --sizes 1,4,8,32 --modes eager,static,dynamic

A stream's refresh computes its own rows padded to `refresh_size` (services/gpu/refresh_policy.py). The engine
compiles the refresh only at the full batch; this measures what the other sizes cost eagerly, compiled one
shape at a time (`static`: a compile per size) or `dynamic`: torch's automatic dynamic shapes, where the second
size recompiles with the batch dimension symbolic and later sizes reuse it (the frame size stays fixed: the
Gaussian taps are built from it in Python).
On CUDA every call is replayed as a CUDA graph, as in the engine; the record is rewritten after each mode,
so a run cut short keeps what it measured. Random frames: Farneback's work does not depend on the content.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from services.gpu.bench import _device_info  # noqa: E402
from services.gpu.engine import EngineConfig, StreamEngine  # noqa: E402
from services.gpu.farneback import backward_flows, warm_constants  # noqa: E402
from services.gpu.profiles import load_profile  # noqa: E402
from shared.records import GrowingRecord, card_slug  # noqa: E402

MODES = ("eager", "static", "dynamic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="frame size S (default 512 on CUDA, 64 on the CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 4, 8, 32])
    parser.add_argument("--modes", type=lambda s: [x for x in s.split(",") if x], default=list(MODES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if bad := [m for m in args.modes if m not in MODES]:
        parser.error(f"unknown mode(s) {bad}; use {', '.join(MODES)}")
    if bad := [s for s in args.sizes if not 1 <= s <= args.batch]:
        parser.error(f"sizes {bad} outside 1..--batch ({args.batch})")
    return args


def functions(engine: StreamEngine, mode: str):
    """(flow function, conditioning function) for one mode."""
    flow, cond = backward_flows, engine._conditioning
    if mode == "eager":
        return flow, cond
    dynamic = None if mode == "dynamic" else False  # None: automatic dynamic shapes, only the dimension that changed
    return (torch.compile(flow, dynamic=dynamic, fullgraph=True), torch.compile(cond, dynamic=dynamic, fullgraph=True))


def time_call(fn, args: tuple, repeats: int, cuda: bool) -> tuple[float, float]:
    """(seconds to compile and capture, ms per call): a CUDA graph replayed on CUDA, plain calls on the CPU."""
    from services.gpu.graphs import CapturedCall

    start = time.perf_counter()
    if cuda:
        call = CapturedCall(fn, args)
    else:
        def call(*a):
            with torch.no_grad():
                return fn(*a)
        call(*args)
    ready_s = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = call(*args)
    if cuda:
        torch.cuda.synchronize()
    del out
    return ready_s, (time.perf_counter() - start) * 1e3 / repeats


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = load_profile(args.profile, args.device)
    cuda = bundle.device.type == "cuda"
    size = args.size or (512 if cuda else 64)
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)  # a static compile per size
    record = {"kind": "refresh_cost", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in sys.argv), "profile": args.profile, "size": size,
              "batch": args.batch, **_device_info(bundle.device), "modes": {}}
    config = EngineConfig(size=size, batch=args.batch, hooks="down_blocks", compile="none", flow_backend="torch")
    growing = GrowingRecord(record, args.out, f"refresh_cost_{args.profile}_{card_slug(record['card'])}_B{args.batch}_S{size}")
    with StreamEngine(config, bundle) as engine:
        warm_constants(bundle.device)
        gen = torch.Generator("cpu").manual_seed(0)
        frames = torch.randint(0, 256, (max(args.sizes), size, size, 3), generator=gen, dtype=torch.uint8).to(bundle.device)
        previous_output = (torch.rand(3, size, size, generator=gen) * 2 - 1).to(bundle.device)
        for mode in args.modes:
            flow_fn, cond_fn = functions(engine, mode)
            rows = {}
            for n in args.sizes:
                flow_ready, flow_ms = time_call(flow_fn, (frames[:n], frames[-1]), args.repeats, cuda)
                flows = flow_fn(frames[:n], frames[-1])
                cond_ready, cond_ms = time_call(cond_fn, (previous_output, flows), args.repeats, cuda)
                rows[str(n)] = {"flow_ms": flow_ms, "cond_ms": cond_ms, "ms": flow_ms + cond_ms,
                                "ms_per_row": (flow_ms + cond_ms) / n, "ready_s": flow_ready + cond_ready}
                print(json.dumps({"mode": mode, "rows": n, **rows[str(n)]}), flush=True)
            record["modes"][mode] = rows
            growing.save()
    return growing.done()


if __name__ == "__main__":
    sys.exit(main())
