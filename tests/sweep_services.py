"""Real services for the sweep tests: a private PostgreSQL server and a private Slurm cluster
(one node or two on this host), each started in a temporary folder and stopped by pid.

Both need root (PostgreSQL runs as the unprivileged user ``postgres``; slurmd runs as root);
where something is missing the tests are skipped with the reason, except under CI=true, where
.ci/run installs it (conftest.require_or_skip)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conftest import require_or_skip
from sweep_helpers import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


@dataclass
class Postgres:
    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def createdb(self, name: str) -> str:
        """A fresh database (one per test: no test sees another's studies); its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def halt(self) -> None:
        """Stop the server (fast shutdown: every connection cut), keeping its data."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """Start a halted server again, on the same port."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def psql(self, database: str, sql: str) -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql).stdout

    def stop(self) -> None:
        if self.pid() is not None:
            # immediate: a throwaway server, removed next; no shutdown checkpoint to wait for
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / tool), *args],
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {proc.stderr.strip()[-400:]}")
        return proc


def start_postgres() -> Postgres:
    """initdb (trust, local only) into a fresh folder owned by postgres, then pg_ctl start on a
    free port of 127.0.0.1 with its socket in that folder."""
    bindir = postgres_bin()
    if bindir is None:
        require_or_skip("PostgreSQL is not installed (apt-get install postgresql)")
    if os.geteuid() != 0:
        require_or_skip("starting a private PostgreSQL server needs root (to run it as postgres)")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        require_or_skip("no user postgres (apt-get install postgresql creates it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require_or_skip("psycopg is not installed (pip install -e '.[sweep]')")
    root = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    os.chmod(root, 0o755)
    os.chown(root, user.pw_uid, user.pw_gid)
    pg = Postgres(bindir, root, free_port())
    try:
        pg._run("initdb", "-A", "trust", "-U", "postgres", "-D", str(pg.data))
        pg._run("pg_ctl", "-D", str(pg.data), "-l", str(root / "server.log"), "-w", "-o",
                f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1", "start")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pg.stop()
        require_or_skip(f"could not start PostgreSQL: {exc}")
    return pg


def start_slurm(state: Path, two_nodes: bool) -> Path:
    """A private Slurm cluster (scripts/slurm-cluster.sh); returns its SLURM_CONF."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        require_or_skip("optuna is not installed (pip install -e '.[sweep]')")
    if os.geteuid() != 0:
        require_or_skip("starting a private Slurm cluster needs root")
    missing = [t for t in ("sbatch", "squeue", "scontrol", "slurmctld", "slurmd", "munged")
               if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]
    if missing:
        require_or_skip(f"Slurm is not installed (missing {', '.join(missing)}; "
                        f"apt-get install slurmctld slurmd slurm-client munge)")
    script = REPO / "scripts" / "slurm-cluster.sh"
    env = dict(os.environ, SLURMCTLD_PORT=str(free_port()), SLURMD_PORT=str(free_port()),
               SLURMD_PORT_B=str(free_port()))
    proc = subprocess.run(["bash", str(script), "start-two" if two_nodes else "start", str(state)],
                          capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        stop_slurm(state)
        require_or_skip(f"could not start a Slurm cluster: {proc.stderr.strip()[-300:]}")
    return state / "slurm.conf"


def stop_slurm(state: Path) -> None:
    subprocess.run(["bash", str(REPO / "scripts" / "slurm-cluster.sh"), "stop", str(state)],
                   capture_output=True, timeout=60)


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in a thread of the test, to ``port``: while ``stalled`` it
    forwards nothing either way and answers no new connection (it still accepts them, as a
    middlebox that swallows packets would look to the client's kernel): a network partition
    that TCP alone does not report. ``resume()`` forwards again."""

    def __init__(self, port: int):
        import threading

        self.target = port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed.set()
        self.flowing.set()
        self.listener.close()

    def _accept(self) -> None:
        import threading

        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()

    def _serve(self, client: socket.socket) -> None:
        import selectors

        self.flowing.wait()
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self.closed.is_set():
                self.flowing.wait()
                for key, _ in sel.select(timeout=0.2):
                    if not self.flowing.is_set():
                        break               # stalled mid-way: the bytes wait in the kernel
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            upstream.close()
