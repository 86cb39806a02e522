"""GPU worker process: `python -m services.gpu` (started by the supervisor). See services/gpu/worker.py."""

from __future__ import annotations

import sys

from services.gpu.profiles import ProfileError
from shared.process import EXIT_FAILED_STREAM, ChildProcess


def main() -> int:
    with ChildProcess("gpu") as proc:
        from services.gpu.engine import EngineError
        from services.gpu.worker import GpuWorker

        try:
            worker = GpuWorker(proc)
        except (ProfileError, EngineError, OSError) as exc:  # a bad model or setting: restarting will not help
            proc.error("model_failed", str(exc))
            return EXIT_FAILED_STREAM
        return worker.run()


if __name__ == "__main__":
    sys.exit(main())
