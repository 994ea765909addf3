"""Sweeps on many machines: a real PostgreSQL server holds the study and a real two-node Slurm
cluster on this host (nodeA, nodeB: scripts/slurm-cluster.sh start-two) runs the workers.

What is shown: a node's worker SIGKILLed mid-trial is taken over by the other node from the
trial's checkpoint; workers for which flock does nothing at all (as on filesystems that keep
locks per node) still train no trial twice, because the database alone coordinates; a task
requeued by ``scontrol requeue``, one warned of its time limit (SIGUSR1, which makes it requeue
itself) and one ended by ``scancel`` lose no epoch. Every epoch of every trial is trained exactly
once (metrics.jsonl and train.log of every run), and the budget is counted right.

Trials are tiny (a few thousand rows, hidden [16]); heartbeats every 1 s, taken over after 4 s.
Needs root, PostgreSQL and Slurm: skipped with the reason where absent, required when CI=true."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_or_skip
from sweep_helpers import REPO, cli_env, run_dirs, status, write_spec
from sweep_services import start_postgres, start_slurm, stop_slurm

pytestmark = pytest.mark.slow

EPOCHS = 100                 # about 2 s a trial on a quiet host: room to act mid-trial
TINY = {"train.epochs": EPOCHS, "data.subset": 3000, "data.val_size": 500, "model.hidden": [16]}
BEAT = {"FMNIST_MLP_SWEEP_HEARTBEAT": "1", "FMNIST_MLP_SWEEP_GRACE": "4"}

FLOCK_SHIM = r"""
/* flock() that always succeeds and locks nothing: a filesystem whose locks do not reach the
   other workers (per-node flock), taken to the extreme. */
int flock(int fd, int operation) { (void)fd; (void)operation; return 0; }
"""


@pytest.fixture(scope="session")
def postgres():
    pg = start_postgres()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def two_nodes(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm2")
    conf = start_slurm(state, two_nodes=True)
    yield conf
    stop_slurm(state)


@pytest.fixture(scope="session")
def no_flock(tmp_path_factory) -> Path:
    """A shared library that, preloaded, turns every flock() of a process into a no-op."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        require_or_skip("no C compiler (apt-get install gcc) to build the flock shim")
    folder = tmp_path_factory.mktemp("shim")
    (folder / "noflock.c").write_text(FLOCK_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(folder / "noflock.so"),
                    str(folder / "noflock.c")], check=True, capture_output=True)
    return folder / "noflock.so"


def _start(spec: Path, sweep_dir: Path, url: str, conf: Path, data_dir: Path, **extra_env):
    env = cli_env(SLURM_CONF=str(conf), **{**BEAT, **extra_env})
    os.environ["SLURM_CONF"] = str(conf)            # for status() and scontrol below
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir", str(sweep_dir),
         "--storage", url, "--slurm", "--workers", "2", "--wait", "--data-dir", str(data_dir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout: float = 150) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err


class _Study:
    """The sweep's study read in this process (fast enough to catch a trial mid-way)."""

    def __init__(self, sweep_dir: Path, url: str):
        self.sweep_dir, self.url, self.study = sweep_dir, url, None

    def trials(self) -> list:
        import optuna

        if self.study is None:
            try:
                name = json.loads((self.sweep_dir / "sweep.json").read_text())["study_name"]
                self.study = optuna.load_study(study_name=name, storage=self.url)
            except Exception:       # not created yet (sweep.json, or the study's tables)
                return []
        return self.study.get_trials(deepcopy=False)


def _trial_mid_way(study: _Study, proc, node: str | None = None, not_task: str | None = None,
                   timeout: float = 120) -> dict:
    """A running trial (on ``node``; not of task ``not_task``) whose run has saved at least one
    epoch and at most half of them: its number, run_dir and worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for t in study.trials():
            worker, run = t.user_attrs.get("worker") or "", t.user_attrs.get("run_dir")
            if t.state.name != "RUNNING" or not run or " slurm " not in worker:
                continue
            if (node and not worker.startswith(node + ":")) or \
                    (not_task and worker.endswith(" slurm " + not_task)):
                continue
            run_dir = study.sweep_dir / "runs" / run
            try:
                done = json.loads((run_dir / "summary.json").read_text()).get("epochs_completed", 0)
            except (OSError, json.JSONDecodeError):
                continue
            if 1 <= done <= EPOCHS // 2:
                return {"number": t.number, "run_dir": str(run_dir), "worker": worker}
        time.sleep(0.02)
    raise AssertionError(f"no trial {'on ' + node if node else ''} reached epoch 1 in time")


def _every_epoch_once(sweep_dir: Path, trials: int) -> list[dict]:
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished"] * trials
    assert st["budget_left"] == 0
    assert len(run_dirs(sweep_dir)) == trials                 # one run per trial, no spare
    for t in st["trials"]:
        lines = (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1)), t
    return st["trials"]


def _task_of(row: dict) -> str:
    return row["worker"].split(" slurm ")[1]


def test_a_nodes_killed_worker_is_taken_over_by_the_other_node(postgres, two_nodes, real_data_dir,
                                                                tmp_path):
    url = postgres.createdb("killed")
    spec = write_spec(tmp_path / "spec.yaml", trials=6, set=TINY)
    sweep_dir = tmp_path / "sw"
    started = time.monotonic()
    proc = _start(spec, sweep_dir, url, two_nodes, real_data_dir)
    victim = _trial_mid_way(_Study(sweep_dir, url), proc, node="nodeA")
    pid = int(victim["worker"].split(":")[1].split()[0])
    os.kill(pid, signal.SIGKILL)                    # nodeA's worker, mid-trial, no goodbye
    killed_at, killed_wall = time.monotonic(), time.time()
    out, err = _finish(proc)
    finished_at = time.monotonic()
    assert proc.returncode == 0, err
    trials = _every_epoch_once(sweep_dir, 6)
    row = next(t for t in trials if t["number"] == victim["number"])
    assert row["worker"].startswith("nodeB:"), row        # the other node finished it
    log = (Path(row["run_dir"]) / "train.log").read_text()
    assert "resumed at epoch" in log, log
    logs = "".join(p.read_text() for p in (sweep_dir / "slurm").glob("*.out"))
    resumed = [line for line in logs.splitlines() if f"trial {victim['number']}: resuming" in line]
    assert len(resumed) == 1 and " nodeB[" in resumed[0], logs
    # taken over once its silence passed the grace period (4 s), not minutes later
    stamp = datetime.datetime.strptime(resumed[0].split()[0], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert stamp - killed_wall < 4 + 1 + 10, resumed[0]
    print(f"\ntwo nodes, 6 trials x {EPOCHS} epochs: killed nodeA's worker at "
          f"{killed_at - started:.1f} s; sweep done at {finished_at - started:.1f} s; "
          f"resumed on nodeB: {resumed[0]}")


def test_workers_without_working_flock_never_train_a_trial_twice(postgres, two_nodes,
                                                                 real_data_dir, no_flock,
                                                                 tmp_path):
    """Every flock() of every worker is a no-op (the extreme of per-node locks): the database
    alone decides who trains what, and nothing is locked or needed in DIR/locks. Each trial
    lasts longer than the grace period (2 s here), and the worker left without a trial at the
    end watches the last one: a live worker's trial is never taken."""
    url = postgres.createdb("noflock")
    epochs = 300        # about 18 ms an epoch on a quiet host here: 5 s a trial, 2.5x the grace
    spec = write_spec(tmp_path / "spec.yaml", trials=4, set={**TINY, "train.epochs": epochs})
    sweep_dir = tmp_path / "sw"
    proc = _start(spec, sweep_dir, url, two_nodes, real_data_dir, LD_PRELOAD=str(no_flock),
                  FMNIST_MLP_SWEEP_GRACE="2")
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished"] * 4
    assert len(run_dirs(sweep_dir)) == 4
    for t in st["trials"]:
        run = Path(t["run_dir"])
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1)), t
        assert "resumed" not in (run / "train.log").read_text()
        summary = json.loads((run / "summary.json").read_text())
        assert summary["wall_time"] > 2, "a trial must outlast the grace period: make it longer"
    logs = "".join(p.read_text() for p in (sweep_dir / "slurm").glob("*.out"))
    assert "waiting for the trials other workers train" in logs
    for n in range(4):
        assert sum(f"trial {n}: started" in line for line in logs.splitlines()) == 1, logs
    # each line of the workers says when and where (several nodes write into DIR/slurm/)
    stamped = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} node[AB]\[\d+\] trial \d+: ")
    trial_lines = [line for line in logs.splitlines() if " trial " in line]
    assert trial_lines and all(stamped.match(line) for line in trial_lines), trial_lines
    assert {t["worker"].split(":")[0] for t in st["trials"]} == {"nodeA", "nodeB"}
    assert not (sweep_dir / "locks").exists() and not (sweep_dir / ".claim.lock").exists()


def test_requeue_time_limit_and_scancel_of_tasks_lose_no_epoch(postgres, two_nodes,
                                                               real_data_dir, tmp_path):
    """scontrol requeue of one task mid-trial; Slurm's time-limit warning (SIGUSR1 to the batch
    step, as --signal=B:USR1@120 sends it) to the other, which saves and requeues itself; then
    scancel of one task for good: the remaining worker finishes every trial from checkpoints."""
    url = postgres.createdb("requeue")
    spec = write_spec(tmp_path / "spec.yaml", trials=4, set=TINY)
    sweep_dir = tmp_path / "sw"
    env = cli_env(SLURM_CONF=str(two_nodes))
    proc = _start(spec, sweep_dir, url, two_nodes, real_data_dir)
    study = _Study(sweep_dir, url)
    first = _trial_mid_way(study, proc)
    requeued = _task_of(first)
    subprocess.run(["scontrol", "requeue", requeued], check=True, env=env, timeout=30)
    second = _trial_mid_way(study, proc, not_task=requeued)
    warned = _task_of(second)
    subprocess.run(["scancel", "--batch", "--signal=USR1", warned], check=True, env=env,
                   timeout=30)
    third = _trial_mid_way(study, proc, timeout=150)
    cancelled = _task_of(third)
    subprocess.run(["scancel", cancelled], check=True, env=env, timeout=30)
    out, err = _finish(proc, timeout=240)
    assert proc.returncode == 0, err
    _every_epoch_once(sweep_dir, 4)
    for row in (first, second, third):
        log = (Path(row["run_dir"]) / "train.log").read_text()
        assert "interrupted" in log and "resumed at epoch" in log, log
    logs = "".join(p.read_text() for p in (sweep_dir / "slurm").glob("*.out"))
    assert f"requeueing task {warned}" in logs, logs


def test_wait_after_scancel_exits_130_with_the_rerun_command(postgres, two_nodes, real_data_dir,
                                                             tmp_path):
    """scancel of the whole array mid-sweep: its workers save and release their trials, and
    ``--wait`` says the sweep is unfinished (130, the command that continues it), where it
    used to count the released trials' fresh heartbeats as running and exit 0."""
    url = postgres.createdb("cancelled")
    spec = write_spec(tmp_path / "spec.yaml", trials=6, set=TINY)
    sweep_dir = tmp_path / "sw"
    proc = _start(spec, sweep_dir, url, two_nodes, real_data_dir)
    row = _trial_mid_way(_Study(sweep_dir, url), proc)
    job = _task_of(row).split("_")[0]
    subprocess.run(["scancel", job], check=True, env=cli_env(SLURM_CONF=str(two_nodes)),
                   timeout=30)
    out, err = _finish(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "interrupted" in last and "running" not in last, err
    assert f"continue with: fmnist-mlp sweep run {spec} --dir {sweep_dir}" in last, err
    st = status(sweep_dir)
    assert "running" not in {t["state"] for t in st["trials"]}
    assert "failed" not in {t["state"] for t in st["trials"]}


def test_a_database_away_past_the_retry_window_requeues_the_tasks(postgres, two_nodes,
                                                                  real_data_dir, tmp_path):
    """PostgreSQL stopped mid-sweep for longer than the tasks' retry window (5 s; the ``--wait``
    launcher's is 60 s): a task training a trial saves it, marks its run interrupted and
    requeues itself (a task starting meanwhile exits 75, which RequeueExit=75 requeues); once
    the server is back the requeued tasks resume the trials and the sweep finishes with no
    trial failed and every epoch trained once."""
    url = postgres.createdb("away")
    spec = write_spec(tmp_path / "spec.yaml", trials=2, set=TINY)
    sweep_dir = tmp_path / "sw"
    env = cli_env(SLURM_CONF=str(two_nodes), **BEAT, FMNIST_MLP_SWEEP_DB_RETRY="60",
                  FMNIST_MLP_SWEEP_DB_TIMEOUT="2")
    os.environ["SLURM_CONF"] = str(two_nodes)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir", str(sweep_dir),
         "--storage", url, "--slurm", "--workers", "2", "--wait", "--data-dir",
         str(real_data_dir), "--sbatch-arg=--export=ALL,FMNIST_MLP_SWEEP_DB_RETRY=5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _trial_mid_way(_Study(sweep_dir, url), proc)
    postgres.halt()
    try:
        deadline = time.monotonic() + 120
        while True:
            logs = "".join(p.read_text() for p in (sweep_dir / "slurm").glob("*.out"))
            if "requeueing task" in logs or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        postgres.restart()
    assert "the database is away" in logs and "this Slurm task is requeued" in logs, logs
    out, err = _finish(proc, timeout=240)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    _every_epoch_once(sweep_dir, 2)
    logs = "".join(p.read_text() for p in (sweep_dir / "slurm").glob("*.out"))
    assert "Traceback" not in logs, logs
    assert logs.count("resuming") >= 1, logs
