"""Hostile run directories (issue 13): planted links, damaged checkpoint metadata, two resumes at
once, a full disk, SIGKILL leftovers. The CLI runs as a subprocess on a tiny slice of the real data;
each test starts from a fresh copy of one small run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.realdata

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
TINY = ["--set", "data.subset=300", "--set", "data.val_size=200", "--set", "model.hidden=[8]",
        "--set", "train.epochs=2", "--set", "train.batch_size=100"]


def fmnist(*args, cwd=None, timeout=120, env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and len(lines[-1]) > 0, proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def template(real_data_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("template")
    proc = fmnist("train", *TINY, "--name", "tiny", "--data-dir", real_data_dir, "--runs-dir",
                  work / "runs", "-q")
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def run(template, tmp_path) -> Path:
    """A fresh copy of the small run, marked interrupted so that --resume accepts it."""
    run_dir = tmp_path / "runs" / template.name
    shutil.copytree(template, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["status"] = "interrupted"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def resume(run_dir, data_dir):
    return fmnist("train", "--resume", run_dir, "--data-dir", data_dir, "-q")


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.is_symlink()}


# ------------------------------------------------------------------------- planted links


def test_resume_refuses_a_train_log_linked_to_a_users_file(run, real_data_dir, tmp_path):
    victim = tmp_path / "bashrc"
    victim.write_text("# the user's shell start-up file\n")
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(victim)
    proc = resume(run, real_data_dir)
    assert proc.returncode == 1
    assert "symbolic link" in one_line_error(proc) and "train.log" in proc.stderr
    assert victim.read_text() == "# the user's shell start-up file\n"


def test_resume_refuses_a_checkpoints_link(run, real_data_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run / "checkpoints", elsewhere)
    (run / "checkpoints").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    proc = resume(run, real_data_dir)
    assert proc.returncode == 1
    assert "symbolic link" in one_line_error(proc)
    assert snapshot(elsewhere) == before


def test_plot_refuses_a_plots_link(run, real_data_dir, tmp_path):
    pytest.importorskip("matplotlib")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "plots").symlink_to(elsewhere)
    proc = fmnist("plot", run, "--data-dir", real_data_dir)
    assert proc.returncode == 1
    assert "symbolic link" in one_line_error(proc)
    assert list(elsewhere.iterdir()) == []


def test_plot_replaces_a_linked_png_instead_of_writing_through_it(run, real_data_dir, tmp_path):
    pytest.importorskip("matplotlib")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "plots").mkdir()
    (run / "plots" / "confusion_matrix.png").symlink_to(victim)
    proc = fmnist("plot", run, "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "keep me"
    assert not (run / "plots" / "confusion_matrix.png").is_symlink()


# ------------------------------------------------------------------------- damaged metadata


def _edit_meta(path: Path, edit) -> None:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"]))
    edit(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("state"),
    lambda m: m.__setitem__("state", "x"),
    lambda m: m["state"].__setitem__("epoch", -1),
    lambda m: m["state"].__setitem__("epoch", "2"),
    lambda m: m["state"].__setitem__("step", 10 ** 30),
    lambda m: m["state"].__setitem__("best_val_acc", None),
    lambda m: m["state"].__setitem__("stale_epochs", 1.5),
], ids=["no-state", "state-string", "epoch-negative", "epoch-string", "step-huge",
        "acc-null", "stale-float"])
def test_resume_with_damaged_metadata_is_refused_and_the_run_is_untouched(run, real_data_dir, edit):
    _edit_meta(run / "checkpoints" / "last.npz", edit)
    before = snapshot(run)
    proc = resume(run, real_data_dir)
    assert proc.returncode == 1, proc.stderr
    assert "last.npz" in one_line_error(proc)
    after = snapshot(run)
    after.pop(".lock", None)
    before.pop(".lock", None)
    assert after == before       # metrics.jsonl kept, summary not marked failed


def test_resume_with_a_damaged_wall_time_in_the_summary_still_resumes(run, real_data_dir):
    summary = json.loads((run / "summary.json").read_text())
    summary["wall_time"] = "yesterday"
    (run / "summary.json").write_text(json.dumps(summary))
    proc = resume(run, real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


# ------------------------------------------------------------------------- two at once


def test_a_second_resume_of_a_running_run_is_refused(run, real_data_dir):
    import fcntl

    # What the first `train --resume` holds while it trains: an exclusive flock on <run>/.lock.
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        before = snapshot(run)
        proc = resume(run, real_data_dir)
    finally:
        os.close(fd)
    assert proc.returncode == 1
    assert "already running" in one_line_error(proc)
    assert snapshot(run) == before


def test_two_resumes_started_together_one_wins(run, real_data_dir):
    procs = [subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "train", "--resume", str(run),
                               "--data-dir", str(real_data_dir), "-q"], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # Either they overlapped (one wins, one is told) or the second found the run finished.
    assert codes == [0, 1], results
    loser = [err for code, err in results if code == 1][0]
    assert "already running" in loser or "already finished" in loser


# ------------------------------------------------------------------------- SIGKILL leftovers


def test_resume_removes_temporaries_of_killed_writers_and_nothing_else(run, real_data_dir):
    ckpts = run / "checkpoints"
    stale = [ckpts / ".last.npz.999999999-deadbeef.fmnist-mlp.tmp",   # this version's name
             ckpts / ".last.npz.k3j4h5g6.tmp",                          # the previous mkstemp name
             run / ".summary.json.a1b2c3d4.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    users = [run / ".notes.tmp", run / "my.tmp", ckpts / "keep.npz"]
    for path in users:
        path.write_bytes(b"the user's")
    proc = resume(run, real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"the user's" for p in users)


def test_an_atomic_write_cleans_up_after_a_killed_writer_of_the_same_file(tmp_path):
    from fmnist_mlp.io.files import atomic_write

    leftover = tmp_path / ".f.json.999999999-0badf00d.fmnist-mlp.tmp"
    leftover.write_text("{")
    atomic_write(tmp_path / "f.json", b"{}")
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


# ------------------------------------------------------------------------- full disk


def test_a_full_disk_marks_the_run_failed_and_names_the_file(real_data_dir, tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        # A checkpoint of a [512] net with Adam is ~4.8 MB: it cannot fit; config and summary can.
        proc = fmnist("train", *TINY, "--set", "model.hidden=[512]", "--name", "full",
                      "--data-dir", real_data_dir, "--runs-dir", mnt / "runs", "-q")
        assert proc.returncode == 1, proc.stderr
        line = one_line_error(proc)
        assert ".npz" in line and "No space left" in line
        (run_dir,) = (mnt / "runs").iterdir()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed"
        assert [p.name for p in (run_dir / "checkpoints").iterdir()] == []
    finally:
        subprocess.run(["umount", str(mnt)])


# ------------------------------------------------------------------------- hand-edited metrics


EDITED_METRICS = "\n".join([
    '{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4}',
    '{"epoch": "two", "train_loss": "low", "train_acc": [1], "val_loss": null, "val_acc": true}',
    '{"epoch": 1e308, "train_loss": 1e999, "val_acc": {"a": 1}}',
    '[1, 2, 3]',
    '{"epoch": 4}',
    '{}',
    '"just a string"',
    '{"epoch": -5, "val_acc": NaN, "train_acc": Infinity}',
]) + "\n"


def test_plot_survives_a_hand_edited_metrics_file(run, real_data_dir):
    pytest.importorskip("matplotlib")
    (run / "metrics.jsonl").write_text(EDITED_METRICS)
    proc = fmnist("plot", run, "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert (run / "plots" / "learning_curves.png").stat().st_size > 0


def test_learning_curves_of_only_odd_rows_draw_gaps(tmp_path):
    pytest.importorskip("matplotlib")
    from fmnist_mlp.plots import plot_learning_curves

    rows = [{"epoch": "x", "val_acc": "high"}, {"train_loss": [1, 2]}, {"epoch": None}]
    assert plot_learning_curves(rows, tmp_path / "c.png").stat().st_size > 0


def test_a_fifo_planted_as_train_log_is_refused_without_waiting(run, real_data_dir):
    (run / "train.log").unlink()
    os.mkfifo(run / "train.log")
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "train", "--resume", str(run),
                           "--data-dir", str(real_data_dir), "-q"], env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "train.log" in one_line_error(proc)
