"""Sweeps against a real Optuna study (journal file storage) and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sweep_helpers import REPO, cli_env, run_cli, run_dirs, run_pruned_sweep, status, write_spec

pytest.importorskip("yaml")
pytestmark = pytest.mark.usefixtures("needs_optuna")




@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, real_data_dir):
    """A random sweep of 4 tiny trials run by 2 local workers."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = write_spec(tmp / "spec.yaml")
    proc = run_cli("sweep", "run", spec, "--dir", tmp / "sw", "--jobs", 2,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    return spec, tmp / "sw", proc


@pytest.mark.slow
def test_two_local_workers_record_every_trial_once(finished_sweep):
    spec, sweep_dir, _ = finished_sweep
    st = status(sweep_dir)
    assert [t["number"] for t in st["trials"]] == [0, 1, 2, 3]
    assert {t["state"] for t in st["trials"]} == {"finished"}
    assert st["budget_left"] == 0
    dirs = run_dirs(sweep_dir)
    assert sorted(str(d) for d in dirs) == sorted(t["run_dir"] for t in st["trials"])
    for t in st["trials"]:           # each trial's parameters are in its run's config.yaml
        import yaml

        cfg = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == pytest.approx(t["params"]["optimizer.lr"])
        assert cfg["train"]["batch_size"] == t["params"]["train.batch_size"]
        assert cfg["train"]["epochs"] == 2 and cfg["data"]["subset"] == 1000
        summary = json.loads((Path(t["run_dir"]) / "summary.json").read_text())
        assert summary["best_val_acc"] == pytest.approx(t["best_val_acc"])
    workers = {t["worker"].split(":")[1] for t in st["trials"]}
    assert len(workers) == 2                    # both workers took trials
    table = run_cli("runs", "--runs-dir", sweep_dir / "runs", "--json")
    assert {r["status"] for r in json.loads(table.stdout)} == {"finished"}


@pytest.mark.slow
def test_rerun_trains_nothing_and_exits_0(finished_sweep, real_data_dir):
    spec, sweep_dir, _ = finished_sweep
    before = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(sweep_dir)}
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--jobs", 2,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    assert "started" not in proc.stderr
    assert {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(sweep_dir)} == before


@pytest.mark.slow
def test_changed_spec_is_refused_in_one_line(finished_sweep, tmp_path):
    spec, sweep_dir, _ = finished_sweep
    changed = write_spec(tmp_path / "changed.yaml", seed=5)
    proc = run_cli("sweep", "run", changed, "--dir", sweep_dir)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "different spec" in proc.stderr
    assert "seed" in proc.stderr


@pytest.mark.slow
def test_report_writes_trainable_best_yaml_and_real_pngs(finished_sweep, real_data_dir, tmp_path):
    import matplotlib.image

    spec, sweep_dir, _ = finished_sweep
    proc = run_cli("sweep", "report", sweep_dir)
    assert proc.returncode == 0, proc.stderr
    st = status(sweep_dir)
    best = max(st["trials"], key=lambda t: t["best_val_acc"])
    assert proc.stdout.splitlines()[1].split()[0] == str(best["number"])   # top row is the best
    train = run_cli("train", "--config", sweep_dir / "best.yaml", "--set", "train.epochs=1",
                    "--runs-dir", tmp_path / "runs", "--data-dir", real_data_dir, "--quiet")
    assert train.returncode == 0, train.stderr
    import yaml

    cfg = yaml.safe_load((Path(train.stdout.strip()) / "config.yaml").read_text())
    assert cfg["optimizer"]["lr"] == pytest.approx(best["params"]["optimizer.lr"])
    assert cfg["train"]["batch_size"] == best["params"]["train.batch_size"]
    pngs = sorted((sweep_dir / "report").glob("*.png"))
    assert {p.name for p in pngs} == {"metric_vs_params.png", "val_curves.png", "best_so_far.png"}
    # 4 finished trials are too few to rank importances by: withheld, and said so
    assert "importances withheld: 4 finished trial(s), at least 8" in proc.stdout
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(png)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
        assert float(np.std(pixels[..., :3])) > 0.02, f"{png.name} looks blank"


def test_bad_spec_key_exits_2_with_did_you_mean_and_creates_nothing(tmp_path):
    for field, value, wrong, right in [
            ("space", {"optimizer.lrr": {"uniform": [0.001, 0.01]}}, "optimizer.lrr", "optimizer.lr"),
            ("set", {"train.epoch": 2}, "train.epoch", "train.epochs"),
            ("space", {"optimiser.lr": {"uniform": [0.001, 0.01]}}, "optimiser.lr", "optimizer.lr")]:
        spec = write_spec(tmp_path / "bad.yaml", **{field: value})
        proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert wrong in proc.stderr and f"did you mean '{right}'" in proc.stderr
        assert not (tmp_path / "sw").exists()


def test_value_out_of_range_at_either_end_is_refused_before_anything_runs(tmp_path):
    spec = write_spec(tmp_path / "bad.yaml",
                      space={"model.dropout": {"uniform": [0.0, 1.5]}})
    proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw")
    assert proc.returncode == 2 and "model.dropout" in proc.stderr, proc.stderr
    assert not (tmp_path / "sw").exists()


def test_missing_optuna_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "optuna").mkdir(parents=True)
    (blocker / "optuna" / "__init__.py").write_text("raise ImportError('no optuna here')\n")
    spec = write_spec(tmp_path / "spec.yaml")
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir",
                           str(tmp_path / "sw")], cwd=REPO, capture_output=True, text=True,
                          env=cli_env(PYTHONPATH=f"{blocker}{os.pathsep}{REPO}"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: install optuna: pip install -e '.[sweep]'"
    assert not (tmp_path / "sw").exists()


def test_dry_run_prints_quoted_worker_lines_and_creates_nothing(tmp_path):
    hostile = tmp_path / "a dir $(touch pwned) `x`"
    spec = write_spec(tmp_path / "spec.yaml")
    proc = run_cli("sweep", "run", spec, "--dir", hostile, "--jobs", 3, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    words = shlex.split(lines[0])
    assert words[words.index("--dir") + 1] == str(hostile.resolve())
    assert words[words.index("--jobs") + 1] == "1"
    assert not hostile.exists() and not (REPO / "pwned").exists()


def test_a_base_config_not_found_says_where_it_was_looked_for(tmp_path):
    # The shipped sweeps/example.yaml names configs/default.yaml, found from the repository's
    # root only; run from elsewhere it said "config file not found" without saying where from.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "sweep", "run",
                           str(REPO / "sweeps" / "example.yaml"), "--dir", "sw", "--dry-run"],
                          cwd=elsewhere, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {REPO / 'sweeps' / 'example.yaml'}: base: configs/default.yaml: config file not "
        f"found in the current directory ({elsewhere}) nor beside the spec ({REPO / 'sweeps'})")
    assert not (elsewhere / "sw").exists()


ALIAS_BOMB_SPACE = """
  model.hidden:
    choice: &h
      - &a [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
      - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      - &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      - &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      - &i [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
"""


def _spec_ending_in_space(tmp_path: Path, extra: str) -> Path:
    """A small spec whose ``space`` comes last, so that ``extra`` lines add to it."""
    text = (f"base: {REPO / 'configs' / 'default.yaml'}\nset: {{train.epochs: 2}}\ntrials: 2\n"
            f"space:\n  optimizer.lr: {{log_uniform: [1.0e-4, 1.0e-2]}}\n") + extra
    (tmp_path / "spec.yaml").write_text(text)
    return tmp_path / "spec.yaml"


@pytest.mark.parametrize("extra, problem", [
    (ALIAS_BOMB_SPACE, "anchor &h refused"),
    ("  model.activation: {choice: " + "[" * 40 + "]" * 40 + "}\n", "nested more than"),
])
def test_a_hostile_spec_is_refused_like_a_hostile_config(tmp_path, extra, problem):
    # The spec was read with yaml.safe_load: an alias bomb in a choice list (under 800 bytes)
    # ran for minutes and grew without bound (each level 10x: one fewer took 6 s and 170 MB),
    # where a config with the same text is refused at once.
    spec = _spec_ending_in_space(tmp_path, extra)
    proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw", "--dry-run", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and problem in proc.stderr
    assert proc.stderr.startswith(f"error: {spec}: invalid YAML at line ")
    assert not (tmp_path / "sw").exists()


def test_a_huge_spec_is_refused_before_it_is_read(tmp_path):
    spec = _spec_ending_in_space(tmp_path, "#" * (2 << 20) + "\n")
    proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw", "--dry-run", timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "too large" in proc.stderr
    assert not (tmp_path / "sw").exists()


def test_workers_without_slurm_is_refused_not_ignored(tmp_path):
    # --workers sizes a Slurm array; here --jobs counts the workers (and the --dry-run lines).
    # Given alone it used to be ignored silently: "--dry-run --workers 3" printed one line.
    spec = write_spec(tmp_path / "spec.yaml")
    proc = run_cli("sweep", "run", spec, "--dir", tmp_path / "sw", "--dry-run", "--workers", 3)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: --workers goes with --slurm (on this machine, --jobs sets how many workers)")
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_sigkilled_worker_trial_is_resumed_from_its_checkpoint(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=1,
                      set={"train.epochs": 5, "data.subset": 6000, "model.hidden": [64]})
    sweep_dir = tmp_path / "sw"
    run_dir = _sigkill_worker_at_epoch(spec, sweep_dir, real_data_dir, 2)
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["interrupted"]
    saved = json.loads((run_dir / "summary.json").read_text())["epochs_completed"]
    assert saved < 5, "the trial finished before it was killed: make it longer"

    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished"]
    assert run_dirs(sweep_dir) == [run_dir]                  # the same run, not a new one
    log = (run_dir / "train.log").read_text()
    # The recorder writes an epoch's metrics, then its checkpoint, then the summary: a kill
    # between the last two resumes from the checkpoint, one epoch past what the summary says.
    assert any(f"resumed at epoch {e}" in log for e in (saved - 1, saved, saved + 1)), log
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 6))                        # every epoch once, none twice


@pytest.mark.slow
def test_a_trial_whose_run_finished_untold_is_told_by_the_next_worker_and_not_trained_again(
        tmp_path, real_data_dir):
    """A worker stopped between its run's end and telling the study (here made for certain: the
    worker killed mid-run, the run then finished by hand with `train --resume`). The next
    `sweep run` tells the study the run's result and trains nothing: the run is not lost, nor
    trained twice."""
    spec = write_spec(tmp_path / "spec.yaml", trials=1,
                      set={"train.epochs": 5, "data.subset": 6000, "model.hidden": [64]})
    sweep_dir = tmp_path / "sw"
    run_dir = _sigkill_worker_at_epoch(spec, sweep_dir, real_data_dir, 2)
    finish = run_cli("train", "--resume", run_dir, "--data-dir", real_data_dir)
    assert finish.returncode == 0, finish.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 5
    assert [t["state"] for t in status(sweep_dir)["trials"]] == ["interrupted"]
    trained = (run_dir / "metrics.jsonl").read_text()

    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    (trial,) = status(sweep_dir)["trials"]
    assert trial["state"] == "finished"
    assert trial["best_val_acc"] == pytest.approx(summary["best_val_acc"])
    assert (run_dir / "metrics.jsonl").read_text() == trained           # no epoch trained again
    assert run_dirs(sweep_dir) == [run_dir]


@pytest.mark.slow
def test_pruned_trial_is_marked_in_study_and_runs_table(tmp_path, real_data_dir):
    sweep_dir = run_pruned_sweep(tmp_path, real_data_dir)
    st = status(sweep_dir)
    assert st["trials"][0]["params"]["optimizer.lr"] == 0.01, "grid order changed: pick a seed"
    assert [t["state"] for t in st["trials"]] == ["finished", "pruned"]
    pruned = st["trials"][1:]
    table = {r["run"]: r for r in json.loads(run_cli("runs", "--runs-dir", sweep_dir / "runs",
                                                      "--json").stdout)}
    for t in pruned:
        run_dir = Path(t["run_dir"])
        assert table[run_dir.name]["status"] == "pruned"
        assert t["params"]["optimizer.lr"] < 1e-6
        assert t["epochs"] < 3
        assert (run_dir / "checkpoints" / "last.npz").is_file()
    assert max(st["trials"], key=lambda t: t["best_val_acc"])["params"]["optimizer.lr"] == 0.01


@pytest.mark.slow
def test_trial_killed_before_its_first_epoch_starts_over_as_one_run(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=1,
                      set={"train.epochs": 1, "data.subset": 20000, "model.hidden": [128]})
    sweep_dir = tmp_path / "sw"
    stub = _sigkill_worker_at_epoch(spec, sweep_dir, real_data_dir, 0)
    assert not (stub / "checkpoints" / "last.npz").exists(), "epoch 1 ended first: make it longer"
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(sweep_dir)
    assert run_dir != stub and not stub.exists()
    assert [t["state"] for t in status(sweep_dir)["trials"]] == ["finished"]


def _sigkill_worker_at_epoch(spec: Path, sweep_dir: Path, data_dir: Path, epoch: int) -> Path:
    """Start one sweep worker, SIGKILL it once its trial has ``epoch`` epochs saved (0: once its
    run directory exists); returns that run directory."""
    cmd = [sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir", str(sweep_dir),
           "--data-dir", str(data_dir)]
    worker = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stderr=subprocess.DEVNULL)
    try:
        return _wait_for_epoch(sweep_dir, epoch, worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()


def _wait_for_epoch(sweep_dir: Path, epoch: int, proc, timeout: float = 120, runs: int = 1) -> Path:
    """A run directory of the sweep once ``runs`` runs have ``epoch`` epochs saved (epoch 0: once
    they exist)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker ended early"
        ready = []
        for summary in sorted(sweep_dir.glob("runs/*/summary.json")):
            try:
                done = json.loads(summary.read_text()).get("epochs_completed", 0)
            except (OSError, json.JSONDecodeError):
                continue
            if done >= epoch and (epoch == 0 or (summary.parent / "checkpoints" / "last.npz").is_file()):
                ready.append(summary.parent)
        if len(ready) >= runs:
            return ready[0]
        time.sleep(0.05)
    raise AssertionError(f"no run reached epoch {epoch}")


@pytest.mark.slow
def test_sigterm_to_local_sweep_saves_every_trial_and_rerun_resumes_them(tmp_path, real_data_dir):
    # 30 epochs: the later trial's run is surely mid-training when the signal comes.
    spec = write_spec(tmp_path / "spec.yaml", trials=2,
                      set={"train.epochs": 30, "data.subset": 6000, "model.hidden": [64]})
    sweep_dir = tmp_path / "sw"
    cmd = [sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir", str(sweep_dir),
           "--jobs", "2", "--data-dir", str(real_data_dir)]
    sweep = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(sweep_dir, 1, sweep, runs=2)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err
    st = status(sweep_dir)
    assert st["trials"] and {t["state"] for t in st["trials"]} <= {"interrupted", "finished"}
    interrupted = [Path(t["run_dir"]) for t in st["trials"] if t["state"] == "interrupted"]
    # A run can finish just before the signal, its worker stopped before telling the study: the
    # trial still reads interrupted, its run finished; the rerun tells the study, training nothing.
    summaries = {d: json.loads((d / "summary.json").read_text()) for d in interrupted}
    assert all(s["status"] in ("interrupted", "finished") for s in summaries.values()), summaries
    resumable = [d for d, s in summaries.items() if s["status"] == "interrupted"]
    assert resumable
    told_only = {d: s["epochs_completed"] for d, s in summaries.items() if s["status"] == "finished"}

    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--jobs", 2,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished", "finished"]
    assert len(run_dirs(sweep_dir)) == 2
    for run_dir in resumable:
        assert "resumed at epoch" in (run_dir / "train.log").read_text()
    for run_dir, epochs in told_only.items():
        assert "resumed at epoch" not in (run_dir / "train.log").read_text()
        assert json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == epochs


def test_slurm_without_sbatch_is_one_line_and_creates_nothing(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir",
                           str(tmp_path / "sw"), "--slurm"], cwd=REPO, capture_output=True,
                          text=True, env=cli_env(PATH=str(empty_bin)))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "sbatch not found on PATH" in proc.stderr
    assert not (tmp_path / "sw").exists()


def test_status_of_a_directory_that_is_no_sweep_is_one_line(tmp_path):
    proc = run_cli("sweep", "status", tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not a sweep directory" in proc.stderr


@pytest.mark.parametrize("spec", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_spec_is_valid(spec):
    from fmnist_mlp.sweep.spec import load_spec

    loaded = load_spec(spec)
    assert loaded.space and loaded.trials >= 1


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_failed_and_the_sweep_goes_on(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=2,
                      set={"train.epochs": 2, "data.subset": 1000, "data.val_size": 500,
                           "model.hidden": [16], "optimizer.name": "sgd", "schedule.name": "constant"},
                      space={"optimizer.lr": {"log_uniform": [1.0e+6, 1.0e+7]}})
    sweep_dir = tmp_path / "sw"
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["failed", "failed"]
    assert st["budget_left"] == 0 and st["best"] is None
    for t in st["trials"]:
        assert json.loads((Path(t["run_dir"]) / "summary.json").read_text())["status"] == "failed"
    assert "diverged" in proc.stderr


def test_a_spec_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    # It said "sweep spec not found" for a FIFO that is there; a config says what it is.
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    proc = run_cli("sweep", "run", fifo, "--dir", tmp_path / "sw", "--dry-run", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {fifo}: not a regular file (a device, FIFO or "
                                   f"socket); give the sweep spec as a file")
    assert not (tmp_path / "sw").exists()


def test_a_claim_lock_held_by_a_stopped_worker_is_one_error_not_a_hang(tmp_path):
    """Another process holds DIR/.claim.lock (as a worker stopped with Ctrl-Z would): the wait
    ends with one line naming the lock; once the holder is gone, the lock is taken at once."""
    from fmnist_mlp.errors import FmnistMlpError
    from fmnist_mlp.sweep.flocks import claim_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(tmp_path / '.claim.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(FmnistMlpError, match=r"\.claim\.lock: waited 0\.5 s for it; another worker"):
            with claim_lock(tmp_path, wait=0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    with claim_lock(tmp_path, wait=5):
        pass


def test_a_trial_is_planned_from_the_base_config_as_read_when_the_spec_was_loaded(tmp_path):
    """The base file is read once: a trial's plan is the base as read, the fixed set and the
    trial's parameters, checked and planned in one go; editing the file mid-sweep changes no
    later trial behind sweep.json's back (its identity was recorded from the same reading)."""
    from fmnist_mlp.config.load import plan_from
    from fmnist_mlp.sweep.spec import load_spec

    base = tmp_path / "base.yaml"
    base.write_text("model: {hidden: [16]}\noptimizer: {lr: 0.01}\n", encoding="utf-8")
    (tmp_path / "spec.yaml").write_text(
        "base: base.yaml\nset: {train.epochs: 2}\nmethod: grid\n"
        "space:\n  optimizer.weight_decay: {choice: [0.0, 0.001]}\n", encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml")
    base.write_text("model: {hidden: [64]}\noptimizer: {lr: 0.5}\n", encoding="utf-8")
    plan = spec.trial_plan({"optimizer.weight_decay": 0.001})
    expected = plan_from({"model": {"hidden": [16]}, "optimizer": {"lr": 0.01}},
                         {"train.epochs": 2, "optimizer.weight_decay": 0.001})[0]
    assert plan.record.config == expected.record.config
    assert plan.record.config["optimizer"]["lr"] == 0.01
    assert plan.record.config["model"]["hidden"] == [16]
    assert spec.identity()["base_config"]["optimizer"]["lr"] == 0.01
    base.unlink()                               # nothing reads the file again
    assert spec.trial_plan({"optimizer.weight_decay": 0.0}).loop.epochs == 2
