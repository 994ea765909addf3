"""Guards of a run directory: one process at a time, and none of its entries followed as links.

A run directory may be shared, copied or tampered with. Before a process trains in one it takes
:class:`RunLock`; before a resume touches anything, :func:`check_run_entries` refuses entries that
were replaced by links, FIFOs or devices (the opens themselves go through
:mod:`fmnist_mlp.io.files`, which refuses links too).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fmnist_mlp.io import files as safe_io
from fmnist_mlp.errors import CheckpointError


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``, held while one process trains the run.

    The kernel drops it when the process dies, so a killed run never stays locked; a second
    ``--resume`` of the same run finds it held and stops with one line.
    """

    NAME = ".lock"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        with safe_io.open_inside(self.run_dir, self.NAME, "ab") as f:
            fd = os.dup(f.fileno())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(f"{self.run_dir}: already running (another process holds "
                                  f"{self.run_dir / self.NAME}); wait for it or stop it first") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing the last descriptor releases the flock
            self._fd = None


def refuse_links_inside(run_dir: str | Path, relative: str | Path) -> None:
    """Raise UnsafePathError when any component of ``run_dir/relative`` is a symbolic link."""
    path = Path(run_dir)
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            raise safe_io.UnsafePathError(f"{path}: is a symbolic link; refusing to follow it "
                                          f"inside a run directory (remove it)")


_RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "train.log")
_RUN_DIRS = ("checkpoints", "plots")


def check_run_entries(run_dir: str | Path) -> None:
    """Refuse a run directory whose own entries were replaced by links, FIFOs or devices, before
    anything in it is opened or rewritten (so a refused resume changes nothing)."""
    for name in _RUN_FILES + _RUN_DIRS:
        path = Path(run_dir) / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        expected = stat.S_ISDIR(mode) if name in _RUN_DIRS else stat.S_ISREG(mode)
        if not expected:
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular entry"
            raise safe_io.UnsafePathError(f"{path}: is {kind}; refusing to follow it inside a "
                                          f"run directory (remove it, or restore the run's own)")
