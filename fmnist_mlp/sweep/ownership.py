"""Who trains which trial when the study is in a database: decided in the database alone.

- Claiming (a new trial, or taking over a dead worker's) happens under a lock held *in the
  database*: PostgreSQL's session advisory lock, MySQL's ``GET_LOCK`` (both dropped by the server
  when the holder's connection dies), or, for SQLite, whose file is only as shared as its locks
  anyway, a flock beside the database file. Nothing in DIR is locked.
- A worker owns its trial while it beats: Optuna's trial heartbeat (``RDBStorage`` with
  ``heartbeat_interval``), recorded by a thread every ``interval`` seconds, timed by the database's
  clock. A RUNNING trial whose last beat is older than ``grace`` seconds belongs to a dead worker
  and is taken over: the same trial (same number, same budget place), resumed from its run's last
  checkpoint. The taker writes itself as the trial's owner; a worker that was only stopped
  (Ctrl-Z past the grace) sees another owner at its next beat and gives the trial up before its
  next epoch, training nothing twice.

Defaults: a beat every 10 s, taken over after 40 s of silence (``FMNIST_MLP_SWEEP_HEARTBEAT``,
``FMNIST_MLP_SWEEP_GRACE`` to change them; tests use 1 s and 4 s).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.io.lock import FileLock

OWNER_KEY = "fmnist_mlp:owner"
RELEASED = ""               # the owner written by a worker that stopped in good order
HEARTBEAT_VAR, GRACE_VAR = "FMNIST_MLP_SWEEP_HEARTBEAT", "FMNIST_MLP_SWEEP_GRACE"
DEFAULT_HEARTBEAT, DEFAULT_GRACE = 10, 40
CLAIM_WAIT_SECONDS = 600.0


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds, from the environment; grace must exceed two beats."""
    values = []
    for var, default in ((HEARTBEAT_VAR, DEFAULT_HEARTBEAT), (GRACE_VAR, DEFAULT_GRACE)):
        text = os.environ.get(var, str(default))
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{var}={text!r}: expected whole seconds >= 1")
        values.append(int(text))
    interval, grace = values
    if grace < 2 * interval:
        raise ConfigError(f"{GRACE_VAR}={grace} must be at least twice {HEARTBEAT_VAR}={interval}, "
                          f"or a live worker's trial could look abandoned")
    return interval, grace


def new_owner_token() -> str:
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    return f"{node}:{os.getpid()}:{secrets.token_hex(4)}"


@contextmanager
def claim_lock(rdb, study_name: str, wait: float = CLAIM_WAIT_SECONDS) -> Iterator[None]:
    """Serialises claiming among all workers of the study, through the database."""
    dialect = rdb.engine.dialect.name
    if dialect == "sqlite":
        path = rdb.engine.url.database + ".fmnist-claim.lock"
        with FileLock(path, timeout=wait, notify=lambda m: None):
            yield
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    if dialect == "postgresql":
        take = sqlalchemy.text("SELECT pg_try_advisory_lock(:k)").bindparams(k=key)
        give = sqlalchemy.text("SELECT pg_advisory_unlock(:k)").bindparams(k=key)
    elif dialect in ("mysql", "mariadb"):
        name = f"fmnist-mlp:{key:x}"[:64]
        take = sqlalchemy.text("SELECT GET_LOCK(:n, 0)").bindparams(n=name)
        give = sqlalchemy.text("SELECT RELEASE_LOCK(:n)").bindparams(n=name)
    else:
        raise ConfigError(f"{dialect}: no claim lock for this database")
    with rdb.engine.connect() as conn:
        deadline = time.monotonic() + wait
        while not conn.execute(take).scalar():
            conn.commit()
            if time.monotonic() > deadline:
                raise FmnistMlpError(f"waited {wait:g} s for the sweep's claim lock in the "
                                     f"database; another worker holds it and may be stuck")
            time.sleep(0.05)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(give)
            conn.commit()


def stale_trial_ids(rdb, study_id: int) -> set[int]:
    """RUNNING trials whose worker stopped beating more than ``grace`` seconds ago."""
    return set(rdb._get_stale_trial_ids(study_id))


def beating_trial_ids(rdb, study_id: int) -> set[int]:
    """Trials that have a heartbeat at all (a trial asked by a worker that died before its
    first beat has none)."""
    from optuna.storages._rdb import models

    with rdb.scoped_session() as session:
        rows = (session.query(models.TrialHeartbeatModel.trial_id)
                .join(models.TrialModel).filter(models.TrialModel.study_id == study_id).all())
    return {r[0] for r in rows}


def take(rdb, trial_id: int, owner: str) -> None:
    """Make ``owner`` the trial's owner, with a fresh beat (called under the claim lock)."""
    rdb.record_heartbeat(trial_id)
    rdb.set_trial_system_attr(trial_id, OWNER_KEY, owner)


def release(rdb, trial_id: int, owner: str) -> None:
    """A worker stopping in good order (Ctrl-C, SIGTERM, a time limit) gives its trial up at
    once, so another takes it over without waiting out the grace period."""
    try:
        if owner_of(rdb, trial_id) == owner:
            rdb.set_trial_system_attr(trial_id, OWNER_KEY, RELEASED)
    except Exception:       # the database away: the grace period frees it instead
        pass


def is_free(frozen, stale: set[int], beating: set[int]) -> bool:
    """A RUNNING trial nobody trains: released, gone stale, or never beaten (its worker died
    between asking it and its first beat)."""
    return (frozen.system_attrs.get(OWNER_KEY) == RELEASED or frozen._trial_id in stale
            or frozen._trial_id not in beating)


def owner_of(rdb, trial_id: int) -> str | None:
    return rdb.get_trial(trial_id).system_attrs.get(OWNER_KEY)


class Heartbeat:
    """A daemon thread beating for one trial while its owner is still ``owner``; ``lost`` is set
    (and the beating stops) once another worker has taken the trial over."""

    def __init__(self, rdb, trial_id: int, owner: str, interval: int):
        self.rdb, self.trial_id, self.owner, self.interval = rdb, trial_id, owner, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sweep-heartbeat")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def check(self) -> bool:
        """Still ours? (read from the database now)"""
        try:
            mine = owner_of(self.rdb, self.trial_id) == self.owner
        except Exception:       # the database away for a moment: the next beat decides
            return not self.lost.is_set()
        if not mine:
            self.lost.set()
        return mine

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.check():
                return
            try:
                self.rdb.record_heartbeat(self.trial_id)
            except Exception:   # a lost beat: the grace period covers a few of them
                pass
