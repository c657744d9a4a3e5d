"""The run lock (ft_dist/runlock.py): one run at a time in a run directory, held by another
process, released on exit, taken over when its holder was killed."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ft_dist import runlock
from ft_dist.layout import lock_path
from ft_dist.runlock import Holder, RunLock, RunLockedError, read_holder
from ft_dist.utils import Note

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from ft_dist.runlock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def start_holder(run: Path) -> subprocess.Popen:
    """Another process holding `run`'s lock (it prints "held" once it does)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=30)
    process.stdout.close()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_held_while_running_then_released_empty(tmp_path: Path) -> None:
    run = tmp_path / "r"
    with RunLock(run) as lock:
        holder = read_holder(lock_path(run))
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        assert abs(holder.since - time.time()) < 60 and holder.alive()
        with RunLock(run):  # re-entrant in one process (ft-dist train, then fit)
            pass
        assert read_holder(lock_path(run)) == holder  # still held by the outer one
        assert lock.stale is None
    assert lock_path(run).read_text() == ""  # released: no identity left
    with RunLock(run) as again:  # and free for the next run
        assert again.stale is None


def test_a_second_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    run = tmp_path / "r"
    holder = start_holder(run)
    try:
        before = lock_path(run).read_bytes()
        with pytest.raises(RunLockedError) as refused:
            RunLock(run).acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"{run} is in use by another run: pid {holder.pid} on host " in message
        assert f"host {socket.gethostname()} since " in message
        assert f"kill {holder.pid} on {socket.gethostname()}" in message
        assert lock_path(run).read_bytes() == before  # the holder's identity untouched
        assert holder.poll() is None
    finally:
        stop(holder)


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "r"
    holder = start_holder(run)
    stop(holder)  # SIGKILL: no clean-up ran, its identity stays in the file
    assert read_holder(lock_path(run)).pid == holder.pid
    took_over = f"took over the lock of a run .*pid {holder.pid} on host"
    with pytest.warns(Note, match=took_over), RunLock(run) as lock:
        assert lock.stale.pid == holder.pid
        assert read_holder(lock_path(run)).pid == os.getpid()


def test_a_lock_file_left_by_a_dead_pid_is_stale(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    gone = Holder(socket.gethostname(), dead_pid(), time.time() - 3600, 12345)
    lock_path(run).write_text(json.dumps(gone.__dict__))
    assert gone.alive() is False
    with pytest.warns(Note, match="ended without releasing it"), RunLock(run) as lock:
        assert lock.stale == gone


def test_without_os_locks_the_identity_decides(tmp_path: Path, monkeypatch) -> None:
    """A file system with no flock (NFS without lockd): a live holder on this host or any
    holder on another host is refused, a dead one on this host taken over."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    run = tmp_path / "r"
    run.mkdir()
    parent = os.getppid()
    cases = [
        (Holder(socket.gethostname(), parent, time.time(), runlock.process_start(parent)), True),
        (Holder("another-host", dead_pid(), time.time()), True),
        (Holder(socket.gethostname(), dead_pid(), time.time()), False),
    ]
    for holder, refused in cases:
        lock_path(run).write_text(json.dumps(holder.__dict__))
        if refused:
            with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host {holder.host}"):
                RunLock(run).acquire()
        else:
            with pytest.warns(Note), RunLock(run) as lock:
                assert lock.stale == holder


def test_a_reused_pid_is_not_the_holder(tmp_path: Path) -> None:
    """Same pid, another process start: the holder is gone (its pid was given again)."""
    me = Holder.this_process()
    assert me.alive()
    assert Holder(me.host, me.pid, me.since, me.process_start + 1).alive() is False


def test_an_unwritable_run_directory_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    run.chmod(0o500)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("running as a user that may write anywhere (root)")
        with pytest.raises(ValueError, match="train.output_dir: cannot write .*run.lock"):
            RunLock(run).acquire()
    finally:
        run.chmod(0o700)
