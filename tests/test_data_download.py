"""Fetching into the cache through the real code path, against real HTTP servers on 127.0.0.1.

Each server route misbehaves in one way (404, 500, a connection cut half-way, wrong bytes, silence);
the files are small synthetic IDX files whose FileSpecs are passed in place of the real table.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fmnist_mlp.data import HttpOptions, default_data_dir, ensure_dataset, verify_file
from fmnist_mlp.io.lock import FileLock
from fmnist_mlp.data.synthetic import write_synthetic_dataset
from fmnist_mlp.errors import DataError

# Short timeouts and back-off keep every network test to a few seconds.
FAST = HttpOptions(connect_timeout=2.0, read_timeout=2.0, retries=1, backoff=0.05)


class MirrorServer:
    """An HTTP server whose first path segment picks a behaviour: /<mode>/<filename>."""

    def __init__(self, files: dict[str, bytes], wrong_files: dict[str, bytes]):
        self.files = files
        self.wrong_files = wrong_files
        self.requests = Counter()          # (mode, filename) -> count
        self.range_headers = []            # Range headers received, in order
        self.user_agents = set()
        self.release = threading.Event()   # lets a "silent" handler return at teardown
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/"

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                _, mode, name = self.path.split("/", 2)
                with server.lock:
                    server.requests[mode, name] += 1
                    first = server.requests[mode, name] == 1
                    server.user_agents.add(self.headers.get("User-Agent", ""))
                    if self.headers.get("Range"):
                        server.range_headers.append(self.headers["Range"])
                data = (server.wrong_files if mode == "wrong" else server.files).get(name)
                if mode == "404" or data is None:
                    return self.send_error(404)
                if mode == "500":
                    return self.send_error(500)
                if mode == "silent":
                    server.release.wait(30)
                    return None
                if mode in ("cut", "cut-norange", "wrongrange") and first:
                    return self._send(data, cut=True)
                if mode == "wrongrange" and self.headers.get("Range"):
                    self.send_response(206)  # answers a resume with the whole file, mislabelled
                    self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                self._send(data, honour_range=(mode != "cut-norange"), slow=(mode == "slow"))

            def _send(self, data, cut=False, honour_range=True, slow=False):
                start = 0
                requested = self.headers.get("Range", "")
                if honour_range and requested.startswith("bytes="):
                    start = int(requested[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:len(data) // 2] if cut else data[start:]
                for offset in range(0, len(body), 4096):
                    self.wfile.write(body[offset:offset + 4096])
                    if slow:
                        time.sleep(0.01)
                self.wfile.flush()  # on `cut`, the handler returns and the socket closes early

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def dataset(tmp_path):
    """Synthetic files: (specs, folder with the good .gz files, folder with different ones)."""
    specs = write_synthetic_dataset(tmp_path / "good", n_train=300, n_test=60, seed=1)
    write_synthetic_dataset(tmp_path / "wrong", n_train=300, n_test=60, seed=2)
    return specs, tmp_path / "good", tmp_path / "wrong"


@pytest.fixture
def server(dataset):
    specs, good, wrong = dataset
    files = {spec.filename: (good / spec.filename).read_bytes() for spec in specs}
    wrong_files = {spec.filename: (wrong / spec.filename).read_bytes() for spec in specs}
    with MirrorServer(files, wrong_files) as running:
        yield running


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _assert_valid_cache(cache, specs):
    for spec in specs:
        verify_file(cache / spec.filename, spec)
    leftovers = [p.name for p in cache.iterdir() if p.name.endswith((".part", ".tmp"))]
    assert leftovers == []


def _fetch(cache, specs, sources, **kwargs):
    return ensure_dataset(cache, sources, progress=False, specs=specs, http=FAST, **kwargs)


def test_next_mirror_after_404_and_500(dataset, server, cache):
    specs = dataset[0]
    assert _fetch(cache, specs, [server.url("404"), server.url("500"), server.url("good")]) == cache
    _assert_valid_cache(cache, specs)
    for spec in specs:
        assert server.requests["404", spec.filename] == 1          # a 404 is not retried
        assert server.requests["500", spec.filename] == 1 + FAST.retries
        assert server.requests["good", spec.filename] == 1


def test_cut_connection_is_resumed_with_range(dataset, server, cache):
    specs = dataset[0]
    _fetch(cache, specs, [server.url("cut")])
    _assert_valid_cache(cache, specs)
    sizes = {spec.filename: len(server.files[spec.filename]) for spec in specs}
    assert sorted(server.range_headers) == sorted(f"bytes={size // 2}-" for size in sizes.values())


def test_cut_connection_is_retried_when_range_is_ignored(dataset, server, cache):
    specs = dataset[0]
    _fetch(cache, specs, [server.url("cut-norange")])
    _assert_valid_cache(cache, specs)
    assert all(server.requests["cut-norange", spec.filename] == 2 for spec in specs)


def test_resume_answered_with_another_range_starts_again(dataset, server, cache):
    specs = dataset[0]
    patient = HttpOptions(connect_timeout=2.0, read_timeout=2.0, retries=2, backoff=0.01)
    ensure_dataset(cache, [server.url("wrongrange")], progress=False, specs=specs, http=patient)
    _assert_valid_cache(cache, specs)
    assert all(server.requests["wrongrange", spec.filename] == 3 for spec in specs)


def test_wrong_bytes_are_rejected_and_not_cached(dataset, server, cache):
    specs = dataset[0]
    with pytest.raises(DataError) as caught:
        _fetch(cache, specs, [server.url("wrong")])
    message = str(caught.value)
    for spec in specs:
        assert server.url("wrong") + spec.filename in message
        assert f"expected sha256 {spec.sha256}" in message
        assert not (cache / spec.filename).exists()
    assert "got sha256 " in message
    assert sorted(p.name for p in cache.iterdir()) == [".lock"]


def test_wrong_bytes_fall_through_to_the_next_mirror(dataset, server, cache):
    specs = dataset[0]
    _fetch(cache, specs, [server.url("wrong"), server.url("good")])
    _assert_valid_cache(cache, specs)


def test_silent_server_times_out_and_is_skipped_for_later_files(dataset, server, cache):
    specs = dataset[0]
    patient = HttpOptions(connect_timeout=1.0, read_timeout=0.3, retries=0, backoff=0.0)
    with pytest.raises(DataError) as caught:
        ensure_dataset(cache, [server.url("silent")], progress=False, specs=specs, http=patient)
    message = str(caught.value)
    assert "timed out" in message
    assert "skipped, unreachable" in message
    # One short try, one patient try once no other source was left; later files skip it.
    assert sum(server.requests.values()) == 2


def test_every_failure_is_listed_with_how_to_fix(dataset, server, cache, tmp_path):
    specs = dataset[0]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    closed.close()  # nothing listens there now: connection refused
    sources = [str(tmp_path / "no-such-folder"), server.url("404"), refused_url]
    with pytest.raises(DataError) as caught:
        _fetch(cache, specs, sources)
    message = str(caught.value)
    assert f"{tmp_path / 'no-such-folder'}: no such folder" in message
    assert "HTTP 404" in message
    assert refused_url in message and "connection failed" in message
    assert f"cache {cache}: no {specs[0].filename}" in message
    assert "--source" in message and "apt-get install dataset-fashion-mnist" in message
    assert sorted(p.name for p in cache.iterdir()) == [".lock"]


def test_cache_is_used_without_asking_any_source(dataset, server, cache):
    specs = dataset[0]
    _fetch(cache, specs, [server.url("good")])
    server.requests.clear()
    _fetch(cache, specs, [server.url("good")])
    _fetch(cache, specs, [])
    assert sum(server.requests.values()) == 0


def test_force_refetches_and_never_loses_the_cache(dataset, server, cache):
    specs = dataset[0]
    _fetch(cache, specs, [server.url("good")])
    with pytest.raises(DataError):
        _fetch(cache, specs, [server.url("404"), server.url("wrong")], force=True)
    _assert_valid_cache(cache, specs)
    _fetch(cache, specs, [server.url("good")], force=True)
    assert all(server.requests["good", spec.filename] == 2 for spec in specs)
    _assert_valid_cache(cache, specs)


def test_sends_a_user_agent_naming_the_tool(dataset, server, cache):
    _fetch(cache, dataset[0], [server.url("good")])
    assert all(agent.startswith("fmnist-mlp/") for agent in server.user_agents)


@pytest.mark.parametrize("compress", [True, False])
def test_folder_source(tmp_path, cache, compress):
    specs = write_synthetic_dataset(tmp_path / "folder", n_train=50, n_test=20, compress=compress)
    _fetch(cache, specs, [str(tmp_path / "folder")])
    _assert_valid_cache(cache, specs)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FMNIST_MLP_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "fmnist-mlp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "fmnist-mlp"
    monkeypatch.setenv("FMNIST_MLP_DATA_DIR", str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"


def test_lock_excludes_a_second_holder(tmp_path):
    with FileLock(tmp_path / "lock"):
        with pytest.raises(DataError, match="still locked"):
            FileLock(tmp_path / "lock", timeout=0.2, poll_interval=0.05).acquire()
    with FileLock(tmp_path / "lock", timeout=0.2):
        pass  # released: free again


_WORKER = """
import json, sys
from fmnist_mlp.data import FileSpec, HttpOptions, ensure_dataset
specs = [FileSpec(**s) for s in json.loads(sys.argv[1])]
ensure_dataset(sys.argv[2], [sys.argv[3]], progress=False, specs=specs,
               http=HttpOptions(connect_timeout=5, read_timeout=5, retries=1, backoff=0.05))
"""


def test_concurrent_processes_end_with_one_valid_cache(dataset, server, cache):
    specs = dataset[0]
    spec_json = json.dumps([spec.__dict__ for spec in specs])
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, spec_json, str(cache), server.url("slow")],
                         stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr
    _assert_valid_cache(cache, specs)
    # The lock makes the others wait and then find the cache full: each file travelled once.
    assert all(server.requests["slow", spec.filename] == 1 for spec in specs)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_goes_to_stderr_only_when_asked(dataset, server, cache, capsys, progress):
    specs = dataset[0]
    ensure_dataset(cache, [server.url("good")], progress=progress, specs=specs, http=FAST)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (specs[0].filename in captured.err) is progress


def test_unsupported_url_scheme_is_named(dataset, cache):
    with pytest.raises(DataError, match="ftp://example.invalid/: unsupported source"):
        _fetch(cache, dataset[0], ["ftp://example.invalid/"])
