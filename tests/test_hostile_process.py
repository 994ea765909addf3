"""Issue 31, process-level robustness: ``~user`` forms that cannot be expanded are one line; a
run's liveness is decided by its lock, not by a pid that another process may have been given;
and the smaller items (``--runs-dir`` with ``--resume``, matplotlib's folder under ``HOME=``, an
export that would replace its own input)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from round3_helpers import ENV, REPO, fmnist, need, one_line
from sweep_helpers import write_spec

FIXTURE_RUN = REPO / "tests" / "fixtures" / "run-v1"
NO_USER = "~fmnist-no-such-user-31"


# ------------------------------------------------------------------------- ~user


@pytest.mark.parametrize("where", ["--data-dir", "FMNIST_MLP_DATA_DIR", "--storage"])
def test_a_home_that_cannot_be_expanded_is_one_line(tmp_path, where):
    # Cause 9: Path.expanduser raised RuntimeError ("Could not determine home directory"): a
    # traceback for --data-dir, $FMNIST_MLP_DATA_DIR, --source and --storage.
    env = ENV
    if where == "--data-dir":
        argv = ["download", "-q", "--data-dir", f"{NO_USER}/data"]
    elif where == "FMNIST_MLP_DATA_DIR":
        argv, env = ["download", "-q"], {**ENV, "FMNIST_MLP_DATA_DIR": f"{NO_USER}/data"}
    else:
        argv = ["sweep", "run", write_spec(tmp_path / "spec.yaml"), "--dir", tmp_path / "sw",
                "--storage", f"{NO_USER}/study.journal", "--dry-run"]
    proc = fmnist(*argv, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert f"cannot expand {NO_USER}" in line and line.startswith("error: ")
    assert not (tmp_path / "sw").exists()


def test_a_source_whose_home_cannot_be_expanded_is_reported_not_a_traceback(tmp_path):
    proc = fmnist("download", "-q", "--data-dir", tmp_path / "cache", "--source",
                  f"{NO_USER}/fashion", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and f"cannot expand {NO_USER}" in proc.stderr


# ------------------------------------------------------------------------- liveness by the lock


@pytest.fixture
def killed_run(tmp_path):
    """A run left "running" by a process killed with -9, whose pid now belongs to someone else
    (a live ``sleep``), and whose lock file the dead process left behind, unheld."""
    run = tmp_path / "runs" / "killed"
    shutil.copytree(FIXTURE_RUN, run)
    other = subprocess.Popen(["sleep", "120"])
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="running", pid=other.pid, host=socket.gethostname(),
                   epochs_completed=1)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / ".lock").write_text(f"{other.pid} {socket.gethostname()}\n")
    yield run
    other.kill()
    other.wait()


def test_a_killed_run_whose_pid_was_reused_can_be_resumed(killed_run):
    # Cause 11: "still running (pid ...); stop it first", for ever, although the resuming
    # process holds the run's lock (no trainer can hold it then).
    from fmnist_mlp.rundir.resume import open_for_resume

    with open_for_resume(killed_run) as point:
        assert point.checkpoint.meta["epoch"] == 2


def test_runs_shows_a_killed_run_as_stale_even_when_its_pid_was_reused(killed_run):
    proc = fmnist("runs", "--runs-dir", killed_run.parent, "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["status"] == "stale"


def test_a_run_whose_lock_is_held_is_running_whatever_its_pid(killed_run):
    from fmnist_mlp.errors import CheckpointError
    from fmnist_mlp.rundir.guard import RunLock
    from fmnist_mlp.rundir.resume import open_for_resume

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from fmnist_mlp.rundir.guard import RunLock; "
        f"RunLock({str(killed_run)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        proc = fmnist("runs", "--runs-dir", killed_run.parent, "--json")
        assert json.loads(proc.stdout)[0]["status"] == "running"
        with pytest.raises(CheckpointError, match="already running"):
            with open_for_resume(killed_run):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert RunLock(killed_run).acquire()     # released by the kernel when its holder died


# ------------------------------------------------------------------------- the smaller items


def test_runs_dir_with_resume_is_a_usage_error_not_silently_ignored(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    proc = fmnist("train", "--resume", run, "--runs-dir", tmp_path / "elsewhere")
    assert proc.returncode == 2
    assert "--runs-dir does not apply" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_exporting_a_safetensors_file_to_its_default_name_does_not_offer_to_remove_it(tmp_path):
    need("safetensors")
    model = tmp_path / "model.safetensors"
    shutil.copyfile(REPO / "tests" / "fixtures" / "run-v1.safetensors", model)
    before = model.read_bytes()
    proc = fmnist("export", model, "--format", "safetensors")
    assert proc.returncode == 2
    line = one_line(proc)
    assert "is the model being exported" in line and "remove it" not in line
    assert model.read_bytes() == before


def test_plot_under_an_empty_home_leaves_no_matplotlib_folder_behind(real_data_dir, tmp_path):
    need("matplotlib")
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**ENV, "HOME": "", "TMPDIR": str(temp)}
    env.pop("MPLCONFIGDIR", None)
    proc = fmnist("plot", run, "--data-dir", real_data_dir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) >= 4
    assert list(temp.iterdir()) == []
