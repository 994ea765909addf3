"""A database that goes away is weather, not a verdict: every call a worker makes is retried.

Each database call of a worker (claim, beat, report, prune check, tell, status) runs through
:func:`call`: an error of the connection (the server stopped, restarted or unreachable) is
retried with a growing pause for ``FMNIST_MLP_SWEEP_DB_RETRY`` seconds (default 300), and only
then becomes :class:`StorageAway`: the worker saves its trial's checkpoint, releases what it can
and exits ``EXIT_STORAGE_AWAY`` (75, EX_TEMPFAIL; Slurm tasks requeue themselves). A run is never
marked failed, and a trial never told FAIL, because the storage was away.

A partition is noticed, not waited out: each attempt has ``FMNIST_MLP_SWEEP_DB_TIMEOUT`` seconds
(default 30). The server enforces it as ``statement_timeout`` and TCP keepalives find a dead
peer (storage.py); a peer that still acknowledges but never answers (a stalled proxy, a hung
middlebox) is cut by :class:`Watchdog`, which shuts the socket of the connections the stuck
thread holds, so its call fails and is retried on a new connection.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable, TypeVar

from fmnist_mlp.errors import ConfigError, TrainingInterrupted

RETRY_VAR, TIMEOUT_VAR = "FMNIST_MLP_SWEEP_DB_RETRY", "FMNIST_MLP_SWEEP_DB_TIMEOUT"
DEFAULT_RETRY, DEFAULT_TIMEOUT = 300, 30
EXIT_STORAGE_AWAY = 75          # sysexits' EX_TEMPFAIL: try again later (RequeueExit=75)
FIRST_PAUSE, LONGEST_PAUSE = 0.5, 15.0

T = TypeVar("T")
_last_trouble = [float("-inf")]     # monotonic time this process last saw the database away


class StorageAway(TrainingInterrupted):
    """The database stayed unreachable for the whole retry window. A ``TrainingInterrupted``:
    the run is saved and marked interrupted (never failed), the trial left to be resumed."""

    exit_code = EXIT_STORAGE_AWAY


def env_whole(var: str, default: int, least: int = 1, unit: str = "seconds") -> int:
    """A whole number from the environment (``default`` when unset); one line when malformed."""
    text = os.environ.get(var, str(default))
    if not text.isdigit() or int(text) < least:
        raise ConfigError(f"{var}={text!r}: expected whole {unit} >= {least}")
    return int(text)


def settings() -> tuple[int, int]:
    """(retry window, per-call timeout) in whole seconds, from the environment."""
    return env_whole(RETRY_VAR, DEFAULT_RETRY), env_whole(TIMEOUT_VAR, DEFAULT_TIMEOUT)


# Refusals that waiting does not change: a wrong password or role (SQLSTATE class 28), a missing
# database (3D000), a password not given at all.
_NOT_WEATHER = ("28", "3D")
_NOT_WEATHER_TEXT = ("no password supplied", "password authentication failed")


def is_storage_error(exc: BaseException) -> bool:
    """An error of the connection, not of the request: worth trying again. Optuna wraps the
    driver's errors in ``StorageInternalError``; the cause tells."""
    try:
        import sqlalchemy.exc as sa
    except ImportError:
        return False
    if _refused(exc):
        return False
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError,
                            sa.TimeoutError)):
            return True
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        if type(exc).__name__ in ("OperationalError", "InterfaceError") and \
                type(exc).__module__.startswith(("psycopg", "pymysql", "MySQLdb", "sqlite3")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _refused(exc: BaseException | None) -> bool:
    for _ in range(5):
        if exc is None:
            return False
        state = getattr(getattr(exc, "orig", None) or exc, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_NOT_WEATHER):
            return True
        if any(text in str(exc) for text in _NOT_WEATHER_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def quiet_for() -> float:
    """Seconds since this process last saw the database away (infinite if never): a worker
    judges another's silence only after hearing the database for a whole grace period."""
    return time.monotonic() - _last_trouble[0]


def call(fn: Callable[[], T], what: str, where: str = "the database",
         log: Callable[[str], None] | None = None, watchdog: "Watchdog | None" = None) -> T:
    """``fn()``, retried on storage errors with a growing pause until the retry window ends;
    then :class:`StorageAway` naming ``what`` and ``where``. Other errors pass at once."""
    window, timeout = settings()
    deadline = time.monotonic() + window
    pause, said = FIRST_PAUSE, False
    while True:
        try:
            if watchdog is None:
                return fn()
            with watchdog.limit(timeout):
                return fn()
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            _last_trouble[0] = time.monotonic()
            if time.monotonic() + pause > deadline:
                raise StorageAway(f"{what}: {where} unreachable for {window} s "
                                  f"({first_line(exc)})") from None
            if log is not None and not said:
                log(f"{what}: {where} unreachable ({first_line(exc)}); retrying for up to "
                    f"{window} s")
                said = True
        time.sleep(pause)
        pause = min(LONGEST_PAUSE, pause * 2)


def to_stderr(message: str) -> None:
    """The retry notice of a command that has no log of its own (status, report, --wait)."""
    from fmnist_mlp.io.terminal import show

    show(message)


def first_line(exc: BaseException) -> str:
    from fmnist_mlp.io.printable import printable

    inner = getattr(exc, "orig", None) or exc.__cause__ or exc
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return printable(lines[0] if lines else type(inner).__name__)[:160]


class Watchdog:
    """Cuts a thread's database call that outlives its time limit.

    The engine's pool reports which connection each thread checks out; a call running under
    :meth:`limit` past its seconds has the sockets of its thread's connections shut down. The
    blocked read then fails at once as a lost connection (which SQLAlchemy discards), and
    :func:`call` tries again on a fresh one."""

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        self._held: dict[int, set[Any]] = {}
        self._deadlines: dict[int, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    def _checkout(self, dbapi_conn, record, proxy) -> None:
        with self._lock:
            self._held.setdefault(threading.get_ident(), set()).add(dbapi_conn)

    def _checkin(self, dbapi_conn, record) -> None:
        with self._lock:
            for conns in self._held.values():
                conns.discard(dbapi_conn)

    def limit(self, seconds: float) -> "_Limit":
        return _Limit(self, seconds)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="sweep-db-watchdog")
            self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                late = [tid for tid, end in self._deadlines.items() if now > end]
                conns = [c for tid in late for c in self._held.get(tid, ())]
                for tid in late:
                    del self._deadlines[tid]
            for conn in conns:
                _shut(conn)


class _Limit:
    def __init__(self, dog: Watchdog, seconds: float):
        self.dog, self.seconds = dog, seconds

    def __enter__(self) -> None:
        with self.dog._lock:
            self.dog._deadlines[threading.get_ident()] = time.monotonic() + self.seconds
        self.dog._start()

    def __exit__(self, *exc) -> None:
        with self.dog._lock:
            self.dog._deadlines.pop(threading.get_ident(), None)


def _shut(dbapi_conn) -> None:
    """Shut down (not close: the driver still owns the descriptor) a connection's socket."""
    fileno = getattr(dbapi_conn, "fileno", None)
    try:
        fd = fileno() if callable(fileno) else None
        if fd is None or fd < 0:
            return
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:           # noqa: BLE001 - the driver already knows the connection lost
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
