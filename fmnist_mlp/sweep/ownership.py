"""Who trains which trial when the study is in a database: decided in the database alone.

- Claiming (a new trial, or taking over a dead worker's) happens under a lock held *in the
  database*: PostgreSQL's transaction advisory lock, MySQL's ``GET_LOCK`` (both dropped by the
  server when the holder's connection dies), or, for SQLite, whose file is only as shared as its locks
  anyway, a flock beside the database file. Nothing in DIR is locked.
- A worker owns its trial while it beats: Optuna's trial heartbeat (``RDBStorage`` with
  ``heartbeat_interval``), recorded by a thread every ``interval`` seconds, timed by the database's
  clock. A RUNNING trial whose last beat is older than ``grace`` seconds belongs to a dead worker
  and is taken over: the same trial (same number, same budget place), resumed from its run's last
  checkpoint. The taker writes itself as the trial's owner; a worker that was only stopped
  (Ctrl-Z past the grace) sees another owner at its next beat and gives the trial up before its
  next epoch, training nothing twice.

- A worker judges silence only while it hears the database: after the database was away for
  everyone, owners get a whole grace period to beat again before their trials are taken.
- A trial taken over more than ``FMNIST_MLP_SWEEP_MAX_TAKEOVERS`` times (default 3: every
  worker that trains it dies, out of memory say) is told FAIL, its reason in the trial's user
  attribute ``fail_reason``, as Optuna's ``RetryFailedTrialCallback(max_retry=3)`` would stop
  retrying it. A trial released in good order (Ctrl-C, SIGTERM, requeue, the database away) is
  taken without counting.

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
from fmnist_mlp.sweep import optuna_private as private
from fmnist_mlp.sweep import weather

OWNER_KEY = "fmnist_mlp:owner"
TAKEOVERS_KEY = "fmnist_mlp:takeovers"
RELEASED = ""               # the owner written by a worker that stopped in good order
HEARTBEAT_VAR, GRACE_VAR = "FMNIST_MLP_SWEEP_HEARTBEAT", "FMNIST_MLP_SWEEP_GRACE"
MAX_TAKEOVERS_VAR = "FMNIST_MLP_SWEEP_MAX_TAKEOVERS"
DEFAULT_HEARTBEAT, DEFAULT_GRACE, DEFAULT_MAX_TAKEOVERS = 10, 40, 3
CLAIM_WAIT_SECONDS = 600.0


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds, from the environment; grace must exceed two beats."""
    interval = weather.env_whole(HEARTBEAT_VAR, DEFAULT_HEARTBEAT)
    grace = weather.env_whole(GRACE_VAR, DEFAULT_GRACE)
    if grace < 2 * interval:
        raise ConfigError(f"{GRACE_VAR}={grace} must be at least twice {HEARTBEAT_VAR}={interval}, "
                          f"or a live worker's trial could look abandoned")
    return interval, grace


def max_takeovers() -> int:
    return weather.env_whole(MAX_TAKEOVERS_VAR, DEFAULT_MAX_TAKEOVERS, least=0, unit="takeovers")


def new_owner_token() -> str:
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    return f"{node}:{os.getpid()}:{secrets.token_hex(4)}"


@contextmanager
def claim_lock(rdb, study_name: str, wait: float = CLAIM_WAIT_SECONDS) -> Iterator[None]:
    """Serialises claiming among all workers of the study, through the database."""
    dialect = private.engine_of(rdb).dialect.name
    if dialect == "sqlite":
        path = private.engine_of(rdb).url.database + ".fmnist-claim.lock"
        with FileLock(path, timeout=wait, notify=lambda m: None):
            yield
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    if dialect == "postgresql":
        # Held by the transaction, kept open for the claim: a holder frozen mid-claim (SIGSTOP)
        # is cut off by idle_in_transaction_session_timeout, and its lock goes with it.
        take = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:k)").bindparams(k=key)
        give = None
    elif dialect in ("mysql", "mariadb"):
        name = f"fmnist-mlp:{key:x}"[:64]
        take = sqlalchemy.text("SELECT GET_LOCK(:n, 0)").bindparams(n=name)
        give = sqlalchemy.text("SELECT RELEASE_LOCK(:n)").bindparams(n=name)
    else:
        raise ConfigError(f"{dialect}: no claim lock for this database")
    with private.engine_of(rdb).connect() as conn:
        deadline = time.monotonic() + wait
        while not conn.execute(take).scalar():
            conn.rollback()
            if time.monotonic() > deadline:
                raise FmnistMlpError(f"waited {wait:g} s for the sweep's claim lock in the "
                                     f"database; another worker holds it and may be stuck")
            time.sleep(0.05)
        try:
            yield
        finally:
            try:
                if give is not None:
                    conn.execute(give)
                conn.rollback()         # ends the transaction: the PostgreSQL lock goes
            except Exception:           # noqa: BLE001 - a lost connection released it already
                pass


class Liveness:
    """The RUNNING trials' owners as the database tells them now (one read of each kind)."""

    def __init__(self, rdb, study_id: int):
        self.stale = private.stale_trial_ids(rdb, study_id)
        self.beating = private.beating_trial_ids(rdb, study_id)

    def released(self, frozen) -> bool:
        return frozen.system_attrs.get(OWNER_KEY) == RELEASED

    def dead(self, frozen) -> bool:
        """Its worker stopped beating past the grace, or died before its first beat."""
        tid = private.trial_id(frozen)
        return tid in self.stale or tid not in self.beating

    def is_free(self, frozen) -> bool:
        """A RUNNING trial nobody trains: released, or its worker dead."""
        return self.released(frozen) or self.dead(frozen)

    def is_running(self, frozen) -> bool:
        """A live, unreleased owner beats for it."""
        return not self.is_free(frozen)


def take(rdb, trial_id: int, owner: str, takeovers: int | None = None) -> None:
    """Make ``owner`` the trial's owner, then give it a fresh beat (under the claim lock: a
    claim cut short between the two leaves the trial free, not owned by nobody). ``takeovers``:
    a take-over of a dead worker's trial, its new count recorded first."""
    if takeovers is not None:
        rdb.set_trial_system_attr(trial_id, TAKEOVERS_KEY, takeovers)
    rdb.set_trial_system_attr(trial_id, OWNER_KEY, owner)
    rdb.record_heartbeat(trial_id)


def takeovers_of(frozen) -> int:
    count = frozen.system_attrs.get(TAKEOVERS_KEY, 0)
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def release(rdb, trial_id: int, owner: str) -> None:
    """A worker stopping in good order (Ctrl-C, SIGTERM, a time limit, the database away) gives
    its trial up at once, so another takes it over without waiting out the grace period. One
    try, short: a database away frees the trial by the grace period instead."""
    def give_up() -> None:
        if owner_of(rdb, trial_id) == owner:
            rdb.set_trial_system_attr(trial_id, OWNER_KEY, RELEASED)

    try:
        with rdb.watchdog.limit(weather.settings()[1]):
            give_up()
    except Exception:           # noqa: BLE001 - the database away: the grace period frees it
        pass


def owned_by(rdb, study, owner: str) -> list[int]:
    """Ids of the study's RUNNING trials recorded as ``owner``'s (one short try: [] if the
    database is away)."""
    try:
        with rdb.watchdog.limit(weather.settings()[1]):
            trials = study.get_trials(deepcopy=False)
    except Exception:           # noqa: BLE001 - the database away: the grace period frees them
        return []
    return [private.trial_id(t) for t in trials
            if t.state.name == "RUNNING" and t.system_attrs.get(OWNER_KEY) == owner]


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
        """Still ours? (read from the database now, within the per-call limit)"""
        if self.lost.is_set():
            return False
        try:
            with self.rdb.watchdog.limit(weather.settings()[1]):
                mine = owner_of(self.rdb, self.trial_id) == self.owner
        except Exception:       # noqa: BLE001 - the database away: the next beat decides
            return True
        if not mine:
            self.lost.set()
        return mine

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.check():
                return
            try:
                with self.rdb.watchdog.limit(weather.settings()[1]):
                    self.rdb.record_heartbeat(self.trial_id)
            except Exception:   # noqa: BLE001 - a lost beat: the grace covers a few of them
                pass
