"""An inter-process lock on a file, so that several processes sharing one cache take turns.

``fcntl.flock`` (Linux, macOS) is released by the kernel when the process dies, so a crashed
download never leaves a stale lock behind. The lock is per open file description: do not nest two
``FileLock`` on the same path in one process (the inner one would wait for ever).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Callable

from fmnist_mlp.errors import DataError, FmnistMlpError
from fmnist_mlp.io.printable import printable


class LockHeld(DataError):
    """The lock was still held by another process when the wait ended."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def _to_stderr(message: str) -> None:
    from fmnist_mlp.io.terminal import show

    show(message)


def _record_holder(fd: int) -> None:
    """Write "<pid> <host>" into the lock file, so that a waiting process can say whom it waits for."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError:
        pass        # a read-only cache: the lock still works, the waiter just names no pid


class FileLock:
    """Exclusive lock on ``path`` (created if missing), used as a context manager.

    ``timeout`` seconds (None = wait for ever, 0 = try once) bounds the wait; the holder may be
    downloading ~30 MB, so the default is generous. A wait that ends raises :class:`LockHeld`,
    naming the holder. ``opener`` returns a file descriptor of the lock file opened for writing
    (e.g. without following links inside a run directory); by default ``path`` is created.
    """

    def __init__(self, path: str | Path, timeout: float | None = 1800.0, poll_interval: float = 0.1,
                 notify: Callable[[str], None] | None = None, notify_every: float = 10.0,
                 opener: Callable[[], int] | None = None):
        self.path = Path(path)
        self.opener = opener
        self.timeout = timeout
        self.poll_interval = poll_interval
        # Waiting is said out loud (stderr by default): after 1 s, then every notify_every s.
        self.notify = notify if notify is not None else _to_stderr
        self.notify_every = notify_every
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            if self.opener is not None:
                fd = self.opener()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = self.open_lock_file(self.path)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot create the lock file: {exc.strerror or exc}") from None
        started = time.monotonic()
        deadline = None if self.timeout is None else started + self.timeout
        next_notice = started + min(1.0, self.notify_every)   # short waits stay quiet
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                _record_holder(fd)
                return
            except BlockingIOError:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    os.close(fd)
                    holder = self.holder()
                    raise LockHeld(f"{self.path}: still locked by {holder} after "
                                   f"{self.timeout:g} s", holder) from None
                if now >= next_notice:
                    self.notify(f"waiting for the lock {self.path}, held by "
                                f"{self.holder()} (waited {now - started:.0f} s"
                                + (f" of at most {self.timeout:g} s)" if self.timeout else ")"))
                    next_notice = now + self.notify_every
                time.sleep(self.poll_interval)

    @staticmethod
    def open_lock_file(path: str | Path) -> int:
        """The lock file opened for writing, created if missing, never through a link."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)

    def try_acquire(self) -> bool:
        """Take the lock if it is free now: True if taken, False if another process holds it."""
        timeout, self.timeout = self.timeout, 0
        try:
            self.acquire()
            return True
        except LockHeld:
            return False
        finally:
            self.timeout = timeout

    def holder(self) -> str:
        """Who holds the lock, as its holder recorded it: "process 123 on host-a"."""
        from fmnist_mlp.io.reader import read_regular

        try:     # a regular file, not through a link, a few bytes: never a wait on a FIFO
            text = read_regular(self.path, "lock file", 256).decode("utf-8", "replace")
            pid, _, host = text.strip().partition(" ")
        except (OSError, FmnistMlpError):
            pid, host = "", ""
        if not pid.isdigit():
            return "another fmnist-mlp process"
        return f"fmnist-mlp process {pid}" + (f" on {printable(host)}" if host else "")

    def holds_path(self) -> bool:
        """Whether the file this lock holds is still the one at its path: False once another
        process replaced the lock file to break a lock whose holder it was told is dead."""
        if self._fd is None:
            return False
        try:
            held, there = os.fstat(self._fd), os.lstat(self.path)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def is_held(path: str | Path) -> bool:
    """Whether a live process holds the lock at ``path``, asked read-only (nothing is created or
    written: a missing lock file was never held)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)   # a FIFO: no wait
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
