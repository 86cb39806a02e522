"""Run bookkeeping on one node: run ids, the private runtime directory, and cleanup after crashes.

Layout under `service.runtime_dir` (mode 0700):

    runs/<run_id>/run.json     owner pid + process start time (so a reused pid is not mistaken for it)
    runs/<run_id>/*.sock       ipc bus endpoints (`shared.bus`)
    runs/<run_id>/metrics/     PROMETHEUS_MULTIPROC_DIR (`shared.metrics`)

Shared-memory segments live in /dev/shm as `stylecast-<run_id>-<stream>-<kind>` (`shared.ring`).
`cleanup_stale` removes whatever a run killed with SIGKILL left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RUN_ID_RE = re.compile(r"[a-z0-9]{1,32}")
RUN_ID_ENV = "STYLECAST_RUN_ID"
RUNTIME_DIR_ENV = "STYLECAST_RUNTIME_DIR"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A run directory younger than this without a readable run.json is assumed to be starting up.
_STARTUP_GRACE_S = 10.0


class RuntimeDirError(RuntimeError):
    """The runtime directory is missing, not ours, or not private."""


def new_run_id() -> str:
    """A fresh run id: 12 lowercase hex characters."""
    return secrets.token_hex(6)


def check_run_id(run_id: str) -> str:
    """Validate a run id (it is part of file and segment names)."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not a run id: use 1-32 characters from a-z and 0-9")
    return run_id


# --------------------------------------------------------------------------------------------------
# Process identity (pid + start time, so pid reuse is not mistaken for liveness)
# --------------------------------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields we need follow the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall: starttime
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True if `pid` runs and (when given) started at `start_ticks`; zombies count as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        if raw[raw.rfind(b")") + 2 :][:1] == b"Z":
            return False
    except OSError:
        pass
    if start_ticks is None:
        return True
    return process_start_ticks(pid) == start_ticks


# --------------------------------------------------------------------------------------------------
# Private directories
# --------------------------------------------------------------------------------------------------


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (mode 0700) if needed and verify it: a real directory, ours, not open to others.

    Raises `RuntimeDirError` naming the problem (and the fix) otherwise.
    """
    path = Path(path)
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create runtime directory {path}: {exc.strerror}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is a symlink; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} exists but is not a directory")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"runtime directory {path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        if not created:
            raise RuntimeDirError(
                f"runtime directory {path} has mode {mode:04o}; it must be private: chmod 700 {path}"
            )
    if mode != 0o700:
        os.chmod(path, 0o700)
    return path


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One start of the service: its id and where its files live."""

    run_id: str
    runtime_dir: Path

    def __post_init__(self) -> None:
        check_run_id(self.run_id)
        object.__setattr__(self, "runtime_dir", Path(self.runtime_dir))

    @property
    def dir(self) -> Path:
        """This run's private directory."""
        return self.runtime_dir / "runs" / self.run_id

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR of this run."""
        return self.dir / "metrics"

    def env(self) -> dict[str, str]:
        """Variables a child process needs to find this run (see `Run.from_env`)."""
        return {RUN_ID_ENV: self.run_id, RUNTIME_DIR_ENV: str(self.runtime_dir), MULTIPROC_ENV: str(self.metrics_dir)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Run:
        """The run a child process belongs to, from the variables of `Run.env()`."""
        env = os.environ if env is None else env
        missing = [name for name in (RUN_ID_ENV, RUNTIME_DIR_ENV) if not env.get(name)]
        if missing:
            raise RuntimeDirError(f"not started by a StyleCast supervisor: {', '.join(missing)} unset")
        return cls(env[RUN_ID_ENV], Path(env[RUNTIME_DIR_ENV]))


def start_run(runtime_dir: str | os.PathLike[str], run_id: str | None = None) -> Run:
    """Create a run's private directories and record this process as its owner."""
    run = Run(run_id or new_run_id(), Path(runtime_dir))
    ensure_private_dir(run.runtime_dir)
    ensure_private_dir(run.runtime_dir / "runs")
    if run.dir.exists():
        raise RuntimeDirError(f"run directory {run.dir} already exists")
    ensure_private_dir(run.dir)
    ensure_private_dir(run.metrics_dir)
    record = {"pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid()), "created": time.time()}
    tmp = run.dir / "run.json.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, run.dir / "run.json")  # atomic: readers see all of it or nothing
    return run


def finish_run(run: Run) -> None:
    """Remove a run's directory (sockets, metrics files, record). Segments are the ring owner's job."""
    shutil.rmtree(run.dir, ignore_errors=True)


def _run_owner(run_dir: Path) -> tuple[int, int | None] | None:
    try:
        record = json.loads((run_dir / "run.json").read_text())
        return int(record["pid"]), (None if record.get("start_ticks") is None else int(record["start_ticks"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_is_alive(run_dir: Path) -> bool:
    owner = _run_owner(run_dir)
    if owner is None:
        try:
            return time.time() - run_dir.stat().st_mtime < _STARTUP_GRACE_S
        except OSError:
            return False
    return process_alive(*owner)


def alive_run_ids(runtime_dir: str | os.PathLike[str]) -> set[str]:
    """Ids of the runs recorded under `runtime_dir` whose owner process still runs."""
    runs = Path(runtime_dir) / "runs"
    if not runs.is_dir():
        return set()
    return {d.name for d in runs.iterdir() if d.is_dir() and RUN_ID_RE.fullmatch(d.name) and _run_is_alive(d)}


@dataclass
class CleanupReport:
    """What `cleanup_stale` removed."""

    runs: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)


def cleanup_stale(runtime_dir: str | os.PathLike[str], shm_dir: str | os.PathLike[str] = "/dev/shm") -> CleanupReport:
    """Remove the run directories and shared-memory segments of runs whose owner is dead.

    Call it at start, before creating anything: a `kill -9` of a previous run leaks nothing past it.
    """
    from shared.ring import unlink_stale  # local: ring imports this module

    report = CleanupReport()
    runs = Path(runtime_dir) / "runs"
    if runs.is_dir():
        for d in runs.iterdir():
            if d.is_dir() and not d.is_symlink() and RUN_ID_RE.fullmatch(d.name) and not _run_is_alive(d):
                shutil.rmtree(d, ignore_errors=True)
                report.runs.append(d.name)
    report.segments = unlink_stale(alive_run_ids(runtime_dir), shm_dir=shm_dir)
    return report
