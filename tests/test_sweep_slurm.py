"""Sweeps on a real single-node Slurm cluster started by scripts/slurm-cluster.sh (needs root and
Debian's slurmctld, slurmd, slurm-client and munge; skipped with the reason where absent, required
when CI=true, where .ci/run installs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import REPO, cli_env, run_dirs, status, write_spec
from sweep_services import start_slurm, stop_slurm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a private one-node cluster; its daemons are stopped by pid at the end."""
    state = tmp_path_factory.mktemp("slurm")
    conf = start_slurm(state, two_nodes=False)
    yield conf
    stop_slurm(state)


def test_slurm_array_sweep_survives_a_requeued_task(slurm_cluster, real_data_dir, tmp_path):
    """--slurm --wait runs 4 trials on a job array of 2 workers; one task, requeued mid-trial
    (as pre-emption does), saves its trial, which is resumed from its checkpoint: still 4 trials."""
    # 60 short epochs (about 0.2 s each): the requeue, sent at epoch 2 or 3, must land while the
    # trial still trains; with 6 epochs of 0.4 s the trial once finished before the signal came.
    spec = write_spec(tmp_path / "spec.yaml", trials=4,
                      set={"train.epochs": 60, "data.subset": 10000, "model.hidden": [128]})
    sweep_dir = tmp_path / "sw"
    env = cli_env(SLURM_CONF=str(slurm_cluster))
    os.environ["SLURM_CONF"] = str(slurm_cluster)        # for status() and scontrol below
    sweep = subprocess.Popen(
        [sys.executable, "-m", "fmnist_mlp", "sweep", "run", str(spec), "--dir", str(sweep_dir),
         "--slurm", "--workers", "2", "--wait", "--data-dir", str(real_data_dir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        trial = _trial_past_epoch(sweep_dir, 2, sweep)
        task = trial["worker"].split(" slurm ")[1]
        subprocess.run(["scontrol", "requeue", task], check=True, env=env, timeout=30)
        out, err = sweep.communicate(timeout=540)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, err
    job_id = out.split()[0]
    assert task.startswith(job_id + "_")
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished"] * 4
    assert len(run_dirs(sweep_dir)) == 4
    run_dir = Path(trial["run_dir"])
    log = (run_dir / "train.log").read_text()
    assert "interrupted" in log and "resumed at epoch" in log, log
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 61))
    outputs = list((sweep_dir / "slurm").glob(f"{job_id}_*.out"))
    assert len(outputs) == 2


def _trial_past_epoch(sweep_dir: Path, epoch: int, proc, timeout: float = 300) -> dict:
    """The study's row of a trial whose run has saved ``epoch`` (but not all) epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for summary in sorted(sweep_dir.glob("runs/*/summary.json")):
            try:
                done = json.loads(summary.read_text()).get("epochs_completed", 0)
            except (OSError, json.JSONDecodeError):
                continue
            if epoch <= done <= 3:
                rows = {t["run_dir"]: t for t in status(sweep_dir)["trials"]}
                row = rows.get(str(summary.parent))
                if row and row["state"] == "running" and " slurm " in (row["worker"] or ""):
                    return row
        time.sleep(0.05)
    raise AssertionError(f"no trial reached epoch {epoch}")
