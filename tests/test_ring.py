"""Shared-memory rings: seqlock reads never return torn or overwritten data; nothing leaks."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared import ring as ring_module
from shared.ring import Ring, RingError, StaleSlot, segment_name, unlink_stale
from shared.runtime import new_run_id

SHM = Path("/dev/shm")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_id() -> Iterator[str]:
    rid = new_run_id()
    yield rid
    leaked = sorted(p.name for p in SHM.glob(f"stylecast-{rid}-*"))
    for name in leaked:  # clean up, then fail: a test must not leak
        (SHM / name).unlink()
    assert leaked == []


def frame(value: int, shape: tuple[int, ...] = (8, 8, 3)) -> np.ndarray:
    return np.full(shape, value % 256, dtype=np.uint8)


def test_write_then_read_returns_a_copy(run_id: str) -> None:
    with Ring.create(run_id, "cam", "in", slots=4, shape=(8, 8, 3), dtype=np.uint8) as owner:
        reader = Ring.attach(run_id, "cam", "in", shape=(8, 8, 3), dtype=np.uint8)
        slot, generation = owner.write(frame(7), seq=41, times=(1.5, 2.5))
        assert (slot, generation) == (0, 2)
        got = reader.read(slot, generation)
        assert np.array_equal(got, frame(7))
        got[:] = 0  # a copy: the ring is untouched
        assert np.array_equal(reader.read(slot, generation), frame(7))
        header = reader.header(slot, generation)
        assert header.seq == 41 and header.times[:2] == (1.5, 2.5) and np.isnan(header.times[2])
        out = np.empty((8, 8, 3), np.uint8)
        assert reader.read(slot, generation, out=out) is out and np.array_equal(out, frame(7))
        assert reader.peek(1) is None and (reader.peek(0).generation, reader.peek(0).seq) == (2, 41)
        reader.close()
        reader.close()  # idempotent


def test_float16_flow_ring(run_id: str) -> None:
    flow = np.random.default_rng(0).standard_normal((16, 16, 2)).astype(np.float16)
    with Ring.create(run_id, "cam", "flow", slots=2, shape=flow.shape, dtype=np.float16) as ring:
        assert np.array_equal(ring.read(*ring.write(flow, seq=0)), flow)
        assert ring.payload_nbytes == flow.nbytes


def test_overwritten_slot_is_stale(run_id: str) -> None:
    with Ring.create(run_id, "cam", "in", slots=2, shape=(8, 8, 3), dtype=np.uint8) as ring:
        first = ring.write(frame(1), seq=1)
        ring.write(frame(2), seq=2)
        ring.write(frame(3), seq=3)  # wraps onto slot 0
        with pytest.raises(StaleSlot, match=r"slot 0 was overwritten before reading \(generation 4, expected 2\)"):
            ring.read(*first)
        with pytest.raises(StaleSlot):
            ring.header(*first)
        with pytest.raises(StaleSlot, match="does not hold that write yet"):
            ring.read(1, 4)
        with pytest.raises(StaleSlot, match="not a completed write"):
            ring.read(1, 3)


def test_slot_being_written_is_stale(run_id: str) -> None:
    with Ring.create(run_id, "cam", "in", slots=2, shape=(8, 8, 3), dtype=np.uint8) as ring:
        slot, generation = ring.write(frame(1), seq=1)
        ring._gens[slot] = generation + 1  # a writer is mid-write
        with pytest.raises(StaleSlot, match="is being overwritten before reading"):
            ring.read(slot, generation)


def test_overwrite_during_the_copy_is_detected(run_id: str) -> None:
    """The check after copying catches a write that started after the first check passed."""
    with Ring.create(run_id, "cam", "in", slots=1, shape=(8, 8, 3), dtype=np.uint8) as ring:
        slot, generation = ring.write(frame(1), seq=1)
        real = ring._payloads[slot]

        class OverwrittenWhileCopying:
            def copy(self) -> np.ndarray:
                ring._payloads[slot] = real
                ring.write(frame(2), seq=2)
                return real.copy()

        ring._payloads[slot] = OverwrittenWhileCopying()  # type: ignore[call-overload]
        with pytest.raises(StaleSlot, match="was overwritten while it was read"):
            ring.read(slot, generation)


def test_new_writer_continues_after_newest_and_after_a_crashed_write(run_id: str) -> None:
    with Ring.create(run_id, "cam", "in", slots=3, shape=(8, 8, 3), dtype=np.uint8) as owner:
        for seq in range(4):  # slots 0,1,2,0
            owner.write(frame(seq), seq)
        owner._gens[1] += 1  # the old writer died in the middle of writing slot 1
        writer = Ring.attach(run_id, "cam", "in")
        slot, generation = writer.write(frame(9), seq=4)
        assert slot == 1 and generation == 6  # 3 (odd, abandoned) is skipped: a generation is never reused
        assert writer.write(frame(10), seq=5) == (2, 4)
        writer.close()


def test_bad_arguments_are_named(run_id: str) -> None:
    with pytest.raises(RingError, match=rf"segment stylecast-{run_id}-cam-in does not exist"):
        Ring.attach(run_id, "cam", "in")
    with pytest.raises(ValueError, match="not a valid stream name"):
        segment_name(run_id, "Cam!", "in")
    with pytest.raises(ValueError, match="is not a run id"):
        segment_name("Bad-Id", "cam", "in")
    with Ring.create(run_id, "cam", "in", slots=2, shape=(8, 8, 3), dtype=np.uint8) as ring:
        with pytest.raises(RingError, match="already exists"):
            Ring.create(run_id, "cam", "in", slots=2, shape=(8, 8, 3), dtype=np.uint8)
        with pytest.raises(RingError, match=r"holds \(8, 8, 3\) uint8, expected \(4, 4, 3\)"):
            Ring.attach(run_id, "cam", "in", shape=(4, 4, 3), dtype=np.uint8)
        with pytest.raises(ValueError, match=r"payload \(8, 8, 3\) float32 does not fit"):
            ring.write(np.zeros((8, 8, 3), np.float32), seq=0)
        with pytest.raises(ValueError, match="does not fit"):
            ring.write(np.zeros((8, 8), np.uint8), seq=0)
        with pytest.raises(IndexError, match="slot 2 is outside"):
            ring.read(2, 2)
        with pytest.raises(ValueError, match="at most 4 times"):
            ring.write(frame(0), seq=0, times=(1, 2, 3, 4, 5))
        attached = Ring.attach(run_id, "cam", "in")
        with pytest.raises(RingError, match="only the owner may unlink"):
            attached.unlink()
        attached.close()
        with pytest.raises(RingError, match="is closed"):
            attached.read(0, 2)


# ---- several processes -------------------------------------------------------------------------------

WORDS = 8192  # 64 KiB payloads: long enough copies for real overlaps


def _writer(run_id: str, writes: int, queue: mp.Queue, done: mp.Event) -> None:
    ring = Ring.attach(run_id, "cam", "in")
    payload = np.empty(WORDS, np.uint64)
    for seq in range(writes):
        payload.fill(seq)
        slot, generation = ring.write(payload, seq)
        if seq % 4 == 0:
            queue.put((slot, generation, seq))  # what a Frame message would carry
    done.set()
    ring.close()


def _reader(run_id: str, queue: mp.Queue, done: mp.Event, results: mp.Queue) -> None:
    import queue as queue_module

    ring = Ring.attach(run_id, "cam", "in")
    counts = {"ok": 0, "stale": 0, "torn": 0, "peek_ok": 0}
    out = np.empty(WORDS, np.uint64)
    rng = np.random.default_rng(1)
    while True:
        try:
            slot, generation, seq = queue.get(timeout=0.01)
        except queue_module.Empty:
            if done.is_set() and queue.empty():
                break
        else:
            try:
                ring.read(slot, generation, out=out)
            except StaleSlot:
                counts["stale"] += 1
            else:
                counts["ok"] += 1
                counts["torn"] += int(not (out == seq).all())
        # Racing reads straight at the writer's current slots.
        target = int(rng.integers(ring.slots))
        try:
            header = ring.peek(target)
            if header is not None:
                ring.read(target, header.generation, out=out)
                counts["peek_ok"] += 1
                counts["torn"] += int(not (out == header.seq).all())
        except StaleSlot:
            counts["stale"] += 1
    ring.close()
    results.put(counts)


def test_fast_writer_and_reader_in_other_processes(run_id: str) -> None:
    ctx = mp.get_context("spawn")
    with Ring.create(run_id, "cam", "in", slots=3, shape=(WORDS,), dtype=np.uint64):
        queue, results, done = ctx.Queue(), ctx.Queue(), ctx.Event()
        reader = ctx.Process(target=_reader, args=(run_id, queue, done, results))
        writer = ctx.Process(target=_writer, args=(run_id, 20000, queue, done))
        reader.start()
        writer.start()
        counts = results.get(timeout=60)
        writer.join(30)
        reader.join(30)
        assert writer.exitcode == 0 and reader.exitcode == 0
        # The segment outlived both attached processes (no resource tracker unlinked it).
        assert (SHM / segment_name(run_id, "cam", "in")).exists()
    assert counts["torn"] == 0, counts
    assert counts["stale"] > 0 and counts["ok"] + counts["peek_ok"] > 0, counts


ATTACH_AND_EXIT = """
import sys
sys.path.insert(0, {repo!r})
from shared.ring import Ring
ring = Ring.attach({run_id!r}, "cam", "in")
assert ring.read(0, 2).sum() == 7 * 8 * 8 * 3
ring.close()
"""


def test_attaching_process_exit_does_not_unlink(run_id: str) -> None:
    """On 3.11/3.12 a plain SharedMemory attach would let the child's resource tracker unlink the segment."""
    with Ring.create(run_id, "cam", "in", slots=2, shape=(8, 8, 3), dtype=np.uint8) as ring:
        ring.write(np.ones((8, 8, 3), np.uint8) * 7, seq=0)
        done = subprocess.run(
            [sys.executable, "-c", ATTACH_AND_EXIT.format(repo=str(REPO), run_id=run_id)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "leaked" not in done.stderr and "resource_tracker" not in done.stderr
        assert (SHM / ring.name).exists()
        assert ring.read(0, 2).sum() == 7 * 8 * 8 * 3


# ---- stale segments ------------------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake_segment(directory: Path, name: str, owner_pid: int, owner_start: int, *, valid: bool = True) -> Path:
    header = np.zeros((), dtype=ring_module._RING_HEADER)
    header["magic"] = ring_module._MAGIC if valid else b"NOTOURS!"
    header["owner_pid"] = owner_pid
    header["owner_start"] = owner_start
    path = directory / name
    path.write_bytes(header.tobytes() + bytes(64))
    return path


def test_unlink_stale_removes_only_dead_runs(tmp_path: Path) -> None:
    from shared.runtime import process_start_ticks

    me, my_start = os.getpid(), process_start_ticks(os.getpid())
    dead = _fake_segment(tmp_path, "stylecast-aaaa-cam-in", _dead_pid(), 1)
    reused_pid = _fake_segment(tmp_path, "stylecast-bbbb-cam-in", me, my_start + 1)  # pid reused by someone else
    alive_owner = _fake_segment(tmp_path, "stylecast-cccc-cam-in", me, my_start)
    listed_alive = _fake_segment(tmp_path, "stylecast-dddd-cam-in", _dead_pid(), 1)
    young_headerless = _fake_segment(tmp_path, "stylecast-eeee-cam-in", 0, 0, valid=False)
    old_headerless = _fake_segment(tmp_path, "stylecast-ffff-cam-in", 0, 0, valid=False)
    os.utime(old_headerless, (1, 1))
    foreign = _fake_segment(tmp_path, "other-aaaa-cam-in", _dead_pid(), 1)

    removed = unlink_stale({"dddd"}, shm_dir=tmp_path)
    assert sorted(removed) == ["stylecast-aaaa-cam-in", "stylecast-bbbb-cam-in", "stylecast-ffff-cam-in"]
    assert not dead.exists() and not reused_pid.exists() and not old_headerless.exists()
    assert alive_owner.exists() and listed_alive.exists() and young_headerless.exists() and foreign.exists()
    assert unlink_stale(shm_dir=tmp_path / "missing") == []


def test_unlink_stale_keeps_a_live_ring_in_dev_shm(run_id: str) -> None:
    with Ring.create(run_id, "cam", "in", slots=2, shape=(8,), dtype=np.uint8) as ring:
        assert ring.name not in unlink_stale()
        assert (SHM / ring.name).exists()


def test_credits_block_a_lossless_writer_until_the_consumer_releases():
    from shared.ring import Ring
    from shared.runtime import new_run_id

    ring = Ring.create(new_run_id(), "credits", "in", slots=3, shape=(2,), dtype="u1")
    try:
        refs = [ring.write(np.full(2, i, np.uint8), seq=i) for i in range(3)]
        assert [ring.write_index(*r) for r in refs] == [0, 1, 2]
        assert not ring.has_space() and ring.in_use() == 3
        assert ring.wait_for_space(timeout_s=0.05) is False
        ring.release(2)
        assert ring.has_space() and ring.in_use() == 1
        slot, gen = ring.write(np.full(2, 3, np.uint8), seq=3)
        assert ring.write_index(slot, gen) == 3 and slot == 0
        ring.release(1)  # going backwards is ignored
        assert ring.released == 2
        ring.release(99)  # never past what was written
        assert ring.released == ring.written == 4
    finally:
        ring.unlink()


def test_the_end_mark_is_seen_by_a_reader_that_attaches_afterwards(run_id: str) -> None:
    with Ring.create(run_id, "cam", "out", slots=4, shape=(8, 8, 3), dtype=np.uint8) as writer:
        writer.write(frame(1), seq=0)
        early = Ring.attach(run_id, "cam", "out")
        assert not early.ended  # a new segment starts unended
        writer.mark_ended()
        assert early.ended
        early.close()
        late = Ring.attach(run_id, "cam", "out")
        assert late.ended and late.written == 1
        late.close()
