"""Hostile inputs, round three (issue 25), part two: model files and what is written from them --
safetensors files crafted byte by byte (dtype relabelled, spec or tensors too large for memory,
offsets that do not match), stored normalisation, export -o never replacing a file or link,
SIGTERM during export and sweep report, and distillation's teachers (odd paths through
scripts/distill.sh, a sigmoid teacher for a softmax student). CLI as a subprocess, as in part one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from round3_helpers import (ENV, GiB, REPO, TINY, fmnist, model_spec, need, one_line, peak_rss,
                            shirt, sigterm_when, st_parts, st_write, with_meta, work)

pytestmark = pytest.mark.realdata


# ------------------------------------------------------------------------- export -o


def test_export_never_replaces_a_link_at_its_output_path(work, tmp_path):
    # `-o PATH` was checked with exists(), which is False for a dangling link, and the file was
    # then renamed over the link.
    link, target = tmp_path / "model.onnx", tmp_path / "elsewhere" / "victim.onnx"
    link.symlink_to(target)
    need("onnx")
    proc = fmnist("export", work["run"], "--format", "onnx", "-o", link)
    assert proc.returncode == 2
    assert "already exists" in one_line(proc) and str(link) in proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert not target.parent.exists()


def test_two_exports_to_one_path_one_wins_the_other_is_refused(work, tmp_path):
    # Both checked that PATH was absent long before writing, both exited 0, and one file silently
    # replaced the other. Now the file is created without replacing at the final step.
    need("onnx")
    out = tmp_path / "both.onnx"
    procs = [subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "export", str(work["run"]),
                               "--format", fmt, "-o", str(out)], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for fmt in ("onnx", "onnx", "onnx", "onnx")]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2, 2, 2], results
    for code, _, err in results:
        if code == 2:
            assert "already exists" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["both.onnx"]       # no temporaries left behind


@pytest.mark.parametrize("planted", ["file", "dangling-link"])
def test_the_writer_takes_a_new_name_at_its_last_step(tmp_path, planted):
    # What export -o and --save-preprocessed rely on: a name taken *while* the file is being
    # written (after any early check) is still never replaced, and no temporary is left.
    from fmnist_mlp.io.files import TargetExists, atomic_write

    target = tmp_path / "out.bin"

    def write_while_someone_takes_the_name(out):
        out.write(b"ours")
        if planted == "file":
            target.write_bytes(b"theirs")
        else:
            target.symlink_to(tmp_path / "victim")

    with pytest.raises(TargetExists, match="already exists"):
        atomic_write(target, write_while_someone_takes_the_name, replace=False)
    if planted == "file":
        assert target.read_bytes() == b"theirs"
    else:
        assert target.is_symlink() and not (tmp_path / "victim").exists()
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_sigterm_during_export_exits_130_with_a_message(work, tmp_path):
    need("onnx")
    out = tmp_path / "m.onnx"
    proc = sigterm_when(["export", work["run"], "--format", "onnx", "-o", out], ready=out.exists)
    assert proc.returncode == 130
    assert one_line(proc) == "interrupted"


def test_sigterm_during_sweep_report_exits_130_with_a_message(work, tmp_path):
    need("optuna")
    need("matplotlib")
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "default.yaml"),
        "set": {"train.epochs": 1, "data.subset": 300, "data.val_size": 200, "model.hidden": [8],
                "train.batch_size": 100},
        "method": "random", "trials": 1, "pruner": "none",
        "space": {"optimizer.lr": {"log_uniform": [1e-3, 1e-2]}}}))
    sweep = tmp_path / "sw"
    proc = fmnist("sweep", "run", spec, "--dir", sweep, "--data-dir", work["data"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = sigterm_when(["sweep", "report", sweep], ready=(sweep / "best.yaml").exists)
    assert proc.returncode == 130
    assert one_line(proc) == "interrupted"


# ------------------------------------------------------------------------- silent wrong results


def test_a_safetensors_dtype_edited_in_the_header_is_refused(work, shirt, tmp_path):
    # F32 -> I32 with the bytes unchanged was accepted and cast: "Sandal 1.000".
    header, body = st_parts(work["st"])
    header["layer0.W"]["dtype"] = "I32"
    edited = st_write(tmp_path / "edited.safetensors", header, body)
    for argv in (["eval", edited, "--data-dir", work["data"]], ["predict", edited, shirt],
                 ["export", edited, "--format", "onnx", "-o", tmp_path / "x.onnx"]):
        proc = fmnist(*argv)
        assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
        line = one_line(proc)
        assert line.startswith(f"error: {edited}: ") and "layer0.W" in line and "I32" in line
        assert proc.stdout == ""
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("normalization", [{"mean": 0, "std": 1e-320}, {"mean": 0, "std": 0},
                                           {"mean": 1e300, "std": 1}])
def test_stored_normalisation_that_would_give_nan_is_refused(work, shirt, tmp_path, normalization):
    # std 1e-320 passed the "std > 0" check and predict printed nan probabilities, exit 0.
    header, body = st_parts(work["st"])
    edited = st_write(tmp_path / "norm.safetensors",
                      with_meta(header, "normalization", normalization), body)
    proc = fmnist("predict", edited, shirt)
    assert proc.returncode == 1 and proc.stdout == ""
    line = one_line(proc)
    assert line.startswith(f"error: {edited}: ") and "normalization" in line


def test_distill_sh_passes_odd_teacher_paths_through_intact(work, tmp_path):
    # The teachers were joined into "[a,b]" unquoted: "te,acher" became two teachers, and " #" or
    # ": " broke the YAML.
    teachers = [tmp_path / "te,acher", tmp_path / "odd #dir: x", tmp_path / "q'uo\"te [1]"]
    for teacher in teachers:
        shutil.copytree(work["run"], teacher)
    runs_dir = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "distill.sh"), "-r", str(runs_dir),
                           *map(str, teachers), "--", *TINY, "--data-dir", str(work["data"]),
                           "--set", "model.batchnorm=false", "--set", "data.augment.flip=false",
                           "--set", "data.augment.shift=0",
                           "--set", "data.augment.test_flip=false"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import yaml

    student = Path(proc.stdout.strip().splitlines()[-1])
    config = yaml.safe_load((student / "config.yaml").read_text())
    assert config["distill"]["teachers"] == [str(t) for t in teachers]


def test_a_sigmoid_teacher_for_a_softmax_student_is_refused(work, tmp_path):
    # An ensemble refuses to average sigmoid scores with softmax probabilities; distillation
    # mixed them into the student's targets without a word.
    proc = fmnist("train", *TINY, "--set", f"distill.teachers=[{work['sigmoid']}]",
                  "--data-dir", work["data"], "--runs-dir", tmp_path / "runs", "-q")
    assert proc.returncode == 2
    line = one_line(proc)
    assert str(work["sigmoid"]) in line and "sigmoid" in line and "softmax" in line
    assert not (tmp_path / "runs").exists()                  # refused before anything is made


def _huge_spec_file(work, tmp_path, hidden) -> Path:
    """The tiny export with its stored model spec edited to ``hidden`` (tensors unchanged)."""
    header, body = st_parts(work["st"])
    spec = {**model_spec(header), "hidden": hidden}
    return st_write(tmp_path / "huge-spec.safetensors", with_meta(header, "model_spec", spec), body)


def _sparse_tensor_file(work, tmp_path, width: int) -> Path:
    """A file declaring a (784, width) first layer whose data is a hole: GBs of st_size, KBs on
    disk. Its header, spec and sizes agree; only the memory needed gives it away."""
    header, _ = st_parts(work["st"])
    spec = {**model_spec(header), "hidden": [width]}
    shapes = {"layer0.W": [784, width], "layer0.b": [width], "layer1.W": [width, 10],
              "layer1.b": [10]}
    out, offset = {"__metadata__": with_meta(header, "model_spec", spec)["__metadata__"]}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        out[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return st_write(tmp_path / "sparse.safetensors", out, total_data=offset)


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
@pytest.mark.parametrize("make", [
    lambda work, tmp: _huge_spec_file(work, tmp, [20000, 20000]),
    lambda work, tmp: _huge_spec_file(work, tmp, [10 ** 7, 10 ** 7]),
    lambda work, tmp: _sparse_tensor_file(work, tmp, 10 ** 6),            # a 3 GB first layer
], ids=["spec-20000x20000", "spec-1e7x1e7", "sparse-3GB-tensor"])
def test_safetensors_memory_is_estimated_before_any_tensor_is_read(work, shirt, tmp_path, command,
                                                                   make):
    # The spec [20000, 20000] reached 4.8 GB before refusal, [1e7, 1e7] was a MemoryError
    # traceback, a sparse file declaring a 3 GB tensor took 6.3 GB (and under a limit a pyo3
    # PanicException, a BaseException, escaped).
    path = make(work, tmp_path)
    argv = {"eval": ["eval", path, "--data-dir", work["data"]],
            "predict": ["predict", path, shirt],
            "export": ["export", path, "--format", "onnx", "-o", tmp_path / "x.onnx"]}[command]
    started = time.monotonic()
    code, out, err, peak = peak_rss(argv, limit_bytes=GiB, timeout=60)
    assert time.monotonic() - started < 30
    assert code == 1 and out == "", err
    assert "Traceback" not in err and "Panic" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert "memory (estimated)" in lines[0]             # said by the estimate, not by a failure
    assert peak < 400 * (1 << 20)
    assert not (tmp_path / "x.onnx").exists()


def test_safetensors_offsets_that_do_not_match_the_file_are_refused(work, shirt, tmp_path):
    header, body = st_parts(work["st"])
    for name, data in (("short", body[:-4]), ("long", body + b"\0" * 64)):
        path = st_write(tmp_path / f"{name}.safetensors", header, data)
        proc = fmnist("predict", path, shirt)
        assert proc.returncode == 1 and proc.stdout == ""
        line = one_line(proc)
        assert line.startswith(f"error: {path}: ") and "bytes" in line


