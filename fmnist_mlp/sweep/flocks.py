"""Coordination on one machine (the journal file): flock in DIR.

``DIR/.claim.lock`` is held while a worker picks its next trial (and while the study is created);
``DIR/locks/trial-N.lock`` is held by the worker training trial N. The kernel releases a flock the
moment its holder dies, however it dies (SIGKILL, OOM, pre-emption), so a dead worker's trial is
taken over at once and exactly once. That holds between the processes of one machine; across
machines a flock is only as shared as the filesystem's lock daemon, which is why a database
coordinates there instead (ownership.py).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fmnist_mlp.errors import FmnistMlpError

# A holder keeps the claim lock for one Optuna ask: well under a second, seconds on a slow shared
# file system, so even a large job array starting at once is through in minutes. A wait this
# long means a holder that is stopped (Ctrl-Z) or stuck.
CLAIM_WAIT_SECONDS = 600.0


@contextmanager
def claim_lock(directory: Path, wait: float = CLAIM_WAIT_SECONDS) -> Iterator[None]:
    """Serialises picking trials (and study creation) among all workers of the sweep.

    A dead holder's lock is released by the kernel; a live one that keeps it past ``wait``
    seconds is reported in one line rather than waited for forever."""
    path = directory / ".claim.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise FmnistMlpError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FmnistMlpError(
                        f"{path}: waited {wait:g} s for it; another worker of this sweep holds "
                        f"it and may be stopped (Ctrl-Z) or stuck: resume or end it, then run again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def try_lock_trial(directory: Path, number: int) -> int | None:
    """An open, exclusively locked fd for trial ``number``'s lock file, or None if a live
    worker holds it. Closing the fd (or the process dying) releases it."""
    path = directory / "locks" / f"trial-{number}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise FmnistMlpError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_trial_held(directory: Path, number: int, create: bool = True) -> bool:
    """Whether a live worker holds trial ``number``. ``create`` False: read only (a missing lock
    file was never held; a lock file opened read-only still takes a flock)."""
    if not create:
        try:
            fd = os.open(directory / "locks" / f"trial-{number}.lock", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    fd = try_lock_trial(directory, number)
    if fd is None:
        return True
    os.close(fd)
    return False
