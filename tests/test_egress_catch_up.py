"""Egress takes frames it was never told about from the ring, in order, exactly once.

A SUB socket hears only what is published after its subscription reached the GPU worker; frames
written before that (a slow connection, a restart) are in the output ring all the same.
"""

from __future__ import annotations

import collections
from types import SimpleNamespace

import numpy as np
import pytest

from services.egress.__main__ import Egress
from shared.metrics import get_metrics
from shared.protocol import Styled
from shared.ring import Ring
from shared.runtime import new_run_id

SIZE = 8


class RecordingSink:
    kind = "test"
    target = "memory"
    failed = None

    def __init__(self):
        self.frames: list[int] = []

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(int(frame[0, 0, 0]))  # each test frame is filled with its seq


@pytest.fixture
def ring():
    ring = Ring.create(new_run_id(), "cam", "out", slots=16, shape=(SIZE, SIZE, 3), dtype="u1")
    yield ring
    ring.unlink()


def _egress(ring: Ring, sink: RecordingSink) -> tuple[Egress, list]:
    dropped = []
    egress = object.__new__(Egress)
    egress.proc = SimpleNamespace(metrics=get_metrics(), detail="", error=lambda *a, **k: None,
                                  dropped=lambda stream, seq, stage, reason: dropped.append((seq, reason)))
    egress.name, egress.ring, egress.sinks, egress.preview = "cam", ring, [sink], ""
    egress.written, egress.last_seq, egress.latencies, egress.versions, egress.version_changes = 0, -1, [], [], []
    egress.written_before = 0
    egress.stage_sums = dict.fromkeys(("ingest", "queue", "gpu", "egress"), 0.0)
    egress.first_write = egress.last_write = None
    egress.unsettled = collections.deque()
    egress.next_index = ring.released
    return egress, dropped


def _publish(ring: Ring, seq: int) -> Styled:
    """What the GPU worker does per frame: write it to the ring, then announce it."""
    slot, generation = ring.write(np.full((SIZE, SIZE, 3), seq, np.uint8), seq, times=(1.0, 1.0, 1.0, 1.0))
    return Styled(stream="cam", seq=seq, slot=slot, generation=generation, batch_id=0, t_capture=1.0, t_ingest=1.0,
                  t_batch_start=1.0, t_side_done=1.0, t_main_done=1.0)


def test_frames_announced_before_the_subscription_are_taken_from_the_ring(ring):
    sink = RecordingSink()
    egress, dropped = _egress(ring, sink)
    egress._recover()  # nothing written yet: the stream has not started
    messages = [_publish(ring, seq) for seq in range(6)]
    for msg in messages[3:]:  # the first three were published before the subscription arrived
        egress._write(msg)
    assert sink.frames == [0, 1, 2, 3, 4, 5] and dropped == []


def test_an_announcement_after_the_ring_gave_the_frame_writes_nothing_twice(ring):
    sink = RecordingSink()
    egress, dropped = _egress(ring, sink)
    messages = [_publish(ring, seq) for seq in range(4)]
    egress._recover()  # a restarted egress takes all four from the ring…
    for msg in messages[2:]:  # …and then hears the announcements of the last two
        egress._write(msg)
    egress._write(_publish(ring, 4))
    assert sink.frames == [0, 1, 2, 3, 4] and dropped == []


def test_frames_written_but_never_announced_before_the_end_marker_are_written(ring):
    sink = RecordingSink()
    egress, _ = _egress(ring, sink)
    egress._write(_publish(ring, 0))
    for seq in (1, 2):
        _publish(ring, seq)  # their messages are lost
    egress._take_unannounced(ring.written)  # what run() does on the end-of-stream marker
    assert sink.frames == [0, 1, 2]


def test_a_redone_frame_is_a_counted_duplicate(ring):
    sink = RecordingSink()
    egress, dropped = _egress(ring, sink)
    for seq in (0, 1):
        egress._write(_publish(ring, seq))
    egress._write(_publish(ring, 1))  # a restarted GPU worker wrote seq 1 again
    assert sink.frames == [0, 1] and dropped == [(1, "duplicate")]


def test_a_restarted_egress_counts_on_from_its_predecessors_frames(ring):
    for seq in range(5):
        _publish(ring, seq)
    ring.release(3)  # a killed predecessor had put out and settled the first three
    sink = RecordingSink()
    egress, _ = _egress(ring, sink)
    egress._recover()
    assert sink.frames == [3, 4]  # only what the predecessor left in the ring
    assert (egress.written, egress.total_written) == (2, 5)
    assert "written=5" in egress.proc.detail  # the status the API reports as frames_out


def _runnable(egress: Egress, stop_after_polls: int) -> list:
    """What run() needs besides _egress: a socket that stays silent (the end message went out before this egress
    subscribed) and a process that records the stream's final state and asks to stop after some polls."""
    import threading

    states, polls, stop = [], [], threading.Event()

    def recv(timeout_s, expect):
        polls.append(1)
        if len(polls) >= stop_after_polls:
            stop.set()
        return None

    egress.styled = SimpleNamespace(recv=recv)
    egress.proc.stop = stop
    egress.proc.write_summary = lambda summary: None
    egress.proc.stream_state = lambda name, state, reason: states.append((state, reason))
    egress.sinks[0].close = lambda: None
    return states


def test_an_egress_restarted_after_the_end_message_ends_from_the_ring(ring):
    """The end of a stream is one message; an egress restarted after it went out used to wait for it forever.
    The GPU worker also marks the ring ended, after its last write."""
    from shared.protocol import StreamStatus

    for seq in range(3):
        _publish(ring, seq)
    ring.mark_ended()
    sink = RecordingSink()
    egress, dropped = _egress(ring, sink)
    states = _runnable(egress, stop_after_polls=50)
    assert egress.run() == 0
    assert sink.frames == [0, 1, 2] and dropped == []
    assert states == [(StreamStatus.STOPPED, "end of stream after 3 frames")]


def test_without_the_end_mark_a_silent_egress_keeps_waiting(ring):
    from shared.protocol import StreamStatus

    _publish(ring, 0)
    sink = RecordingSink()
    egress, _ = _egress(ring, sink)
    states = _runnable(egress, stop_after_polls=5)
    assert egress.run() == 0  # stopped by the process, not ended by the stream (the frame in the ring is written)
    assert sink.frames == [0] and states == [(StreamStatus.STOPPED, "stopped after 1 frames")]
    assert not ring.ended
