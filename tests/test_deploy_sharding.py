"""shared/sharding.py: every stream has exactly one owner, the answer is stable across processes and
releases, the load spreads evenly, and a new replica takes streams only for itself."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from shared.sharding import (
    Shard,
    ShardingError,
    ordinal_from_pod_name,
    owned,
    owner,
    owns,
    shard_from_env,
)

REPO = Path(__file__).resolve().parents[1]
NAMES = [f"cam-{i}" for i in range(2000)]


def test_exactly_one_replica_owns_each_stream() -> None:
    for replicas in (1, 2, 3, 7):
        for name in NAMES[:200]:
            owners = [k for k in range(replicas) if owns(name, k, replicas)]
            assert owners == [owner(name, replicas)], (name, replicas)


def test_assignment_is_pinned() -> None:
    # Replicas of different versions must agree: a change of hash or key format breaks this test on purpose.
    assert [owner(f"cam-{i}", 4) for i in range(12)] == [3, 2, 2, 0, 2, 3, 0, 0, 1, 2, 1, 0]
    assert [owner(n, 3) for n in ("lobby", "door", "parking", "main")] == [0, 1, 1, 1]


def test_same_answer_in_another_interpreter() -> None:
    # Python's hash() is salted per process; a replica is another process.
    code = "from shared.sharding import owner; print([owner(f'cam-{i}', 5) for i in range(50)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=REPO)
    assert out.stdout.strip() == str([owner(f"cam-{i}", 5) for i in range(50)])


def test_load_spreads_evenly() -> None:
    counts = Counter(owner(name, 4) for name in NAMES)
    assert set(counts) == {0, 1, 2, 3}
    assert all(abs(c - 500) < 80 for c in counts.values()), counts  # ±16 %, far outside chance for SHA-256


@pytest.mark.parametrize("before", [1, 2, 3, 5])
def test_adding_a_replica_moves_few_streams_and_only_to_it(before: int) -> None:
    moved = [name for name in NAMES if owner(name, before) != owner(name, before + 1)]
    assert all(owner(name, before + 1) == before for name in moved)  # only onto the new replica
    expected = len(NAMES) / (before + 1)
    assert abs(len(moved) - expected) < 0.2 * expected, (len(moved), expected)


def test_owned_keeps_order_and_partitions() -> None:
    names = NAMES[:50]
    parts = [owned(names, k, 3) for k in range(3)]
    assert sorted(name for part in parts for name in part) == sorted(names)
    assert parts[1] == [n for n in names if owner(n, 3) == 1]


def test_pod_names_and_environment() -> None:
    assert ordinal_from_pod_name("stylecast-0") == 0
    assert ordinal_from_pod_name("stylecast-gpu-12") == 12
    for bad in ("stylecast", "stylecast-", "-3", "", "stylecast-x"):
        with pytest.raises(ShardingError, match="not a StatefulSet pod name"):
            ordinal_from_pod_name(bad)
    assert shard_from_env({}) == Shard(0, 1)
    assert shard_from_env({"STYLECAST_POD_NAME": "stylecast-2", "STYLECAST_REPLICAS": "3"}) == Shard(2, 3)
    with pytest.raises(ShardingError, match="STYLECAST_REPLICAS is not set"):
        shard_from_env({"STYLECAST_POD_NAME": "stylecast-2"})
    with pytest.raises(ShardingError, match="ordinal must be .* in 0..1"):
        shard_from_env({"STYLECAST_POD_NAME": "stylecast-2", "STYLECAST_REPLICAS": "2"})
    with pytest.raises(ShardingError, match="not an integer"):
        shard_from_env({"STYLECAST_POD_NAME": "stylecast-2", "STYLECAST_REPLICAS": "three"})


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ShardingError, match="replicas"):
        owner("cam", 0)
    with pytest.raises(ShardingError, match="ordinal"):
        owns("cam", 3, 3)
    with pytest.raises(ValueError, match="not a valid stream name"):
        owner("Bad Name", 2)
    assert Shard(1, 2).owns("cam-0") == owns("cam-0", 1, 2)
