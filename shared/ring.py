"""Shared-memory rings: fixed slots of fixed-shape arrays, one writer, seqlock-checked readers.

One `multiprocessing.shared_memory` segment per ring, named `stylecast-<run_id>-<stream>-<kind>`:

    [ring header, 256 B][slot 0: header 64 B | payload][slot 1 …] …   (payloads 64-byte aligned)

Writer (one per ring): set the slot's generation odd, write seq/times/payload, set it even.
Reader: given (slot, generation) from a bus message, check the generation, copy, check again; any
change means the slot was overwritten (or is being written) and `StaleSlot` is raised. A reader
never returns torn data. This relies on stores becoming visible in program order, which x86-64
guarantees (TSO); on weakly ordered CPUs a fence would be needed and Python offers none.

Lifetimes: the supervisor `create`s and `unlink`s every ring; other processes `attach`, which does
not register the segment with Python's resource tracker (on 3.11/3.12 the tracker would unlink an
attached segment when the attaching process exits). `unlink_stale` removes segments of dead runs.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from shared.runtime import check_run_id, process_alive, process_start_ticks
from shared.settings import check_stream_name

SEGMENT_PREFIX = "stylecast-"
N_TIMES = 4  # timestamps kept per slot (free for the writer to assign, e.g. capture/ingest)
_MAGIC = b"SCRING01"
_LAYOUT_VERSION = 3
_RING_HEADER_BYTES = 256
_SLOT_HEADER_BYTES = 64
_ALIGN = 64
_MAX_DIMS = 4
_KIND_RE = re.compile(r"[a-z0-9_]{1,16}")
_STALE_SEGMENT_GRACE_S = 10.0

_RING_HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("slots", "<u4"),
        ("slot_stride", "<u8"),
        ("payload_nbytes", "<u8"),
        ("owner_pid", "<u8"),
        ("owner_start", "<u8"),
        ("ndim", "<u4"),
        ("_pad", "<u4"),
        ("shape", "<u8", (_MAX_DIMS,)),
        ("dtype", "S16"),
        ("written", "<u8"),  # writes so far (the writer's count)
        ("released", "<u8"),  # writes the consumer is done with: slots up to here may be reused
        ("ended", "<u8"),  # 1 once the writer has written its last frame (outlives the message that says so)
    ]
)
assert _RING_HEADER.itemsize <= _RING_HEADER_BYTES


class RingError(RuntimeError):
    """A ring cannot be created, attached or used as asked."""


class StaleSlot(RingError):
    """The slot no longer holds (or does not yet hold) the write the caller asked for."""


@dataclass(frozen=True)
class SlotHeader:
    """What the writer stored with a payload."""

    slot: int
    generation: int
    seq: int
    times: tuple[float, ...]


def segment_name(run_id: str, stream: str, kind: str) -> str:
    """`stylecast-<run_id>-<stream>-<kind>`, after validating each part."""
    check_run_id(run_id)
    check_stream_name(stream)
    if not _KIND_RE.fullmatch(kind):
        raise ValueError(f"{kind!r} is not a ring kind: use 1-16 characters from a-z, 0-9 and '_'")
    return f"{SEGMENT_PREFIX}{run_id}-{stream}-{kind}"


def run_id_of(segment: str) -> str | None:
    """The run id in a segment name, or None if the name is not a StyleCast segment."""
    if not segment.startswith(SEGMENT_PREFIX):
        return None
    run_id = segment[len(SEGMENT_PREFIX) :].split("-", 1)[0]
    return run_id if re.fullmatch(r"[a-z0-9]{1,32}", run_id) else None


# --------------------------------------------------------------------------------------------------
# Attaching without the resource tracker
# --------------------------------------------------------------------------------------------------

_tracker_patch_lock = threading.Lock()


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, create=False, track=False)
    # 3.11/3.12 register every attach with the resource tracker, which unlinks the segment when this
    # process exits (and a later unregister would also drop the owner's registration when the
    # tracker is shared). Skip the registration for this one constructor call.
    with _tracker_patch_lock:
        original = resource_tracker.register

        def register(name: str, rtype: str) -> None:
            if rtype != "shared_memory":
                original(name, rtype)

        resource_tracker.register = register
        try:
            return shared_memory.SharedMemory(name=name, create=False)
        finally:
            resource_tracker.register = original


# --------------------------------------------------------------------------------------------------
# The ring
# --------------------------------------------------------------------------------------------------


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Ring:
    """A ring of `slots` arrays of `shape`/`dtype` in one shared-memory segment. Use `create` or `attach`."""

    def __init__(self, shm: shared_memory.SharedMemory, *, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name
        header = np.ndarray((), dtype=_RING_HEADER, buffer=shm.buf)
        if header["magic"].item() != _MAGIC or int(header["version"]) != _LAYOUT_VERSION:
            raise RingError(f"segment {self.name} is not a StyleCast ring (layout {_LAYOUT_VERSION})")
        self.slots = int(header["slots"])
        ndim = int(header["ndim"])
        self.shape: tuple[int, ...] = tuple(int(d) for d in header["shape"][:ndim])
        self.dtype = np.dtype(header["dtype"].item().decode("ascii"))
        self.payload_nbytes = int(header["payload_nbytes"])
        stride = int(header["slot_stride"])
        if shm.size < _RING_HEADER_BYTES + self.slots * stride:
            raise RingError(f"segment {self.name} is truncated ({shm.size} bytes)")
        buf = shm.buf
        base = _RING_HEADER_BYTES
        # Strided views over every slot's header fields; payload views one per slot.
        self._gens = np.ndarray((self.slots,), dtype="<u8", buffer=buf, offset=base, strides=(stride,))
        self._seqs = np.ndarray((self.slots,), dtype="<u8", buffer=buf, offset=base + 8, strides=(stride,))
        self._times = np.ndarray((self.slots, N_TIMES), dtype="<f8", buffer=buf, offset=base + 16, strides=(stride, 8))
        self._payloads = [
            np.ndarray(self.shape, dtype=self.dtype, buffer=buf, offset=base + i * stride + _SLOT_HEADER_BYTES)
            for i in range(self.slots)
        ]
        self._header = header
        self._next_slot = self._slot_after_newest()

    # ---- lifetime -------------------------------------------------------------------------------

    @classmethod
    def create(cls, run_id: str, stream: str, kind: str, *, slots: int, shape: tuple[int, ...], dtype: Any) -> Ring:
        """Create the segment (owner: the supervisor). Fails if it exists."""
        name = segment_name(run_id, stream, kind)
        shape = tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        if not 1 <= len(shape) <= _MAX_DIMS or any(d <= 0 for d in shape):
            raise ValueError(f"ring shape {shape} must have 1-{_MAX_DIMS} positive dimensions")
        if not 1 <= slots <= 65536:
            raise ValueError(f"ring slots {slots} must be in 1..65536")
        if dtype.hasobject or len(dtype.str) > 16:
            raise ValueError(f"ring dtype {dtype} is not a plain numeric dtype")
        payload_nbytes = math.prod(shape) * dtype.itemsize
        stride = _aligned(_SLOT_HEADER_BYTES + payload_nbytes)
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=_RING_HEADER_BYTES + slots * stride)
        except FileExistsError:
            raise RingError(f"segment {name} already exists (a run with the same id is alive, or it leaked)") from None
        header = np.ndarray((), dtype=_RING_HEADER, buffer=shm.buf)
        header["version"] = _LAYOUT_VERSION
        header["slots"] = slots
        header["slot_stride"] = stride
        header["payload_nbytes"] = payload_nbytes
        header["owner_pid"] = os.getpid()
        header["owner_start"] = process_start_ticks(os.getpid()) or 0
        header["ndim"] = len(shape)
        header["shape"][: len(shape)] = shape
        header["dtype"] = dtype.str.encode("ascii")
        header["magic"] = _MAGIC  # last: a half-initialised segment is not a ring
        del header
        try:
            return cls(shm, owner=True)
        except BaseException:
            shm.close()
            shm.unlink()
            raise

    @classmethod
    def attach(
        cls, run_id: str, stream: str, kind: str, *, shape: tuple[int, ...] | None = None, dtype: Any = None
    ) -> Ring:
        """Open an existing ring (any non-owner process). Checks shape/dtype when given."""
        name = segment_name(run_id, stream, kind)
        try:
            shm = _attach_untracked(name)
        except FileNotFoundError:
            raise RingError(f"segment {name} does not exist") from None
        try:
            ring = cls(shm, owner=False)
        except BaseException:
            shm.close()
            raise
        if (shape is not None and tuple(shape) != ring.shape) or (dtype is not None and np.dtype(dtype) != ring.dtype):
            found = f"{ring.shape} {ring.dtype}"
            ring.close()
            raise RingError(f"segment {name} holds {found}, expected {tuple(shape or ())} {np.dtype(dtype) if dtype else ''}".rstrip())
        return ring

    def close(self) -> None:
        """Drop this process's mapping (the segment stays until the owner unlinks it)."""
        if self._shm is None:
            return
        # Every numpy view must go before the buffer can be released.
        self._gens = self._seqs = self._times = self._header = None  # type: ignore[assignment]
        self._payloads = []
        self._shm.close()
        self._shm = None  # type: ignore[assignment]

    def unlink(self) -> None:
        """Owner only: remove the segment name (mappings of other processes stay valid until closed)."""
        if not self.owner:
            raise RingError(f"only the owner may unlink {self.name}")
        shm = self._shm
        self.close()
        if shm is None:
            raise RingError(f"ring {self.name} was closed before it was unlinked")
        try:
            shm.unlink()  # also unregisters it from this process's resource tracker
        except FileNotFoundError:
            pass

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner:
            self.unlink()
        else:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._shm is None else ("owner" if self.owner else "attached")
        return f"Ring({self.name!r}, slots={self.slots}, shape={self.shape}, dtype={self.dtype}, {state})"

    # ---- writer ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._shm is None:
            raise RingError(f"ring {self.name} is closed")

    def _slot_after_newest(self) -> int:
        written = self._gens > 0
        if not written.any():
            return 0
        seqs = np.where(written, self._seqs, 0)
        return (int(np.argmax(seqs)) + 1) % self.slots

    def write(self, payload: np.ndarray, seq: int, times: Iterable[float] = ()) -> tuple[int, int]:
        """Copy `payload` into the next slot; returns `(slot, generation)` for the bus message.

        Single writer per ring. `times` (up to N_TIMES floats) are stored with it; missing ones are NaN.
        """
        self._check_open()
        payload = np.asarray(payload)
        if payload.shape != self.shape or payload.dtype != self.dtype:
            raise ValueError(f"payload {payload.shape} {payload.dtype} does not fit ring {self.name} ({self.shape} {self.dtype})")
        if not 0 <= seq < 2**63:
            raise ValueError(f"seq {seq} is outside 0..2**63-1")
        stamp = [float(t) for t in times]
        if len(stamp) > N_TIMES:
            raise ValueError(f"at most {N_TIMES} times per slot, got {len(stamp)}")
        stamp += [math.nan] * (N_TIMES - len(stamp))

        slot = self._next_slot
        self._next_slot = (slot + 1) % self.slots
        self._header["written"] = int(self._header["written"]) + 1
        current = int(self._gens[slot])
        writing = current + 1 if current % 2 == 0 else current + 2  # odd; a crashed writer may have left it odd
        self._gens[slot] = writing
        self._seqs[slot] = seq
        self._times[slot] = stamp
        np.copyto(self._payloads[slot], payload)
        self._gens[slot] = writing + 1
        return slot, writing + 1

    # ---- credits: a consumer that must not lose frames tells the writer what it is done with -----

    @property
    def written(self) -> int:
        return int(self._header["written"])

    @property
    def released(self) -> int:
        return int(self._header["released"])

    def in_use(self) -> int:
        """Writes the consumer has not released yet."""
        return self.written - self.released

    def has_space(self) -> bool:
        """True if the next write overwrites nothing the consumer still holds."""
        return self.in_use() < self.slots

    def wait_for_space(self, timeout_s: float, poll_s: float = 0.001, stop=None) -> bool:
        """Writer of a lossless stream: wait until a slot is free; False on timeout or when `stop()` is true."""
        deadline = time.monotonic() + timeout_s
        while not self.has_space():
            if time.monotonic() >= deadline or (stop is not None and stop()):
                return False
            time.sleep(poll_s)
        return True

    def mark_ended(self) -> None:
        """Writer: no frame follows. A consumer that starts later (a restart) learns it from the ring itself."""
        self._check_open()
        self._header["ended"] = 1

    @property
    def ended(self) -> bool:
        return bool(self._header["ended"])

    def write_index(self, slot: int, generation: int) -> int:
        """Position of the write (slot, generation) in the writer's sequence of writes (0-based).

        Writes go round the slots in order and each bumps its slot's generation by 2, so the index
        follows from the pair; release(write_index + 1) frees everything up to that write.
        """
        return (generation // 2 - 1) * self.slots + slot

    def release(self, count: int) -> None:
        """Consumer: writes 0..count-1 may be overwritten. Monotonic; a smaller count is ignored."""
        self._check_open()
        if count > self.released:
            self._header["released"] = min(count, self.written)

    # ---- readers --------------------------------------------------------------------------------

    def _check_slot(self, slot: int, generation: int) -> None:
        self._check_open()
        if not 0 <= slot < self.slots:
            raise IndexError(f"slot {slot} is outside ring {self.name} (0..{self.slots - 1})")
        if generation <= 0 or generation % 2:
            raise StaleSlot(f"{self.name} slot {slot}: generation {generation} is not a completed write")

    def _verify(self, slot: int, expected: int, when: str) -> None:
        current = int(self._gens[slot])
        if current == expected:
            return
        if current % 2:
            problem = "is being overwritten"
        elif current > expected:
            problem = "was overwritten"
        else:
            problem = "does not hold that write yet"
        raise StaleSlot(f"{self.name} slot {slot} {problem} {when} (generation {current}, expected {expected})")

    def read(self, slot: int, generation: int, out: np.ndarray | None = None) -> np.ndarray:
        """A copy of the payload written as (slot, generation); `StaleSlot` if it is gone or changing.

        With `out` (same shape/dtype), copies into it and returns it.
        """
        self._check_slot(slot, generation)
        if out is not None and (out.shape != self.shape or out.dtype != self.dtype):
            raise ValueError(f"out {out.shape} {out.dtype} does not fit ring {self.name} ({self.shape} {self.dtype})")
        self._verify(slot, generation, "before reading")
        if out is None:
            out = self._payloads[slot].copy()
        else:
            np.copyto(out, self._payloads[slot])
        self._verify(slot, generation, "while it was read")
        return out

    def header(self, slot: int, generation: int) -> SlotHeader:
        """The seq and times stored with (slot, generation); `StaleSlot` like `read`."""
        self._check_slot(slot, generation)
        self._verify(slot, generation, "before reading")
        seq = int(self._seqs[slot])
        times = tuple(float(t) for t in self._times[slot])
        self._verify(slot, generation, "while it was read")
        return SlotHeader(slot, generation, seq, times)

    def peek(self, slot: int, retries: int = 100) -> SlotHeader | None:
        """The slot's current completed write (generation, seq, times), or None if never written.

        For monitoring and tests; the bus message, not a peek, tells a consumer what to read.
        """
        self._check_open()
        for _ in range(retries):
            generation = int(self._gens[slot])
            if generation == 0:
                return None
            if generation % 2 == 0:
                try:
                    return self.header(slot, generation)
                except StaleSlot:
                    pass
            time.sleep(0)
        raise StaleSlot(f"{self.name} slot {slot} kept changing while peeked")


# --------------------------------------------------------------------------------------------------
# Cleanup after crashed runs
# --------------------------------------------------------------------------------------------------


def _segment_owner(path: Path) -> tuple[int, int | None] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(_RING_HEADER.itemsize)
    except OSError:
        return None
    if len(raw) < _RING_HEADER.itemsize:
        return None
    header = np.frombuffer(raw, dtype=_RING_HEADER, count=1)[0]
    if header["magic"].item() != _MAGIC:
        return None
    start = int(header["owner_start"])
    return int(header["owner_pid"]), (start or None)


def unlink_stale(
    alive_run_ids: Iterable[str] = (), *, shm_dir: str | os.PathLike[str] = "/dev/shm"
) -> list[str]:
    """Remove StyleCast segments left by dead runs; returns the names removed.

    A segment is kept if its run id is in `alive_run_ids`, or if the process that created it
    (recorded in its header with its start time) still runs, or if it has no readable header yet
    and is younger than a few seconds (being created). Segments of other users are never touched.
    """
    alive = set(alive_run_ids)
    removed: list[str] = []
    try:
        entries = list(os.scandir(shm_dir))
    except FileNotFoundError:
        return removed
    uid = os.getuid()
    for entry in entries:
        run_id = run_id_of(entry.name)
        if run_id is None or run_id in alive:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_uid != uid:
            continue
        owner = _segment_owner(Path(entry.path))
        if owner is not None:
            if process_alive(*owner):
                continue
        elif time.time() - st.st_mtime < _STALE_SEGMENT_GRACE_S:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return removed
