"""Shared by tests/test_hostile_round3*.py (issue 25): the CLI as a subprocess (also under an
address-space limit, or with a stdout that cannot take its output), safetensors files by hand,
and the module fixtures -- a tiny softmax run, a tiny sigmoid-output run, its safetensors export
and a photo-like PNG."""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require_or_skip

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO), "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
TINY = ["--set", "data.subset=300", "--set", "data.val_size=200", "--set", "model.hidden=[8]",
        "--set", "train.epochs=1", "--set", "train.batch_size=100"]
GiB = 1 << 30


def fmnist(*args, cwd=None, env=None, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(os.fspath, args)], cwd=cwd,
                          env=env or ENV, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def one_line(proc) -> str:
    """The single line on stderr (no traceback, no warnings)."""
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def need(module: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        require_or_skip(f"{module} is not installed (pip install -e '.[dev]')")


def limited(limit_bytes: int):
    """preexec_fn: the child may map at most ``limit_bytes`` of address space."""
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


# Runs the CLI from a small launcher process, under an address-space limit, and reports the
# CLI's own peak resident memory. A child forked from pytest itself carries pytest's resident
# pages into its ru_maxrss (Linux keeps the high-water mark across execve): late in a full run,
# with pytest at 460 MB, every CLI process "peaked" there, hiding the tens of MB these tests are
# about.
_LAUNCHER = """
import json, os, resource, sys
report, limit, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(sys.executable, [sys.executable, "-m", "fmnist_mlp", *argv])
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024], f)
"""


def peak_rss(argv, limit_bytes: int, timeout=120) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak resident bytes of the CLI process alone) under an
    address-space limit."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        try:
            proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(report),
                                   str(limit_bytes), *map(os.fspath, argv)], env=ENV,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{argv} did not finish within {timeout} s")
        code, peak = json.loads(report.read_text())
    return code, proc.stdout, proc.stderr, peak


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(real_data_dir, tmp_path_factory):
    """A tiny finished softmax run, a tiny sigmoid-output run, and the first one as safetensors."""
    work = tmp_path_factory.mktemp("round3")
    made = {}
    for name, extra in (("soft", []), ("sig", ["--set", "model.output=sigmoid",
                                               "--set", "loss.name=squared_error"])):
        proc = fmnist("train", *TINY, *extra, "--name", name, "--data-dir", real_data_dir,
                      "--runs-dir", work / "runs", "-q")
        assert proc.returncode == 0, proc.stderr
        made[name] = Path(proc.stdout.strip().splitlines()[-1])
    need("safetensors")
    exported = work / "soft.safetensors"
    proc = fmnist("export", made["soft"], "--format", "safetensors", "-o", exported)
    assert proc.returncode == 0, proc.stderr
    return {"root": work, "run": made["soft"], "sigmoid": made["sig"], "st": exported,
            "data": real_data_dir}


@pytest.fixture(scope="module")
def shirt(work) -> Path:
    """An ordinary photo-like PNG: a dark object on a light table."""
    need("PIL")
    from PIL import Image

    photo = np.full((60, 50), 235, np.uint8)
    photo[10:50, 10:40] = 30
    path = work["root"] / "shirt.png"
    Image.fromarray(photo).save(path)
    return path


# ------------------------------------------------------------------------- safetensors, by hand


def st_parts(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed) and its data section."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_write(path: Path, header: dict, body: bytes = b"", total_data: int | None = None) -> Path:
    """Write a safetensors file: 8-byte little-endian header length, JSON header (padded with
    spaces to a multiple of 8), data. ``total_data``: extend the data section sparsely."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + body)
        if total_data is not None:
            f.truncate(8 + len(raw) + total_data)
    return path


def with_meta(header: dict, key: str, value) -> dict:
    header = json.loads(json.dumps(header))
    header["__metadata__"][key] = json.dumps(value)
    return header


def model_spec(header: dict) -> dict:
    return json.loads(header["__metadata__"]["model_spec"])


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: a child writing to it blocks until it is read."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    for size in (65536, 4096, 1):
        try:
            while True:
                os.write(write_end, b"x" * size)
        except BlockingIOError:
            pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def sigterm_when(argv, ready, timeout=120) -> subprocess.CompletedProcess:
    """Run the CLI with a stdout that cannot take its output, so it cannot finish; once
    ``ready()`` holds (the command has done its work), send SIGTERM and collect what it said."""
    read_end, write_end = _full_pipe()
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", *map(os.fspath, argv)], env=ENV,
                            stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the command never got ready"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        with os.fdopen(read_end, "rb") as pipe:       # drain: the command may flush on its way out
            pipe.read()
        proc.wait(timeout=60)
        return subprocess.CompletedProcess(argv, proc.returncode, "", proc.stderr.read())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


