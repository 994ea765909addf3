"""An inter-process lock on a file, so that several processes sharing one cache take turns.

``fcntl.flock`` (Linux, macOS) is released by the kernel when the process dies, so a crashed
download never leaves a stale lock behind. The lock is per open file description: do not nest two
``FileLock`` on the same path in one process (the inner one would wait for ever).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from fmnist_mlp.errors import DataError


class FileLock:
    """Exclusive lock on ``path`` (created if missing), used as a context manager.

    ``timeout`` seconds (None = wait for ever) bounds the wait; the holder may be downloading
    ~30 MB, so the default is generous.
    """

    def __init__(self, path: str | Path, timeout: float | None = 1800.0, poll_interval: float = 0.1):
        self.path = Path(path)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot create the lock file: {exc.strerror or exc}") from None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise DataError(
                        f"{self.path}: still locked by another fmnist-mlp process after {self.timeout:g} s"
                    ) from None
                time.sleep(self.poll_interval)

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
