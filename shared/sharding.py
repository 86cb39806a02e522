"""Which replica serves which stream, decided by every replica alone (no coordinator).

Rendezvous (highest-random-weight) hashing: replica `k` scores each stream with a stable hash of
(stream name, k); the replica with the highest score owns the stream. Every replica computes the
same answer from the same inputs, and going from N to N+1 replicas moves only the streams whose
new top score is the new replica's: about 1/(N+1) of them, all onto the new replica.

The hash is SHA-256, not Python's `hash()`, which is salted per process and would give each
replica a different answer.

A replica learns its ordinal from its StatefulSet pod name (`stylecast-3` → 3), handed in through
the downward API as `STYLECAST_POD_NAME`, and the replica count from `STYLECAST_REPLICAS`. These
names are deliberately not `STYLECAST_<SECTION>__…` settings variables, so that today's settings
loader ignores them (see deploy/README.md).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.settings import check_stream_name

POD_NAME_ENV = "STYLECAST_POD_NAME"
REPLICAS_ENV = "STYLECAST_REPLICAS"
MAX_REPLICAS = 4096
_POD_ORDINAL_RE = re.compile(r".+-([0-9]+)")


class ShardingError(ValueError):
    """A replica ordinal or count that cannot be used; the message names it."""


def _check(ordinal: int, replicas: int) -> None:
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
        raise ShardingError(f"replicas must be an integer in 1..{MAX_REPLICAS}, got {replicas!r}")
    if isinstance(ordinal, bool) or not isinstance(ordinal, int) or not 0 <= ordinal < replicas:
        raise ShardingError(f"ordinal must be an integer in 0..{replicas - 1} for {replicas} replica(s), got {ordinal!r}")


def score(stream_name: str, ordinal: int) -> int:
    """Replica `ordinal`'s weight for `stream_name`: the first 8 bytes of SHA-256 over both, as an integer."""
    check_stream_name(stream_name)
    digest = hashlib.sha256(f"{stream_name}\x00{ordinal}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big")


def owner(stream_name: str, replicas: int) -> int:
    """The ordinal (0..replicas-1) of the replica that serves `stream_name`."""
    _check(0, replicas)
    # Ties need two equal 64-bit hashes; the lower ordinal wins them so the answer stays unique.
    return max(range(replicas), key=lambda k: (score(stream_name, k), -k))


def owns(stream_name: str, ordinal: int, replicas: int) -> bool:
    """True when replica `ordinal` of `replicas` serves `stream_name`. Exactly one replica owns each stream."""
    _check(ordinal, replicas)
    return owner(stream_name, replicas) == ordinal


def owned(stream_names: Iterable[str], ordinal: int, replicas: int) -> list[str]:
    """The names among `stream_names` that replica `ordinal` serves, in their given order."""
    _check(ordinal, replicas)
    return [name for name in stream_names if owner(name, replicas) == ordinal]


def ordinal_from_pod_name(pod_name: str) -> int:
    """A StatefulSet pod's ordinal from its name: `stylecast-gpu-2` → 2."""
    match = _POD_ORDINAL_RE.fullmatch(pod_name or "")
    if match is None:
        raise ShardingError(
            f"{pod_name!r} is not a StatefulSet pod name (<statefulset>-<ordinal>); set {POD_NAME_ENV} from metadata.name"
        )
    return int(match.group(1))


@dataclass(frozen=True)
class Shard:
    """This replica's place: `ordinal` of `replicas`."""

    ordinal: int
    replicas: int

    def __post_init__(self) -> None:
        _check(self.ordinal, self.replicas)

    def owns(self, stream_name: str) -> bool:
        return owns(stream_name, self.ordinal, self.replicas)


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard:
    """This replica's shard from `STYLECAST_POD_NAME` and `STYLECAST_REPLICAS`.

    Neither set: a single replica (0 of 1), the plain `stylecast serve` case. One without the
    other is an error, never a guess: a replica that guessed wrong would run streams twice or not at all.
    """
    env = os.environ if env is None else env
    pod, count = env.get(POD_NAME_ENV), env.get(REPLICAS_ENV)
    if not pod and not count:
        return Shard(0, 1)
    if not pod or not count:
        missing = POD_NAME_ENV if not pod else REPLICAS_ENV
        raise ShardingError(f"{missing} is not set; sharding needs both {POD_NAME_ENV} and {REPLICAS_ENV}")
    try:
        replicas = int(count)
    except ValueError:
        raise ShardingError(f"{REPLICAS_ENV}={count!r} is not an integer") from None
    return Shard(ordinal_from_pod_name(pod), replicas)
