"""Coordination on one machine (the journal file): flock in DIR.

``DIR/.claim.lock`` is held while a worker picks its next trial (and while the study is created);
``DIR/locks/trial-N.lock`` is held by the worker training trial N. The kernel releases a flock the
moment its holder dies, however it dies (SIGKILL, OOM, pre-emption), so a dead worker's trial is
taken over at once and exactly once. That holds between the processes of one machine; across
machines a flock is only as shared as the filesystem's lock daemon, which is why a database
coordinates there instead (ownership.py).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.io.lock import FileLock, is_held

# A holder keeps the claim lock for one Optuna ask: well under a second, seconds on a slow shared
# file system, so even a large job array starting at once is through in minutes. A wait this
# long means a holder that is stopped (Ctrl-Z) or stuck.
CLAIM_WAIT_SECONDS = 600.0


def _lock(path: Path, timeout: float | None) -> FileLock:
    def opened_here() -> int:
        try:
            return FileLock.open_lock_file(path)
        except OSError as exc:
            raise FmnistMlpError(f"{path}: cannot open ({exc.strerror})") from None
    return FileLock(path, timeout=timeout, notify=lambda message: None, opener=opened_here)


@contextmanager
def claim_lock(directory: Path, wait: float = CLAIM_WAIT_SECONDS) -> Iterator[None]:
    """Serialises picking trials (and study creation) among all workers of the sweep.

    A dead holder's lock is released by the kernel; a live one that keeps it past ``wait``
    seconds is reported in one line rather than waited for forever."""
    lock = _lock(directory / ".claim.lock", timeout=None)
    deadline = time.monotonic() + wait
    while not lock.try_acquire():
        if time.monotonic() >= deadline:
            raise FmnistMlpError(
                f"{lock.path}: waited {wait:g} s for it; another worker of this sweep ({lock.holder()}) "
                f"holds it and may be stopped (Ctrl-Z) or stuck: resume or end it, then run again")
        time.sleep(0.05)
    try:
        yield
    finally:
        lock.release()


def try_lock_trial(directory: Path, number: int) -> FileLock | None:
    """Trial ``number``'s lock, held, or None if a live worker holds it. Releasing it (or the
    process dying) frees the trial."""
    lock = _lock(directory / "locks" / f"trial-{number}.lock", timeout=0)
    return lock if lock.try_acquire() else None


def is_trial_held(directory: Path, number: int, create: bool = True) -> bool:
    """Whether a live worker holds trial ``number``. ``create`` False: asked read-only (a missing
    lock file was never held)."""
    if not create:
        return is_held(directory / "locks" / f"trial-{number}.lock")
    lock = try_lock_trial(directory, number)
    if lock is None:
        return True
    lock.release()
    return False


@contextmanager
def journal_pick(directory: Path, study, budget: int) -> Iterator[tuple[Any, FileLock, int] | None]:
    """Under the claim lock, the trial a worker takes, its lock held: ``(frozen, lock, number)``
    for a RUNNING trial whose worker is gone (its lock was free), ``(None, lock, number)`` for a
    new trial while the budget lasts (the number the study gives next, which the caller asks
    inside the block), or None. The block runs with the claim lock held; should it fail, the
    trial's lock is released."""
    with claim_lock(directory):
        trials = study.get_trials(deepcopy=False)
        pick = None
        for t in trials:
            if t.state.name == "RUNNING":
                lock = try_lock_trial(directory, t.number)
                if lock is not None:        # its worker is gone: take it over
                    pick = (t, lock, t.number)
                    break
        if pick is None and len(trials) < budget:
            lock = try_lock_trial(directory, len(trials))
            assert lock is not None, "a new trial's lock is free"      # we hold the claim lock
            pick = (None, lock, len(trials))
        try:
            yield pick
        except BaseException:
            if pick is not None:
                pick[1].release()
            raise
