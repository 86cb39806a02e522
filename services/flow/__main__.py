"""Flow process: Farnebäck backward flows for the batches that refresh a stream's adapter conditioning.

    python -m services.flow      (started by the supervisor)

The GPU worker asks ahead (as soon as a refresh batch is formed), so this CPU work overlaps the GPU's.
For each request: read the previous batch's last input and each new input from the stream's input
ring, compute every flow in parallel threads (cv2 releases the GIL), write them to the stream's flow
ring and answer with their slots. A frame already overwritten makes the answer a counted failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from shared.flow import backward_flow
from shared.process import ChildProcess
from shared.protocol import FlowReady, FlowRequest, ProcessState, SlotRef
from shared.ring import Ring, RingError, StaleSlot

log = logging.getLogger("stylecast.flow")


def flow_threads(batch: int, cpus: int, gpu_workers: int) -> int:
    """One thread per frame of a batch, so a refresh's flows all run at once (the GPU waits for them),
    but no more than this GPU worker's share of the cores."""
    return max(1, min(batch, cpus // max(1, gpu_workers)))


class FlowService:
    def __init__(self, proc: ChildProcess, workers: int, gpu_worker: int = 0):
        import cv2

        cv2.setNumThreads(1)  # parallel over frames in our own pool, not inside each Farnebäck call
        self.proc = proc
        self.size = proc.settings.engine.size
        self.requests = proc.bus.socket("PULL", "flow_requests", bind=False, worker=gpu_worker)
        self.ready = proc.bus.socket("PUSH", "flow_ready", bind=False, worker=gpu_worker)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="farneback")

    def _ring(self, stream: str, kind: str) -> Ring:
        # Attached per request (rare: one per N batches): a stream removed and added again gets new segments.
        shape = (self.size, self.size, 3) if kind == "in" else (self.size, self.size, 2)
        return Ring.attach(self.proc.run.run_id, stream, kind, shape=shape, dtype="u1" if kind == "in" else "f4")

    def handle(self, req: FlowRequest) -> FlowReady:
        try:
            with self._ring(req.stream, "in") as frames:
                previous = frames.read(req.source.slot, req.source.generation)
                targets = [frames.read(t.slot, t.generation) for t in req.targets]
        except (StaleSlot, RingError) as exc:
            return FlowReady(stream=req.stream, batch_id=req.batch_id, source_seq=req.source.seq, failed=str(exc))
        flows = list(self.pool.map(lambda cur: backward_flow(cur, previous), targets))
        refs = []
        with self._ring(req.stream, "flow") as out:
            for target, flow in zip(req.targets, flows):
                slot, generation = out.write(flow, target.seq)
                refs.append(SlotRef(seq=target.seq, slot=slot, generation=generation))
        return FlowReady(stream=req.stream, batch_id=req.batch_id, source_seq=req.source.seq, targets=refs)

    def run(self) -> int:
        self.proc.set_state(ProcessState.READY)
        while not self.proc.stop.is_set():
            req = self.requests.recv(timeout_s=0.2, expect=(FlowRequest,))
            if req is None:
                continue
            answer = self.handle(req)
            if answer.failed:
                log.warning("flow for %s batch %d failed: %s", req.stream, req.batch_id, answer.failed)
            self.ready.send(answer, timeout_s=5.0)
        self.pool.shutdown(wait=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.flow", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None,
                        help="Farnebäck threads (default: one per frame of a batch, within this GPU worker's share of the cores)")
    parser.add_argument("--worker", type=int, default=0, help="the GPU worker this flow process serves")
    args = parser.parse_args(argv)
    with ChildProcess("flow" if args.worker == 0 else f"flow-{args.worker}") as proc:
        threads = args.workers or flow_threads(proc.settings.engine.batch, os.cpu_count() or 1,
                                               int(os.environ.get("STYLECAST_GPU_WORKERS", "1")))
        return FlowService(proc, threads, args.worker).run()


if __name__ == "__main__":
    sys.exit(main())
