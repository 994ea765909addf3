"""train --dry-run (the plan, nothing written), train --seeds (one run per seed, mean ± std) and
runs --group-seeds, as subprocesses on the real data."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "train.epochs=1", "--set", "model.hidden=[8]", "--set", "data.subset=600"]


def fmnist(*args, cwd, data_dir=None, timeout=180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if data_dir is not None:
        env["FMNIST_MLP_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_prints_the_resolved_config_and_the_plan_and_writes_nothing(tmp_path):
    from fmnist_mlp.config.load import config_to_dict, load_config

    config = REPO / "configs" / "fast.yaml"
    proc = fmnist("train", "--config", config, "--set", "model.hidden=[64]", "--dry-run",
                  "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text, _, plan = proc.stdout.partition("\nmodel: ")
    assert yaml.safe_load(text) == config_to_dict(load_config(config, ["model.hidden=[64]"]))
    # 784*64 + 64*10 weights, 10 biases, batch norm's gamma and beta for the 64 hidden units
    assert plan.startswith("784 -> 64 -> 10 (50,954 parameters, float32)")
    assert "memory: about " in plan and "55,000 training rows, 5,000 validation rows" in plan
    assert "steps: 108 per epoch (batch 512) x 15 epochs = 1,620" in plan
    assert not (tmp_path / "runs").exists() and sorted(os.listdir(tmp_path)) == []


def test_dry_run_of_a_bad_config_is_one_line_and_exit_2(tmp_path):
    proc = fmnist("train", "--set", "model.hiden=[8]", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "model.hiden" in proc.stderr and "did you mean" in proc.stderr


@pytest.mark.parametrize("seeds, fragment", [("0,x", "'x' is not a non-negative integer"),
                                             ("1,1", "a seed is given twice"),
                                             ("-1", "is not a non-negative integer")])
def test_bad_seeds_are_a_usage_error_before_anything_is_written(tmp_path, seeds, fragment):
    proc = fmnist("train", "--config", REPO / "configs/fast.yaml", "--seeds", seeds,
                  "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert proc.returncode == 2 and fragment in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_seeds_do_not_go_with_resume(tmp_path):
    proc = fmnist("train", "--resume", tmp_path, "--seeds", "0,1", cwd=tmp_path)
    assert proc.returncode == 2 and "--seeds" in proc.stderr


@pytest.mark.realdata
def test_seeds_train_one_run_each_and_report_the_mean_and_std(real_data_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    proc = fmnist("train", "--config", REPO / "configs/fast.yaml", *TINY, "--seeds", "0,1",
                  "--runs-dir", runs_dir, cwd=tmp_path, data_dir=real_data_dir)
    assert proc.returncode == 0, proc.stderr
    run_dirs = [Path(line) for line in proc.stdout.splitlines()]
    assert [d.name.split("-", 2)[2].rsplit("-", 1)[0] for d in run_dirs] == ["fast-seed0",
                                                                               "fast-seed1"]
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in run_dirs]
    assert [c["seed"] for c in configs] == [0, 1]
    accs = [s["test_acc"] for s in summaries]
    assert accs[0] != accs[1]                    # two seeds, two runs
    mean, std = statistics.fmean(accs), statistics.stdev(accs)
    assert f"test acc over 2 seeds: {mean:.4f} ± {std:.4f}" in proc.stderr
    assert f"seed 1: test acc {accs[1]:.4f}" in proc.stderr

    grouped = fmnist("runs", "--runs-dir", runs_dir, "--group-seeds", "--json", cwd=tmp_path)
    assert grouped.returncode == 0, grouped.stderr
    (row,) = json.loads(grouped.stdout)
    assert row["name"] == "fast" and row["runs"] == 2 and row["seeds"] == "0,1"
    assert row["test_acc"] == pytest.approx(mean) and row["test_acc_std"] == pytest.approx(std)
    text = fmnist("runs", "--runs-dir", runs_dir, "--group-seeds", cwd=tmp_path).stdout
    assert text.splitlines()[0].split() == ["name", "runs", "seeds", "best_val_acc",
                                            "best_val_acc_std", "test_acc", "test_acc_std"]


@pytest.mark.realdata
def test_seeds_with_json_print_one_object_and_nothing_else_on_stdout(real_data_dir, tmp_path):
    proc = fmnist("train", "--config", REPO / "configs/fast.yaml", *TINY, "--seeds", "3",
                  "--json", "--runs-dir", tmp_path / "runs", cwd=tmp_path, data_dir=real_data_dir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (summary,) = report["runs"]
    assert report["seeds"] == [3] and summary["status"] == "finished"
    assert report["test_acc"] == {"mean": summary["test_acc"], "std": 0.0,
                                  "values": [summary["test_acc"]]}
    assert Path(summary["run_dir"]).name.split("-", 2)[2].startswith("fast-seed3-")


def test_the_whole_runs_time_left_reads_short():
    from fmnist_mlp.training.progress import RunClock, format_duration

    assert [format_duration(s) for s in (7.4, 65, 3599.6, 7380)] == ["7s", "1m05s", "1h00m",
                                                                      "2h03m"]
    clock = RunClock()
    clock.start(first_epoch=4, epochs=10)       # a run resumed after epoch 4
    assert clock.left(4) == "?"                 # nothing trained here yet: no estimate
    clock.t0 -= 30.0                            # 30 s for the 2 epochs trained here
    assert clock.left(6) == "1m00s"             # 4 epochs left at 15 s each
