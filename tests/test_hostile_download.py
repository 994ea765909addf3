"""Time bounds of fetching (issue 13): a mirror that accepts connections and never sends a byte
costs one short attempt, not minutes; waiting for another process's cache lock says what it waits
for. Against a live silent socket on 127.0.0.1 and a real second process holding the lock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from fmnist_mlp.data import HttpOptions, ensure_dataset
from fmnist_mlp.io.lock import FileLock
from fmnist_mlp.data.synthetic import write_synthetic_dataset
from fmnist_mlp.errors import DataError


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers; counts the connections."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.accepted = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)        # kept open, never written to

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


# Patient settings like the defaults (retries with back-off), but short stalls for the test.
OPTIONS = HttpOptions(connect_timeout=2.0, read_timeout=2.0, retries=3, backoff=0.0,
                      stall_timeout=0.3, total_timeout=60.0)


def test_a_silent_mirror_costs_one_short_attempt_then_the_next_source_is_used(silent, tmp_path):
    folder = tmp_path / "mirror"
    specs = write_synthetic_dataset(folder, n_train=50, n_test=10)
    cache = tmp_path / "cache"
    assert ensure_dataset(cache, [silent.url, str(folder)], progress=False, specs=specs,
                          http=OPTIONS) == cache
    # One connection for the first file; the three others went straight to the folder.
    assert len(silent.accepted) == 1


def test_only_silent_sources_end_within_the_download_limit(silent, tmp_path):
    folder = tmp_path / "mirror"
    specs = write_synthetic_dataset(folder, n_train=50, n_test=10)
    limited = HttpOptions(connect_timeout=1.0, read_timeout=30.0, retries=5, backoff=0.0,
                          stall_timeout=0.3, total_timeout=2.0)
    with pytest.raises(DataError) as caught:
        ensure_dataset(tmp_path / "cache", [silent.url], progress=False, specs=specs, http=limited)
    message = str(caught.value)
    assert "no answer within 0.3 s" in message
    # 30 s read timeouts x 6 attempts x 4 files would be 12 minutes: the 2 s limit cut it short.
    assert len(silent.accepted) <= 3


def test_waiting_for_the_cache_lock_says_for_what(tmp_path):
    lock_path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fmnist_mlp.io.lock import FileLock\n"
         f"with FileLock({str(lock_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert holder.stdout.readline().strip() == "held"
        notices = []
        with pytest.raises(DataError) as caught:
            with FileLock(lock_path, timeout=1.6, poll_interval=0.05, notify=notices.append,
                          notify_every=0.25):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert len(notices) >= 2
    assert all(str(lock_path) in n and f"process {holder.pid}" in n for n in notices)
    assert f"process {holder.pid}" in str(caught.value)
