"""Where a sweep's study lives: the ``--storage`` URL checked (and its server reached) before
anything is created, and the storage objects for workers and for read-only readers.

Kinds, and what coordinates the workers with each (see docs/many-machines.md):

- ``journal``: Optuna's journal file, DIR/study.journal by default (or a path given as
  ``--storage``). One machine: trials are claimed and held with ``flock`` in DIR (study.py).
- ``database``: ``postgresql://``, ``mysql://`` (with a driver installed), ``sqlite:///``. The
  database is the only coordinator: a claim lock in the database, a heartbeat per trial
  (ownership.py). DIR needs ordinary reads and writes only.
- ``grpc``: Optuna's gRPC storage proxy (``grpc://host:port``) and ``redis``: Optuna's Redis
  journal: recognised and refused in one line, since they offer neither a lock nor trial
  heartbeats to claim trials by; workers are pointed at the database itself.

Every problem is one :class:`ConfigError` line naming the URL (its password hidden), the host
and port, or the file.

A password is never written down: it is taken out of the URL as soon as the URL is read, so
sweep.json, DIR/slurm/worker.sbatch, logs and the workers' command lines hold the URL without
it. Workers get it from the environment (``FMNIST_MLP_SWEEP_DB_PASSWORD``, set for the workers a
sweep starts; or PostgreSQL's own ``PGPASSWORD`` and ``~/.pgpass``, which need nothing from us).
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.io.paths import expand_user
from fmnist_mlp.io.lock import FileLock
from fmnist_mlp.io.terminal import show
from fmnist_mlp.io.printable import printable

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "grpc": 13000}
DRIVER_HINTS = {"postgresql": "pip install -e '.[sweep]' (installs psycopg)",
                "mysql": "pip install mysqlclient, or PyMySQL with a mysql+pymysql:// URL"}
CONNECT_TIMEOUT = 5         # seconds: a server that does not answer is one line, not a hang
JOURNAL_LOCK_WAIT = 600.0   # a journal append takes milliseconds; this long means a stuck holder
MAX_JOURNAL_LINE = 1 << 20
PASSWORD_VAR = "FMNIST_MLP_SWEEP_DB_PASSWORD"
# TCP keepalives: a peer gone silent (a dead node, a dropped route) is noticed within
# idle + interval * count = 10 + 5 * 3 = 25 s of silence, instead of the kernel's two hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}


@dataclass(frozen=True)
class StorageRef:
    url: str | None         # as recorded in sweep.json (None: DIR/study.journal)
    kind: str               # journal | database | grpc | redis
    shown: str              # for messages: the URL with its password hidden, or the file
    password: str | None = field(default=None, repr=False)  # taken out of the URL; memory only

    @property
    def is_database(self) -> bool:
        return self.kind == "database"

    def connect_url(self) -> str:
        """The URL to connect with: the password put back (from the URL it came in, else
        ``FMNIST_MLP_SWEEP_DB_PASSWORD``); without one, the driver's own ways apply
        (PGPASSWORD, ~/.pgpass). Kept in memory, never written."""
        password = self.password or os.environ.get(PASSWORD_VAR)
        if not password or self.kind != "database" or self.url.startswith("sqlite"):
            return self.url
        import sqlalchemy

        return sqlalchemy.engine.make_url(self.url).set(password=password).render_as_string(
            hide_password=False)


def parse_storage(url: str | None) -> StorageRef:
    """Classify ``--storage``; a malformed URL or a missing driver is one line."""
    if url is None:
        return StorageRef(None, "journal", "DIR/study.journal")
    if not isinstance(url, str) or not url.strip() or any(ord(c) < 32 for c in url):
        raise ConfigError(f"--storage {printable(repr(url))}: expected a URL or a journal file path")
    if "://" not in url:
        path = expand_user(url, "--storage", ConfigError).absolute()
        return StorageRef(str(path), "journal", str(path))
    scheme = url.split("://", 1)[0].lower()
    if scheme == "grpc":
        host, port = _host_port(url, "grpc")
        return StorageRef(url, "grpc", f"grpc://{host}:{port}")
    if scheme in ("redis", "rediss"):
        return StorageRef(url, "redis", printable(_hide_password(url)))
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"--storage {printable(_hide_password(url))}: not a storage URL "
                          f"({printable(exc)})") from None
    backend = parsed.get_backend_name()
    shown = parsed.render_as_string(hide_password=True)
    password = parsed.password
    if password is not None:        # from here on the URL is kept, and passed, without it
        parsed = parsed._replace(password=None)     # (set() keeps a None field as it was)
        url = parsed.render_as_string(hide_password=False)
    if backend not in ("postgresql", "mysql", "sqlite"):
        raise ConfigError(f"--storage {printable(shown)}: unknown kind {backend!r}; expected "
                          f"postgresql://, mysql://, sqlite:///, grpc://, redis:// or a journal "
                          f"file path")
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise ConfigError(f"--storage {printable(shown)}: an in-memory database is not shared "
                              f"by workers; name a file (sqlite:///path/study.db)")
        path = expand_user(database, "--storage", ConfigError).absolute()
        url = str(parsed.set(database=str(path)).render_as_string(hide_password=False))
        shown = f"sqlite:///{path}"
    elif not parsed.database:
        raise ConfigError(f"--storage {printable(shown)}: names no database "
                          f"({backend}://host/NAME); without one the server's maintenance "
                          f"database would hold the study")
    return StorageRef(url, "database", printable(shown), password or None)


def _hide_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if at and ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}://{auth}{at}{host}"


def _host_port(url: str, scheme: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ConfigError(f"--storage {printable(url)}: {printable(exc)}") from None
    if not host:
        raise ConfigError(f"--storage {printable(url)}: expected {scheme}://host:port")
    return host, port


def where_of(ref: StorageRef) -> str:
    """``host:port`` of a server (for messages), or the file."""
    if ref.kind == "database" and not ref.url.startswith("sqlite"):
        import sqlalchemy

        u = sqlalchemy.engine.make_url(ref.url)
        return f"{u.host or 'localhost'}:{u.port or DEFAULT_PORTS[u.get_backend_name()]}"
    return ref.shown


def check_reachable(ref: StorageRef) -> None:
    """Connect once (before DIR is created): a refused connection, a missing database or driver,
    a sqlite file whose folder is missing, each is one line naming host and port."""
    if ref.kind == "journal":
        if ref.url is not None and not Path(ref.url).parent.is_dir():
            raise ConfigError(f"--storage {ref.shown}: folder {Path(ref.url).parent} not found")
        return
    refuse_for_workers(ref)
    engine = _engine(ref)
    try:
        with engine.connect():
            pass
    except Exception as exc:    # the DBAPI's own error classes differ per driver
        raise _connect_error(ref, exc) from None
    finally:
        engine.dispose()


def _engine(ref: StorageRef):
    import sqlalchemy

    if ref.url.startswith("sqlite"):
        folder = Path(sqlalchemy.engine.make_url(ref.url).database).parent
        if not folder.is_dir():
            raise ConfigError(f"--storage {ref.shown}: folder {folder} not found")
    try:
        return sqlalchemy.create_engine(ref.connect_url(), **engine_kwargs(ref))
    except ImportError as exc:
        backend = ref.url.split(":", 1)[0].split("+")[0]
        raise ConfigError(f"--storage {ref.shown}: no database driver ({printable(exc)}); "
                          f"{DRIVER_HINTS.get(backend, 'install its driver')}") from None
    except Exception as exc:
        raise ConfigError(f"--storage {ref.shown}: {printable(exc)}") from None


def database_errors() -> tuple[type[BaseException], ...]:
    """SQLAlchemy's errors (a database gone mid-sweep), for one line instead of a traceback."""
    try:
        import sqlalchemy
    except ImportError:
        return ()
    return (sqlalchemy.exc.SQLAlchemyError,)


def engine_kwargs(ref: StorageRef) -> dict[str, Any]:
    """Connection settings: a server that does not answer is given up on, not waited for.

    PostgreSQL: ``statement_timeout`` (the per-call limit of weather.py) and
    ``idle_in_transaction_session_timeout`` (a worker frozen inside a transaction does not keep
    its row locks), TCP keepalives and ``tcp_user_timeout`` (data unacknowledged that long
    means the peer is gone). MySQL: read and write timeouts."""
    from fmnist_mlp.sweep.weather import settings

    if ref.url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    _, timeout = settings()
    args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    if ref.url.startswith("postgresql"):
        args.update(KEEPALIVES, tcp_user_timeout=timeout * 1000,
                    options=f"-c statement_timeout={timeout * 1000} "
                            f"-c idle_in_transaction_session_timeout={2 * timeout * 1000}")
    elif ref.url.startswith("mysql"):
        args.update(read_timeout=timeout, write_timeout=timeout)
    # No pool_pre_ping: its ping runs before the pool tells the watchdog which thread holds the
    # connection, so a ping into a partition could hang uncut. A connection the server dropped
    # fails its first call instead, which is retried on a fresh one (weather.py).
    return {"connect_args": args}


def _connect_error(ref: StorageRef, exc: Exception) -> ConfigError:
    cause = exc.__cause__ if exc.__cause__ is not None else exc    # Optuna wraps the driver's
    orig = getattr(cause, "orig", None) or cause
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(orig).__name__
    if ref.url.startswith("sqlite"):
        return ConfigError(f"--storage {ref.shown}: cannot open ({printable(reason)[:200]})")
    return ConfigError(f"--storage {ref.shown}: cannot connect to the database server at "
                       f"{where_of(ref)} ({printable(reason)[:200]})")


def refuse_for_workers(ref: StorageRef) -> None:
    """Workers need a claim lock and trial heartbeats: a journal file (one machine) or a
    database (many). Optuna's gRPC proxy and Redis journal have neither."""
    if ref.kind in ("grpc", "redis"):
        raise ConfigError(f"--storage {ref.shown}: sweep workers need the database itself "
                          f"(postgresql://, mysql://, sqlite:///) or a journal file: this "
                          f"storage offers no lock or heartbeat to claim trials by")


def make_storage(ref: StorageRef, directory: Path, *, read_only: bool,
                 heartbeat: tuple[int, int] | None = None, patient: bool = False):
    """The Optuna storage object. ``heartbeat``: (interval, grace) seconds, databases only;
    ``patient``: wait out a database that is away (an existing sweep)."""
    refuse_for_workers(ref)
    if ref.kind == "database":
        return _rdb(ref, read_only, heartbeat, patient)
    return _journal(journal_path(ref, directory), read_only)


def journal_path(ref: StorageRef, directory: Path) -> Path:
    return Path(ref.url) if ref.url else directory / "study.journal"


def _rdb(ref: StorageRef, read_only: bool, heartbeat, patient: bool):
    """``patient``: the sweep exists, so a server away is waited for (weather.py), not refused."""
    from fmnist_mlp.sweep import weather
    from optuna.storages import RDBStorage

    interval, grace = heartbeat or (None, None)

    def connect():
        for attempt in range(4):
            try:
                return RDBStorage(ref.connect_url(), engine_kwargs=engine_kwargs(ref),
                                  heartbeat_interval=interval, grace_period=grace,
                                  skip_table_creation=read_only)
            except (ImportError, RuntimeError):
                raise
            except Exception as exc:
                # Workers starting together on a fresh database all create Optuna's tables;
                # PostgreSQL lets one win and fails the others (a duplicate key): look again.
                if attempt == 3 or weather.is_storage_error(exc):
                    raise
                time.sleep(0.5 + attempt)

    try:
        if patient:
            rdb = weather.call(connect, "opening the study", where_of(ref), log=weather.to_stderr)
        else:
            rdb = connect()
        rdb.watchdog = weather.Watchdog(rdb.engine)
        return rdb
    except weather.StorageAway:
        raise
    except ImportError as exc:
        raise ConfigError(f"--storage {ref.shown}: no database driver ({printable(exc)})") from None
    except RuntimeError as exc:         # a schema of another Optuna version
        raise ConfigError(f"--storage {ref.shown}: {printable(exc).splitlines()[0]}") from None
    except Exception as exc:
        raise _connect_error(ref, exc) from None


# ---------------------------------------------------------------------------------------------
# The journal file: never through a link, a partial last line repaired, a flock for appends


def _journal(path: Path, read_only: bool):
    from optuna.storages import JournalStorage

    _refuse_link(path)
    if read_only:
        return JournalStorage(ReadOnlyJournal(path))
    from optuna.storages.journal import JournalFileBackend

    lock = _JournalLock(path.with_name(path.name + ".flock"))
    with lock.held():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        os.close(fd)
        cut = _repair(path)
        if cut:
            show(f"{path}: removed a partial last line ({cut} bytes: a writer was stopped "
                 f"mid-record; every whole record is kept)")
        for _ in ReadOnlyJournal(path).read_logs(0):     # damage elsewhere: one line, now
            pass
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def _refuse_link(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: is a symbolic link or not a regular file; refusing to use it "
                          f"as the study's journal")


class _JournalLock:
    """Optuna's journal-lock interface over the house lock (flock): a dead holder's lock is
    released by the kernel at once, where Optuna's own lock files wait out a 30 s grace."""

    def __init__(self, path: Path):
        self.lock = FileLock(path, timeout=JOURNAL_LOCK_WAIT, notify=lambda m: None)

    def acquire(self) -> bool:
        try:
            self.lock.acquire()
        except FmnistMlpError as exc:
            raise FmnistMlpError(f"journal lock: {exc}") from None
        return True

    def release(self) -> None:
        self.lock.release()

    def held(self):
        return self.lock


def _repair(path: Path) -> int:
    """Remove a partial last line (a full disk, a killed writer): it never was a record.
    Returns the bytes removed. Damage elsewhere is refused by the reader, not cut."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(max(0, size - MAX_JOURNAL_LINE))
        tail = f.read()
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else 0
        f.truncate(keep)
    return size - keep


def validate_record(record: Any, line: int, path: Path) -> dict:
    from fmnist_mlp.sweep.optuna_private import journal_op_codes

    if not isinstance(record, dict) or record.get("op_code") not in journal_op_codes():
        raise ConfigError(f"{path}: line {line}: not an Optuna journal record; the study's journal "
                          f"is damaged")
    return record


try:
    from optuna.storages.journal import BaseJournalBackend as _Backend
except ImportError:                 # optuna missing: import_optuna() says so first
    _Backend = object


class ReadOnlyJournal(_Backend):
    """Reads a journal without writing, locking or creating anything: for status and report on
    a sweep directory the reader may not write to. A partial last line is skipped."""

    def __init__(self, path: Path):
        self.path = path

    def read_logs(self, log_number_from: int):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            for number, line in enumerate(f):
                if not line.endswith(b"\n"):
                    return              # a partial last line: never a record
                if number < log_number_from:
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise ConfigError(f"{self.path}: line {number + 1}: not JSON; the study's "
                                      f"journal is damaged") from None
                yield validate_record(record, number + 1, self.path)

    def append_logs(self, logs) -> None:
        raise ConfigError(f"{self.path}: opened read-only (status and report write nothing)")
