"""A sweep directory from someone else, or damaged; and the exit codes and messages of a sweep
that went through trouble. Each of these failed on the main of issue 26 (a traceback, a write
through a link, a 30 s stall or a wrong exit code); the CLI runs as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import (REPO, cli_env, one_line_error, run_cli, run_cli_read_only, run_dirs,
                           run_tiny_sweep, status, tree, write_spec)

pytest.importorskip("yaml")
pytestmark = pytest.mark.usefixtures("needs_optuna")




@pytest.fixture
def done_sweep(tmp_path, real_data_dir):
    """A finished 3-trial sweep of tiny trials, one per test (each test damages its own)."""
    return run_tiny_sweep(tmp_path, real_data_dir)


# --------------------------------------------------------------------------------------------
# Links planted in the sweep directory


@pytest.mark.slow
def test_report_never_writes_through_a_link_at_its_temporary(done_sweep, tmp_path):
    pytest.importorskip("matplotlib")
    _, sweep_dir = done_sweep
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (sweep_dir / "report").mkdir()
    for name in (".val_curves.png.tmp", ".best_so_far.png.tmp"):
        (sweep_dir / "report" / name).symlink_to(victim)
    proc = run_cli("sweep", "report", sweep_dir)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious\n"
    assert (sweep_dir / "report" / "val_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_report_refuses_a_report_folder_that_is_a_link(done_sweep, tmp_path):
    pytest.importorskip("matplotlib")
    _, sweep_dir = done_sweep
    other = tmp_path / "someone-elses"
    other.mkdir()
    (other / "best_so_far.png").write_bytes(b"theirs")
    (sweep_dir / "report").symlink_to(other)
    proc = run_cli("sweep", "report", sweep_dir)
    assert "symbolic link" in one_line_error(proc, code=1)
    assert (other / "best_so_far.png").read_bytes() == b"theirs"
    assert sorted(p.name for p in other.iterdir()) == ["best_so_far.png"]


@pytest.mark.slow
@pytest.mark.parametrize("dangling", [False, True])
def test_a_journal_that_is_a_link_is_refused_and_its_target_untouched(done_sweep, tmp_path,
                                                                      dangling):
    spec, sweep_dir = done_sweep
    target = tmp_path / "users-file.txt"
    if not dangling:
        target.write_text("mine\n")
    (sweep_dir / "study.journal").unlink()
    (sweep_dir / "study.journal").symlink_to(target)
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--trials", 4)
    assert "symbolic link" in one_line_error(proc)
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text() == "mine\n"
    one_line_error(run_cli("sweep", "status", sweep_dir))


# --------------------------------------------------------------------------------------------
# Damaged sweep.json and journal lines


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["list", "no_study_name", "edited_space", "huge_trials"])
def test_a_damaged_sweep_json_is_one_line(done_sweep, damage):
    spec, sweep_dir = done_sweep
    path = sweep_dir / "sweep.json"
    info = json.loads(path.read_text())
    if damage == "list":
        info = [1, 2]
    elif damage == "no_study_name":
        del info["study_name"]
    elif damage == "edited_space":
        info["spec"]["space"]["optimizer.lr"] = {"log_uniform": ["a", 1]}
    else:
        info["trials"] = 10**30
    path.write_text(json.dumps(info))
    before = tree(sweep_dir)
    assert "sweep.json" in one_line_error(run_cli("sweep", "status", sweep_dir))
    assert "sweep.json" in one_line_error(run_cli("sweep", "run", spec, "--dir", sweep_dir))
    assert tree(sweep_dir) == before


@pytest.mark.slow
def test_an_unknown_journal_record_is_one_line(done_sweep):
    spec, sweep_dir = done_sweep
    with open(sweep_dir / "study.journal", "a") as f:
        f.write('{"op_code": 99}\n')
    before = tree(sweep_dir)
    assert "line" in one_line_error(run_cli("sweep", "status", sweep_dir))
    assert "line" in one_line_error(run_cli("sweep", "run", spec, "--dir", sweep_dir))
    assert tree(sweep_dir) == before


@pytest.mark.slow
def test_a_non_numeric_value_in_the_journal_does_not_break_status_or_report(done_sweep):
    pytest.importorskip("matplotlib")
    _, sweep_dir = done_sweep
    worker = "x" * 8
    with open(sweep_dir / "study.journal", "a") as f:
        f.write(json.dumps({"op_code": 7, "worker_id": worker, "trial_id": 0, "step": 99,
                            "intermediate_value": "abc"}) + "\n")
        f.write(json.dumps({"op_code": 4, "worker_id": worker, "study_id": 0,
                            "datetime_start": "2026-12-05T08:00:00.000000+00:00"}) + "\n")
        f.write(json.dumps({"op_code": 6, "worker_id": worker, "trial_id": 3, "state": 1,
                            "values": ["abc"],
                            "datetime_complete": "2026-12-05T08:00:01.000000+00:00"}) + "\n")
    for command in ("status", "report"):
        proc = run_cli("sweep", command, sweep_dir)
        assert "Traceback" not in proc.stderr
        if proc.returncode != 0:
            one_line_error(proc, code=proc.returncode)


@pytest.mark.slow
def test_a_partial_last_journal_line_is_repaired_without_losing_a_finished_trial(
        done_sweep, real_data_dir):
    """A killed writer or a full disk leaves half a record: status reads past it, run removes
    it, and the sweep carries on (here: extended by one trial)."""
    spec, sweep_dir = done_sweep
    journal = sweep_dir / "study.journal"
    good = journal.read_bytes()
    with open(journal, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"abc","study_id":0,"datetime_st')
    assert [t["state"] for t in status(sweep_dir)["trials"]] == ["finished"] * 3
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--trials", 4,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert "removed a partial last line" in proc.stderr
    assert journal.read_bytes().startswith(good)
    assert [t["state"] for t in status(sweep_dir)["trials"]] == ["finished"] * 4


@pytest.mark.slow
def test_a_stale_optuna_journal_lock_costs_no_wait(done_sweep, real_data_dir):
    """Optuna's own lock file, left by a dead holder, made every command stall 30 s."""
    spec, sweep_dir = done_sweep
    (sweep_dir / "study.journal.lock").symlink_to(sweep_dir / "study.journal.lock.dead")
    started = time.monotonic()
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--trials", 4,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert status(sweep_dir)["budget_left"] == 0
    assert time.monotonic() - started < 25
    assert "Forcibly" not in proc.stderr


# --------------------------------------------------------------------------------------------
# Specs refused when read


def test_a_seed_too_large_for_the_samplers_is_one_line(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", seed=10**24)
    line = one_line_error(run_cli("sweep", "run", spec, "--dir", tmp_path / "sw"))
    assert "seed" in line
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("fields", [
    {"set": {"model.hidden": [10000000], "train.epochs": 1}},
    {"set": {"train.epochs": 1}, "space": {"model.hidden": {"choice": [[16], [10000000]]}}},
    {"space": {"train.batch_size": {"int_uniform": [16, 10**9]}}},
], ids=["set", "choice", "range_high_end"])
def test_a_model_that_cannot_fit_in_memory_is_refused_when_the_spec_is_read(tmp_path, fields):
    spec = write_spec(tmp_path / "spec.yaml", **fields)
    line = one_line_error(run_cli("sweep", "run", spec, "--dir", tmp_path / "sw"))
    assert "memory" in line
    assert not (tmp_path / "sw").exists()


# --------------------------------------------------------------------------------------------
# DIR/locks


@pytest.mark.slow
def test_locks_that_is_a_file_is_named_in_one_line(done_sweep):
    spec, sweep_dir = done_sweep
    for p in (sweep_dir / "locks").iterdir():
        p.unlink()
    (sweep_dir / "locks").rmdir()
    (sweep_dir / "locks").write_text("")
    line = one_line_error(run_cli("sweep", "run", spec, "--dir", sweep_dir, "--trials", 4))
    assert f"{sweep_dir / 'locks'}: is not a folder" in line


@pytest.mark.slow
def test_read_only_locks_is_one_line_at_once(done_sweep):
    spec, sweep_dir = done_sweep
    started = time.monotonic()
    proc = run_cli_read_only([sweep_dir / "locks"], "sweep", "run", spec, "--dir", sweep_dir,
                             "--trials", 4)
    assert "not writable" in one_line_error(proc)
    assert time.monotonic() - started < 20


# --------------------------------------------------------------------------------------------
# Exit codes and messages


def test_jobs_are_capped_at_the_budget(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", trials=2)
    proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw", "--jobs", 8, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


@pytest.mark.slow
def test_budget_is_extended_by_trials_and_never_reduced(done_sweep, real_data_dir):
    spec, sweep_dir = done_sweep
    line = one_line_error(run_cli("sweep", "run", spec, "--dir", sweep_dir, "--trials", 2))
    assert "budget is 3" in line
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--trials", 5,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished"] * 5 and st["budget"] == 5
    assert len(run_dirs(sweep_dir)) == 5
    # the spec file (trials: 3) still continues the extended sweep, which is done
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--data-dir", real_data_dir)
    assert proc.returncode == 0 and "budget left 0 of 5" in proc.stderr


@pytest.mark.slow
def test_a_completed_sweep_exits_0_after_a_sigkilled_worker(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=4,
                      set={"train.epochs": 30, "data.subset": 3000, "data.val_size": 500,
                           "model.hidden": [16]})
    sweep_dir = tmp_path / "sw"
    parent = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec),
                               "--dir", str(sweep_dir), "--jobs", "2", "--data-dir",
                               str(real_data_dir)], cwd=REPO, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(_saved_epochs(s) >= 1 for s in sweep_dir.glob("runs/*/summary.json")):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.02)
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGKILL)
        out, err = parent.communicate(timeout=300)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, err
    assert "every trial ended" in err
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished"] * 4
    for t in st["trials"]:
        lines = (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 31))


def _saved_epochs(summary: Path) -> int:
    try:
        return json.loads(summary.read_text()).get("epochs_completed", 0)
    except (OSError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_the_interrupt_message_names_the_command_to_rerun(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=1,
                      set={"train.epochs": 60, "data.subset": 3000, "data.val_size": 500,
                           "model.hidden": [16]})
    sweep_dir = tmp_path / "sw"
    worker = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec),
                               "--dir", str(sweep_dir), "--data-dir", str(real_data_dir)],
                              cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(_saved_epochs(s) >= 1 for s in sweep_dir.glob("runs/*/summary.json")):
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.02)
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130
    last = err.strip().splitlines()[-1]
    assert f"continue with: fmnist-mlp sweep run {spec} --dir {sweep_dir}" in last, err


# --------------------------------------------------------------------------------------------
# Workers starting together on a new DIR


OPEN_WHEN_TOLD = """
import os, sys, time
from fmnist_mlp.sweep.spec import load_spec
from fmnist_mlp.sweep.study import open_sweep
spec = load_spec(sys.argv[1])
open(sys.argv[3] + "." + str(os.getpid()), "w").close()     # loaded: ready
while not os.path.exists(sys.argv[3]):      # all go at once
    time.sleep(0.005)
sweep = open_sweep(sys.argv[2], spec)
print(sweep.info["study_name"], sweep.budget, len(sweep.study.get_trials()))
"""


def test_workers_opening_a_new_sweep_together_make_one_sweep(tmp_path):
    """Four processes open the same new DIR at the same moment (a Slurm array's first tasks):
    DIR is made whole once (runs/ and locks/ before sweep.json, which exactly one of them
    writes, whole) and they all meet in one study holding the spec's budget."""
    spec = write_spec(tmp_path / "spec.yaml")
    sweep_dir, go = tmp_path / "new" / "sweep", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_WHEN_TOLD, str(spec), str(sweep_dir),
                               str(go)], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    while len(list(tmp_path.glob("go.*"))) < 4 and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    assert len({out for out, _ in outs}) == 1, outs
    name, budget, trials = outs[0][0].split()
    info = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    assert (info["study_name"], info["trials"], budget, trials) == (name, 4, "4", "0")
    assert sorted(p.name for p in sweep_dir.iterdir()) == [      # nothing else, no temporary
        ".claim.lock", "locks", "runs", "study.journal", "study.journal.flock", "sweep.json"]
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / "study.journal")))
    assert [s.study_name for s in storage.get_all_studies()] == [name]


def test_a_new_sweep_folder_that_cannot_be_made_is_one_line_and_nothing_is_written(tmp_path):
    """DIR's place taken by a file, a subfolder's place taken by a file: one line naming it, and
    no sweep.json (a DIR without its folders is never announced as a sweep)."""
    from fmnist_mlp.errors import ConfigError
    from fmnist_mlp.io.paths import make_folder

    (tmp_path / "file").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^--dir .*file: exists and is not a folder$"):
        make_folder(tmp_path / "file", "--dir", ConfigError, first=("sweep.json", b"{}"))
    assert (tmp_path / "file").read_text(encoding="utf-8") == "mine"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "locks").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^--dir .*dir/locks: exists and is not a folder$"):
        make_folder(tmp_path / "dir", "--dir", ConfigError, first=("sweep.json", b"{}"),
                    subfolders=("runs", "locks"))
    assert not (tmp_path / "dir" / "sweep.json").exists()
    assert make_folder(tmp_path / "dir2", "--dir", ConfigError, first=("sweep.json", b"{}"),
                       subfolders=("runs",))
    assert not make_folder(tmp_path / "dir2", "--dir", ConfigError,
                           first=("sweep.json", b"[]"), subfolders=("runs",))
    assert (tmp_path / "dir2" / "sweep.json").read_bytes() == b"{}"
