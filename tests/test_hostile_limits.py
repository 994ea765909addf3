"""Unbounded memory and wrong exit codes (issue 13): checkpoints checked from their headers,
models sized before they are allocated, and the exit-code table kept for odd cases."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.errors import CheckpointError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--set", "data.subset=300", "--set", "data.val_size=200", "--set", "model.hidden=[8]",
        "--set", "train.epochs=1", "--set", "train.batch_size=100"]


def fmnist(*args, cwd=None, env=None, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd,
                          env=env or ENV, capture_output=True, text=True, timeout=timeout, **kwargs)


def one_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ------------------------------------------------------------------------- checkpoints


def _checkpoint_bytes(hidden=(4,), spec_hidden=None) -> bytes:
    widths = [784, *hidden, 10]
    params = {}
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        params[f"layer{i}.W"] = np.zeros((a, b), np.float32)
        params[f"layer{i}.b"] = np.zeros(b, np.float32)
    spec = {"input_size": 784, "hidden": list(spec_hidden or hidden), "num_classes": 10,
            "dtype": "float32"}
    return runs.checkpoint_bytes(runs.Checkpoint(params, {"t": np.array(0)}, {}, {
        "model_spec": spec, "config": {}, "state": {}}))


def _with_member(data: bytes, name: str, payload: bytes, compress=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a") as zf:
        zf.writestr(zipfile.ZipInfo(name), payload, compress_type=compress)
    return buffer.getvalue()


def _replace_member(data: bytes, name: str, payload: bytes) -> bytes:
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, payload if info.filename == name else src.read(info))
    return out.getvalue()


def _npy_header(shape, descr="<f4") -> bytes:
    f = io.BytesIO()
    npy_format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return f.getvalue()


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        fn()
        caught = None
    except BaseException as exc:      # noqa: BLE001 - the test inspects it
        caught = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, caught


@pytest.mark.parametrize("make", [
    lambda: _replace_member(_checkpoint_bytes(), "param/layer0.W.npy",
                            _npy_header((10 ** 6, 10 ** 6)) + b"\0" * 64),      # 4 TB claimed
    lambda: _with_member(_checkpoint_bytes(), "param/layer9.W.npy", _npy_header((3, 3)) + b"\0" * 36),
    lambda: _with_member(_checkpoint_bytes(), "extra.npy", _npy_header((2,)) + b"\0" * 8),
    lambda: _with_member(_checkpoint_bytes(), "notes.txt", b"hello"),
    lambda: _with_member(_checkpoint_bytes(), "param/big.npy",
                         _npy_header((4000, 4000)) + b"\0" * 64_000_000, zipfile.ZIP_DEFLATED),
    lambda: _checkpoint_bytes(hidden=(4,), spec_hidden=(6000, 6000)),              # edited spec
    lambda: _replace_member(_checkpoint_bytes(), "param/layer0.b.npy",
                            _npy_header((4,), "<i8") + b"\0" * 32),                 # wrong dtype
], ids=["header-claims-4TB", "layer-not-in-spec", "unknown-member", "not-npy",
        "deflate-bomb", "spec-edited-huge", "wrong-dtype"])
def test_checkpoints_that_do_not_belong_are_refused_before_reading_data(tmp_path, make):
    from fmnist_mlp.rundir.trained import load_model

    path = tmp_path / "c.npz"
    path.write_bytes(make())
    peak, caught = _peak_bytes(lambda: load_model(path))
    assert isinstance(caught, CheckpointError), repr(caught)
    assert str(path) in str(caught)
    assert peak < 20_000_000            # bytes: nothing the size of the claims was allocated


def test_deeply_nested_checkpoint_metadata_is_one_line(tmp_path):
    path = tmp_path / "c.npz"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_bytes(_replace_member(_checkpoint_bytes(), "meta.npy",
                                     _npy_array_bytes(np.array(deep))))
    proc = fmnist("eval", path)
    assert proc.returncode == 1
    assert "c.npz" in one_line(proc)


def _npy_array_bytes(array) -> bytes:
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


# ------------------------------------------------------------------------- model size


@pytest.mark.parametrize("hidden, expected", [
    ("[100000,100000]", "GiB"), ("[4611686018427387904]", "memory"), ("[1.0e+23]", "model.hidden"),
])
def test_a_model_too_big_for_memory_is_refused_before_anything_is_created(tmp_path, hidden,
                                                                         expected):
    env = {**ENV, "FMNIST_MLP_DATA_DIR": str(tmp_path / "data")}
    proc = fmnist("train", "--set", f"model.hidden={hidden}", "--runs-dir", tmp_path / "runs",
                  env=env)
    assert proc.returncode == 2
    line = one_line(proc)
    assert expected in line
    if expected != "model.hidden":
        assert "available" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_gradcheck_of_a_model_too_big_is_refused():
    proc = fmnist("gradcheck", "--set", "model.hidden=[100000,100000]")
    assert proc.returncode == 2
    assert "GiB" in one_line(proc)


# ------------------------------------------------------------------------- exit codes


def test_a_subset_larger_than_the_training_set_exits_2_before_writing(tmp_path):
    env = {**ENV, "FMNIST_MLP_DATA_DIR": str(tmp_path / "data")}
    proc = fmnist("train", "--set", "data.subset=60000", "--runs-dir", tmp_path / "runs", env=env)
    assert proc.returncode == 2
    assert "data.subset" in one_line(proc)
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_gradcheck_with_a_nan_tolerance_fails():
    proc = fmnist("gradcheck", "--set", "model.hidden=[3]", "--samples", "1", "--tolerance", "nan")
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout


def test_empty_home_writes_nothing_under_the_current_folder(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ("FMNIST_MLP_DATA_DIR", "XDG_CACHE_HOME")}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = fmnist("train", "--set", "data.subset=100", "--runs-dir", tmp_path / "runs", cwd=cwd,
                  env={**env, "HOME": ""})
    assert proc.returncode == 2
    assert "HOME" in one_line(proc)
    assert list(cwd.iterdir()) == [] and not Path("/.cache/fmnist-mlp").exists()


def test_a_read_only_runs_dir_exits_2(tmp_path):
    runs_dir = tmp_path / "ro"
    runs_dir.mkdir()
    mounted = False
    if os.geteuid() == 0:        # root writes through permissions: use a read-only mount
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                           str(runs_dir)]).returncode:
            pytest.skip("cannot mount a read-only tmpfs here")
        mounted = True
    else:
        runs_dir.chmod(0o555)
    try:
        env = {**ENV, "FMNIST_MLP_DATA_DIR": str(tmp_path / "data")}
        proc = fmnist("train", "--set", "data.subset=100", "--runs-dir", runs_dir, env=env)
        assert proc.returncode == 2
        assert "--runs-dir" in one_line(proc)
        assert not (tmp_path / "data").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(runs_dir)])
        else:
            runs_dir.chmod(0o755)


def _closed_pipe():
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def test_stdout_closed_early_exits_141_quietly(tmp_path):
    run = tmp_path / "runs" / "20260101-000000-x-aaaaaa"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    (run / "summary.json").write_text(json.dumps({"status": "finished", "name": "x"}))
    write_end = _closed_pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "runs", "--runs-dir",
                               str(tmp_path / "runs")], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=ENV, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert proc.stderr == ""


# ------------------------------------------------------------------------- on a trained run


@pytest.fixture(scope="module")
def trained(real_data_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("limits")
    proc = fmnist("train", *TINY, "--data-dir", real_data_dir, "--runs-dir", work / "runs", "-q")
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def test_json_output_never_holds_nan_or_infinity():
    # Every --json printer goes through this: non-finite numbers (a diverged run's loss in its
    # summary) become null, never the NaN that strict JSON readers refuse.
    from fmnist_mlp.cli.common import json_dumps

    def refuse(constant):
        raise ValueError(f"invalid JSON constant {constant}")

    text = json_dumps({"loss": float("nan"), "curve": [1.0, float("inf"), (float("-inf"),)],
                       "nested": {"acc": 0.5}})
    assert json.loads(text, parse_constant=refuse) == {"loss": None, "curve": [1.0, None, [None]],
                                                       "nested": {"acc": 0.5}}


@pytest.mark.realdata
def test_finite_weights_whose_outputs_overflow_are_refused_not_scored(trained, real_data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "best.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    # Finite weights whose products overflow float32 would score a NaN loss: a damaged model.
    arrays["param/layer0.W"] = np.full_like(arrays["param/layer0.W"], 3e38)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    proc = fmnist("eval", run, "--json", "--data-dir", real_data_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {path}: ") and "overflow" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.realdata
def test_train_into_a_closed_pipe_exits_141_quietly(real_data_dir, tmp_path):
    write_end = _closed_pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "train", *TINY, "-q",
                               "--data-dir", str(real_data_dir), "--runs-dir",
                               str(tmp_path / "runs")], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=ENV, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "finished" in proc.stderr                      # the run itself completed
