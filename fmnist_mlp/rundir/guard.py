"""Guards of a run directory: one process at a time, and none of its entries followed as links.

A run directory may be shared, copied or tampered with. Before a process trains in one it takes
:class:`RunLock`; before a resume touches anything, :func:`check_run_entries` refuses entries that
were replaced by links, FIFOs or devices (the opens themselves go through
:mod:`fmnist_mlp.io.files`, which refuses links too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import threading
from pathlib import Path
from typing import Iterator

from fmnist_mlp.io import files as safe_io
from fmnist_mlp.io.lock import FileLock, LockHeld, is_held
from fmnist_mlp.rundir import layout
from fmnist_mlp.errors import CheckpointError


class RunLock:
    """The one lock helper (:class:`fmnist_mlp.io.lock.FileLock`) on ``<run>/.lock``, tried once,
    held while one process trains the run.

    The kernel drops it when the process dies, so a killed run never stays locked; a second
    ``--resume`` of the same run finds it held and stops with one line naming the holder. The
    lock file is opened without following links (it lies inside a run directory).
    """

    NAME = layout.LOCK

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._lock = FileLock(self.run_dir / self.NAME, timeout=0, opener=self._open)

    def _open(self) -> int:
        with safe_io.open_inside(self.run_dir, self.NAME, "ab") as f:
            return os.dup(f.fileno())

    def acquire(self) -> "RunLock":
        try:
            self._lock.acquire()
        except LockHeld as held:
            raise CheckpointError(f"{self.run_dir}: already running ({held.holder} holds "
                                  f"{self.run_dir / self.NAME}); wait for it or stop it "
                                  f"first") from None
        _held[_key(self.run_dir)] = self
        return self

    def release(self) -> None:
        if _held.get(_key(self.run_dir)) is self:
            del _held[_key(self.run_dir)]
        self._lock.release()

    def still_held(self) -> bool:
        """Still this process's run: its lock file was not replaced by :func:`break_lock`."""
        return self._lock.holds_path()


class RunTakenOver(CheckpointError):
    """Another process broke this run's lock (its coordinator, a sweep's database, declared
    this one dead) and owns the run now: this process writes nothing more to it."""


# The runs this process holds the lock of, by directory: the writers ask before each write.
_held: dict[str, RunLock] = {}


def _key(run_dir: Path) -> str:
    return os.path.abspath(run_dir)


def refuse_if_taken(run_dir: str | Path) -> None:
    """Raise :class:`RunTakenOver` when this process locked ``run_dir`` and the lock was broken
    since: a late write from a stale owner (a worker frozen past its sweep's grace period, then
    woken) must not land in the run its successor is training."""
    lock = _held.get(_key(Path(run_dir)))
    if lock is not None and not lock.still_held():
        raise RunTakenOver(f"{run_dir}: taken over by another process (its lock was broken "
                           f"while this one was stopped or cut off); nothing more is written "
                           f"to it from here")


@contextlib.contextmanager
def fenced(run_dir: str | Path) -> Iterator[None]:
    """A group of writes to ``run_dir`` that a stale owner must not finish: refused up front
    (:func:`refuse_if_taken`), and refused again the moment this process is continued after a
    stop (SIGCONT), should the run have been taken over while it was stopped.

    A worker frozen past its sweep's grace period (SIGSTOP, a suspended VM, a swapped-out
    process) may be stopped in the middle of recording an epoch, after the check: woken, it would
    finish writing its stale checkpoint and summary over its successor's, even a finished run's.
    Here the SIGCONT handler raises :class:`RunTakenOver` in the main thread at once, inside the
    interrupted write (a system call interrupted by the signal returns to Python first), so the
    write's own cleanup removes its temporary and the rest of the group is not written. Only a
    ``rename`` already in the kernel when the stop came can still land. Elsewhere than in the
    main thread (where Python runs signal handlers) the check up front is all there is.
    """
    if threading.current_thread() is not threading.main_thread() or \
            _held.get(_key(Path(run_dir))) is None:
        refuse_if_taken(run_dir)
        yield
        return

    def on_continue(signum, frame) -> None:
        refuse_if_taken(run_dir)

    previous = signal.signal(signal.SIGCONT, on_continue)    # first: no gap before the check
    try:
        refuse_if_taken(run_dir)
        yield
    finally:
        signal.signal(signal.SIGCONT, previous)


def break_lock(run_dir: str | Path) -> bool:
    """Break the run's lock for a holder a coordinator has declared dead (a sweep's database,
    after the holder's heartbeat went silent past the grace period): the lock file is replaced by
    a fresh one, so the caller can take the run, and the old holder, should it wake, is refused
    its next write (:func:`refuse_if_taken`). Only for callers that know the holder is dead or
    disowned; True when a holder was displaced. The file is replaced even when no holder shows:
    on a filesystem whose locks do not reach this node a live holder looks like none, and the
    fresh file still refuses its writes."""
    path = Path(run_dir) / layout.LOCK
    held = is_held(path)
    if held or os.path.lexists(path):
        safe_io.atomic_write(path, b"", base=run_dir)
    return held


def is_stale(run_dir: str | Path, summary: dict) -> bool:
    """Marked running, but no process trains it: decided by the run's lock (held by the kernel
    for as long as its trainer lives), not by the recorded pid, which another process may have
    been given since. A run started on another host cannot be told (its lock may live in that
    host's lock table); a run from before the lock existed falls back to its pid."""
    if summary.get("status") != "running" or summary.get("host") != socket.gethostname():
        return False
    lock = Path(run_dir) / RunLock.NAME
    if os.path.lexists(lock):
        return not is_held(lock)
    return _pid_gone(summary)


def _pid_gone(summary: dict) -> bool:
    pid = summary.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 \
        and not safe_io.pid_alive(pid)


def refuse_links_inside(run_dir: str | Path, relative: str | Path) -> None:
    """Raise UnsafePathError when any component of ``run_dir/relative`` is a symbolic link."""
    path = Path(run_dir)
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            raise safe_io.UnsafePathError(f"{path}: is a symbolic link; refusing to follow it "
                                          f"inside a run directory (remove it)")


def check_run_entries(run_dir: str | Path) -> None:
    """Refuse a run directory whose own entries were replaced by links, FIFOs or devices, before
    anything in it is opened or rewritten (so a refused resume changes nothing)."""
    for name in layout.RUN_FILES + layout.RUN_DIRS:
        path = Path(run_dir) / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        expected = stat.S_ISDIR(mode) if name in layout.RUN_DIRS else stat.S_ISREG(mode)
        if not expected:
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular entry"
            raise safe_io.UnsafePathError(f"{path}: is {kind}; refusing to follow it inside a "
                                          f"run directory (remove it, or restore the run's own)")
