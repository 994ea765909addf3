"""Shared by the serve tests: a small trained run, test images as PNG files with predict's own
answers for them, and ``fmnist-mlp serve`` started as a subprocess on a free port."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
# One BLAS thread per process: the tests share a small machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("FMNIST_MLP_SERVE_TOKEN", None)
NUM_PNG = 24
TOKEN = "a-test-token-of-enough-characters"


def fmnist(*args, cwd, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd,
                          env=env or ENV, capture_output=True, text=True, timeout=timeout)


def make_work(real_data_dir: Path, work: Path) -> dict:
    """A small finished run (batch norm and test-time flips, so /invocations must apply both as
    eval does), NUM_PNG test images as PNG files, and predict's --json answers for them."""
    from PIL import Image

    from fmnist_mlp.data import load_raw

    proc = fmnist("train", "--config", ROOT / "configs/fast.yaml", "--set", "data.subset=2000",
                  "--set", "data.val_size=500", "--set", "train.epochs=2",
                  "--set", "model.hidden=[64]", "--set", "data.augment.test_flip=true",
                  "--name", "served", "--data-dir", real_data_dir, "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    run = work / json.loads(proc.stdout)["run_dir"]
    raw = load_raw(real_data_dir, progress=False)
    pngs = work / "pngs"
    pngs.mkdir()
    for i in range(NUM_PNG):
        Image.fromarray(raw.test_images[i]).save(pngs / f"test-{i:02d}.png")
    proc = fmnist("predict", run, pngs, "--json", "--top", "3", cwd=work)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["predictions"]
    return {"root": work, "run": run, "pngs": sorted(pngs.iterdir()),
            "pixels": raw.test_images[:NUM_PNG].reshape(NUM_PNG, -1).astype(np.int64),
            "labels": raw.test_labels[:NUM_PNG],
            "predict": np.array([r["probabilities"] for r in rows]),
            "predict_labels": [r["label"] for r in rows]}


@pytest.fixture(scope="session")
def serve_work(real_data_dir, tmp_path_factory) -> dict:
    """One small run and its test PNGs for every serve test module (imported by each)."""
    need("uvicorn", "PIL", "requests")
    return make_work(real_data_dir, tmp_path_factory.mktemp("serve"))


class Served:
    """``fmnist-mlp serve ARGS --port 0`` in a subprocess; ``url`` once it answers."""

    def __init__(self, *args, cwd, env=None):
        # stderr (the access log) into a file: a pipe nobody reads until the end fills and
        # would stop the server mid-write
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "serve", *map(str, args),
                                      "--port", "0"], cwd=cwd, env=env or ENV, text=True,
                                     stdout=subprocess.PIPE, stderr=self.log)
        self.url = self._read_url(timeout=60)
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.stderr = ""

    def _read_url(self, timeout: float) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.proc.kill()
                raise AssertionError(f"serve printed no URL in {timeout} s")
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not start: {self._stderr()}")
        return line

    def _stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (its stderr in ``self.stderr``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("serve did not stop within the time allowed after SIGTERM")
        finally:
            self.stderr = self._stderr()
            self.log.close()
        return self.proc.returncode

    def raw(self) -> socket.socket:
        """A plain TCP connection to the server, for requests written byte by byte."""
        sock = socket.create_connection((self.host, self.port), timeout=30)
        return sock


def read_response(sock: socket.socket, timeout: float = 30) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP/1.1 response read off a raw socket (until the body's
    Content-Length or the close)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    while len(body) < length and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def wait_in_flight(server: Served, n: int, seconds: float = 30) -> None:
    """Until /metrics counts ``n`` scoring requests in flight (their heads parsed), so a test acts
    on a request the server holds, not on one still in the kernel's buffers."""
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = requests.get(server.url + "/metrics", timeout=10).text
        if f"fmnist_mlp_requests_in_flight {n}\n" in text:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server never held {n} request(s) in flight")
