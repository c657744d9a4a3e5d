"""The run lock: one run at a time in a run directory (issue 28 part 1).

The process that starts a run -- `ft-dist train` (the job's driver under `ray job submit`),
`train.worker.fit`, `orchestrate.dst_ensemble.fit_dst_ensemble` -- holds RUN_DIR/run.lock
for the life of the run:

* an OS lock, ``fcntl.flock`` on that file: the kernel drops it when the process ends in
  any way (exit, exception, SIGKILL, a crash), so a lock is never left held by a dead run.
  On shared storage (NFS v3 with lockd, v4, EFS, FSx for Lustre with flock) the lock holds
  across nodes, so two drivers on two machines of a multi-node cluster exclude each other.
* the holder's identity, written inside: host, pid, the process's start (from /proc, so
  that a reused pid is not taken for the holder) and the time the run took the lock. It
  names the holder in the refusal, and tells a stale lock (a run that was killed: its
  identity is still there but no process holds the OS lock) from a free one (emptied by
  the run that released it).

A second run is refused at once, before it writes anything, by `RunLockedError` (one line:
the holder, since when, and what to do). Re-entrant within one process: `ft-dist train`
holds it around `fit`, which takes it again. The file is never deleted (deleting a lock
file lets a third process lock a new file while a second still holds the old one); a
released lock is an empty file.

Where the file system offers no OS lock (ENOLCK: NFS without a lock daemon), the identity
alone decides: a holder on this host whose process is gone is stale; any other is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ft_dist.layout import lock_path
from ft_dist.utils import Note

# errno of a file system that has no OS locks: the identity inside decides.
NO_OS_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# How long a refused run waits for the holder's identity (written just after its lock).
IDENTITY_WAIT_S = 0.5


class RunLockedError(ValueError):
    """Another run holds the run directory (a user error: one line, never retried)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run lock."""

    host: str
    pid: int
    since: float  # time.time() when it took the lock
    process_start: int | None = None  # /proc/<pid>/stat start time (clock ticks since boot)

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.time(), process_start(os.getpid()))

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        return f"pid {self.pid} on host {self.host} since {when}"

    def alive(self) -> bool | None:
        """Whether the holder still runs: None when it is on another host (unknown here)."""
        if self.host != socket.gethostname():
            return None
        start = process_start(self.pid)
        if start is None:
            return False
        return self.process_start is None or start == self.process_start


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None
    when no such process runs (or /proc is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "(comm)" start at 3


def read_holder(path: Path) -> Holder | None:
    """The identity in a lock file; None for an empty (released) or unreadable one."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return _parse(text)


def _parse(text: str) -> Holder | None:
    try:
        data = json.loads(text)
        return Holder(
            str(data["host"]), int(data["pid"]), float(data["since"]), data.get("process_start")
        )
    except (ValueError, KeyError, TypeError):
        return None


def _read_fd(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


# Locks this process holds: lock file -> [fd, depth]. Keyed by pid too, so that a forked
# child never believes it holds its parent's lock.
_held: dict[tuple[int, str], list[int]] = {}


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock, or raises
    `RunLockedError` naming the holder. `stale` is the identity left by a run that ended
    without releasing it (killed), which this one took over."""

    def __init__(self, run: str | Path) -> None:
        self.path = lock_path(Path(run))
        self.run = Path(run)
        self.stale: Holder | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def _key(self) -> tuple[int, str]:
        return os.getpid(), os.path.realpath(self.path)

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"train.output_dir: cannot create {self.run} ({error}); choose a writable dir"
            ) from None
        held = _held.get(self._key)
        if held is not None:
            held[1] += 1
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ValueError(
                f"train.output_dir: cannot write {self.path} ({error}); choose a writable dir"
            ) from None
        try:
            self.stale = self._lock(fd)
            me = Holder.this_process()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        _held[self._key] = [fd, 1]
        if self.stale is not None:
            warnings.warn(
                f"{self.run}: took over the lock of a run that ended without "
                f"releasing it ({self.stale.describe()}; killed or crashed)",
                Note,
                stacklevel=3,
            )

    def _lock(self, fd: int) -> Holder | None:
        """Take the OS lock; returns the identity a dead holder left (None: it was free)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(self._refusal(self._holder_of_locked(fd))) from None
        except OSError as error:
            if error.errno not in NO_OS_LOCKS:
                raise
            holder = _parse(_read_fd(fd))  # no OS locks here: the identity decides
            if holder is not None and holder.alive() is not False:
                raise RunLockedError(self._refusal(holder)) from None
            return holder
        return _parse(_read_fd(fd))

    def _holder_of_locked(self, fd: int) -> Holder | None:
        """The identity of the process holding the OS lock: it writes it just after
        taking the lock, so wait a moment for it."""
        deadline = time.monotonic() + IDENTITY_WAIT_S
        while True:
            holder = _parse(_read_fd(fd))
            if holder is not None or time.monotonic() > deadline:
                return holder
            time.sleep(0.02)

    def _refusal(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "another process (its identity not yet written)"
        stop = f"stop it (kill {holder.pid} on {holder.host})" if holder else "stop it"
        return (
            f"{self.run} is in use by another run: {who} holds {self.path.name}; "
            f"wait for it to end or {stop} and re-run this command to resume, or choose "
            "another train.run_name"
        )

    def release(self) -> None:
        """Empty the file (a released lock holds no identity), then drop the OS lock."""
        held = _held.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _held[self._key]
        fd = held[0]
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a read-only or vanished file: the OS lock goes with the descriptor
        finally:
            os.close(fd)  # closing drops the flock
