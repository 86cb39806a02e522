"""GPU worker process: `python -m services.gpu` (started by the supervisor). See services/gpu/worker.py."""

from __future__ import annotations

import sys

from services.gpu.profiles import ProfileError
from shared.process import EXIT_FAILED_STREAM, ChildProcess


def worker_name(index: int) -> str:
    """Process name of GPU worker `index` (the first is plain 'gpu')."""
    return "gpu" if index == 0 else f"gpu-{index}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=int, default=0, help="GPU worker index: serves cuda:<index> when several GPUs are used")
    args = parser.parse_args(argv)
    with ChildProcess(worker_name(args.worker)) as proc:
        from services.gpu.engine import EngineError
        from services.gpu.worker import GpuWorker

        try:
            worker = GpuWorker(proc, args.worker)
        except (ProfileError, EngineError, OSError) as exc:  # a bad model or setting: restarting will not help
            proc.error("model_failed", str(exc))
            return EXIT_FAILED_STREAM
        return worker.run()


if __name__ == "__main__":
    sys.exit(main())
