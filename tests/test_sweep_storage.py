"""Where a sweep's study lives: every --storage URL works or is refused in one line before
anything is created; a plain postgresql:// URL runs a sweep (the database coordinating, nothing
locked in DIR); a sweep directory is movable and readable by someone who may not write to it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import (cli_env, one_line_error, run_cli, run_cli_read_only, run_dirs,
                           run_tiny_sweep, status, tree, write_spec)
from sweep_services import free_port, start_postgres

pytest.importorskip("yaml")
pytestmark = pytest.mark.usefixtures("needs_optuna")




@pytest.fixture(scope="module")
def postgres():
    pg = start_postgres()
    yield pg
    pg.stop()


def _driver(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _bad_urls() -> list[tuple[str, str]]:
    port = free_port()                  # nothing listens there
    return [
        (f"postgresql://u:secret@127.0.0.1:{port}/db", f"127.0.0.1:{port}"),
        (f"mysql://u@127.0.0.1:{port}/db",
         f"127.0.0.1:{port}" if _driver("MySQLdb") else "no database driver"),
        ("sqlite:////nonexistent-folder/x.db", "folder /nonexistent-folder not found"),
        ("sqlite://", "in-memory database"),
        (f"grpc://127.0.0.1:{port}", "sweep workers need the database itself"),
        (f"redis://127.0.0.1:{port}", "sweep workers need the database itself"),
        ("postgresq://host/db", "unknown kind"),
        ("postgresql://host:notaport/db", "not a storage URL"),
        (f"postgresql://u@127.0.0.1:{port}/", "names no database"),
    ]


@pytest.mark.parametrize("url, says", _bad_urls())
def test_a_bad_storage_url_is_one_line_exit_2_and_creates_nothing(tmp_path, url, says):
    spec = write_spec(tmp_path / "spec.yaml")
    sweep_dir = tmp_path / "sw"
    started = time.monotonic()
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--storage", url, timeout=60)
    line = one_line_error(proc)
    assert says in line
    assert "secret" not in line                       # a password is never printed
    assert not sweep_dir.exists()
    assert time.monotonic() - started < 30


def test_a_missing_database_names_the_server_and_creates_nothing(postgres, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw", "--storage",
                   postgres.url("no_such_db"))
    line = one_line_error(proc)
    assert f"127.0.0.1:{postgres.port}" in line and "no_such_db" in line
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_a_plain_postgresql_url_runs_a_sweep_coordinated_by_the_database(postgres, tmp_path,
                                                                         real_data_dir):
    url = postgres.createdb("plain")
    spec = write_spec(tmp_path / "spec.yaml", trials=3)
    sweep_dir = tmp_path / "a" / "sw"
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--storage", url, "--jobs", 2,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert [t["state"] for t in status(sweep_dir)["trials"]] == ["finished"] * 3
    assert len(run_dirs(sweep_dir)) == 3
    # nothing locked or journalled in DIR: the database is the only coordinator
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["runs", "sweep.json"]
    # a second machine with its own copy of the folder and the same URL meets the same study
    other = tmp_path / "b" / "sw"
    proc = run_cli("sweep", "run", spec, "--dir", other, "--storage", url,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert "3 finished; budget left 0 of 3" in proc.stderr
    assert not any((other / "runs").iterdir())


@pytest.mark.slow
def test_a_sqlite_url_runs_a_sweep(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=3)
    sweep_dir = tmp_path / "sw"
    db = tmp_path / "study.db"
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--storage", f"sqlite:///{db}",
                   "--jobs", 2, "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert [t["state"] for t in status(sweep_dir)["trials"]] == ["finished"] * 3
    assert len(run_dirs(sweep_dir)) == 3


@pytest.fixture(scope="module")
def done_sweep(tmp_path_factory, real_data_dir):
    return run_tiny_sweep(tmp_path_factory.mktemp("done"), real_data_dir)


@pytest.mark.slow
def test_status_and_report_read_a_read_only_sweep_and_write_nothing(done_sweep, tmp_path):
    pytest.importorskip("matplotlib")
    _, sweep_dir = done_sweep
    before = tree(sweep_dir)
    proc = run_cli_read_only([sweep_dir], "sweep", "status", sweep_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [t["state"] for t in json.loads(proc.stdout)["trials"]] == ["finished"] * 3
    out = tmp_path / "out"
    proc = run_cli_read_only([sweep_dir], "sweep", "report", sweep_dir, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"best.yaml", "metric_vs_params.png",
                                              "val_curves.png", "best_so_far.png"}
    proc = run_cli_read_only([sweep_dir], "sweep", "report", sweep_dir)
    assert "--out" in one_line_error(proc, code=1)
    # writable again: status and report still write nothing to the study or its locks
    run_cli("sweep", "status", sweep_dir)
    assert tree(sweep_dir) == before


@pytest.mark.slow
def test_a_moved_sweep_resumes_its_interrupted_trial_in_the_same_run(tmp_path, real_data_dir):
    """Run with a relative --dir, killed mid-trial; the folder moved and the sweep continued from
    another working directory: the trial resumes in its run directory, one run per trial."""
    spec = write_spec(tmp_path / "spec.yaml", trials=2,
                      set={"train.epochs": 30, "data.subset": 3000, "data.val_size": 500,
                           "model.hidden": [16]})
    first = tmp_path / "here"
    first.mkdir()
    worker = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec),
                               "--dir", "sw", "--data-dir", str(real_data_dir)], cwd=first,
                              env=cli_env(), stderr=subprocess.DEVNULL)
    try:
        run = _wait_for_saved_epoch(first / "sw", worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    moved = tmp_path / "elsewhere" / "sw-moved"
    moved.parent.mkdir()
    shutil.move(first / "sw", moved)
    there = tmp_path / "there"
    there.mkdir()
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir",
                           "../elsewhere/sw-moved", "--data-dir", str(real_data_dir)], cwd=there,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    st = status(moved)
    assert [t["state"] for t in st["trials"]] == ["finished"] * 2
    assert len(run_dirs(moved)) == 2
    resumed = moved / "runs" / run.name
    assert str(resumed) in {t["run_dir"] for t in st["trials"]}
    assert "resumed at epoch" in (resumed / "train.log").read_text()
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 31))


def _wait_for_saved_epoch(sweep_dir: Path, proc, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker ended early"
        for summary in sweep_dir.glob("runs/*/summary.json"):
            try:
                done = json.loads(summary.read_text()).get("epochs_completed", 0)
            except (OSError, json.JSONDecodeError):
                continue
            if 1 <= done <= 20 and (summary.parent / "checkpoints" / "last.npz").is_file():
                return summary.parent
        time.sleep(0.02)
    raise AssertionError("no run saved an epoch in time")


@pytest.mark.slow
def test_a_journal_file_path_as_storage_runs_a_sweep(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=2)
    journal = tmp_path / "shared" / "study.journal"
    journal.parent.mkdir()
    proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw", "--storage", journal,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert journal.is_file() and not (tmp_path / "sw" / "study.journal").exists()
    assert [t["state"] for t in status(tmp_path / "sw")["trials"]] == ["finished"] * 2
