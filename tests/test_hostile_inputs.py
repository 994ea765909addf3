"""Hostile configs and run folders (issue 13): YAML alias bombs and deep nesting, configs that are
not regular files, odd runs in `fmnist-mlp runs`, terminal escapes in run names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"] +
                 [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]"
                  for i in range(4)]) + "\n"          # 10^5 strings from 250 bytes


def fmnist(*args, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ------------------------------------------------------------------------- configs


@pytest.mark.parametrize("text, expected", [
    ("seed: &s 1\ntrain: {epochs: *s}\n", "alias"),
    (BOMB, "anchor"),
    ("model:\n  hidden: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("seed: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested"),
], ids=["alias", "billion-laughs", "deep-list", "deep-map"])
def test_config_aliases_and_deep_nesting_are_refused(tmp_path, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    proc = fmnist("train", "--config", config, "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 2
    assert expected in one_line(proc) and "c.yaml" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "&a [1]", "x" * 20000])
def test_hostile_set_values_are_refused_in_one_line(tmp_path, value):
    proc = fmnist("train", "--set", f"model.hidden={value}", "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 2
    assert "--set model.hidden" in one_line(proc)


def test_a_config_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc = fmnist("train", "--config", fifo, "--runs-dir", tmp_path / "runs", timeout=30)
    assert proc.returncode == 2
    assert "not a regular file" in one_line(proc)


def test_dev_zero_as_a_config_is_refused():
    proc = fmnist("train", "--config", "/dev/zero", "--runs-dir", "/nonexistent/runs", timeout=30)
    assert proc.returncode == 2
    assert "not a regular file" in one_line(proc)


def test_an_oversized_config_is_refused(tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text("# padding\n" * 200_000)          # 2 MB of comments
    proc = fmnist("train", "--config", config, "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 2
    assert "too large" in one_line(proc)


# ------------------------------------------------------------------------- fmnist-mlp runs


def _fake_run(runs_dir: Path, dirname: str, config: str, summary) -> Path:
    run = runs_dir / dirname
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config)
    (run / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return run


GOOD_SUMMARY = {"status": "finished", "name": "good", "best_val_acc": 0.9, "test_acc": 0.89,
                "epochs_completed": 3, "wall_time": 12.5}


def test_runs_table_marks_each_odd_run_and_prints_the_rest(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "20260101-000000-good-aaaaaa", "seed: 1\noptimizer: {lr: 0.01}\n", GOOD_SUMMARY)
    _fake_run(runs, "20260101-000001-bomb-bbbbbb", BOMB, GOOD_SUMMARY)
    _fake_run(runs, "20260101-000002-date-cccccc", "seed: 2\nstarted: 2026-01-01\n", GOOD_SUMMARY)
    _fake_run(runs, "20260101-000003-nest-dddddd", "seed: 3\nmodel: {hidden: [[1, [2]], 3]}\n",
              GOOD_SUMMARY)
    _fake_run(runs, "20260101-000004-odd-eeeeee", "seed: 4\n",
              {**GOOD_SUMMARY, "wall_time": "yesterday", "best_val_acc": [1], "status": 7})
    _fake_run(runs, "20260101-000005-json-ffffff", "seed: 5\n", "{not json")
    _fake_run(runs, "20260101-000006-deep-gggggg", "seed: " + "[" * 3000 + "]" * 3000, GOOD_SUMMARY)
    for extra in ([], ["--json"], ["--csv"], ["--sort", "wall_time"]):
        proc = fmnist("runs", "--runs-dir", runs, *extra)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        assert "20260101-000000-good-aaaaaa" in proc.stdout
        assert proc.stdout.count("unreadable") == 3          # bomb, not-json, deep
    rows = {r["run"]: r for r in json.loads(fmnist("runs", "--runs-dir", runs, "--json").stdout)}
    assert len(rows) == 7
    assert rows["20260101-000000-good-aaaaaa"]["best_val_acc"] == 0.9
    assert rows["20260101-000004-odd-eeeeee"]["wall_time"] is None


def test_an_unreadable_run_does_not_make_every_config_key_a_column(tmp_path):
    # Two readable runs that differ only in optimizer.lr, and one alias bomb: the table shows
    # optimizer.lr only; the unreadable run has no config to differ in.
    runs = tmp_path / "runs"
    _fake_run(runs, "20260101-000000-good-aaaaaa", "seed: 1\noptimizer: {lr: 0.01}\n", GOOD_SUMMARY)
    _fake_run(runs, "20260101-000001-also-bbbbbb", "seed: 1\noptimizer: {lr: 0.1}\n", GOOD_SUMMARY)
    _fake_run(runs, "20260101-000002-bomb-cccccc", BOMB, GOOD_SUMMARY)
    proc = fmnist("runs", "--runs-dir", runs, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in json.loads(proc.stdout)}
    assert rows["20260101-000002-bomb-cccccc"]["status"] == "unreadable"
    assert "optimizer.lr" in rows["20260101-000000-good-aaaaaa"]
    assert not any(k == "seed" for row in rows.values() for k in row)
    header = fmnist("runs", "--runs-dir", runs).stdout.splitlines()[0].split()
    assert header == ["run", "name", "optimizer.lr", "best_val_acc", "test_acc", "epochs",
                      "wall_time", "status"]


def test_terminal_escapes_in_run_names_never_reach_the_terminal(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "20260101-000000-x\x1b]0;pwned\x07-aaaaaa", "seed: 1\n",
              {**GOOD_SUMMARY, "name": "evil\x1b[2J\x1b[31m", "status": "finished\x1b[0m"})
    for extra in ([], ["--csv"]):
        proc = fmnist("runs", "--runs-dir", runs, *extra)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
        assert "\\x1b" in proc.stdout


def test_terminal_escapes_in_a_path_never_reach_stderr(tmp_path):
    proc = fmnist("eval", tmp_path / "no\x1b[2Jsuch")
    assert proc.returncode == 1
    assert "\x1b" not in proc.stderr and "\\x1b" in one_line(proc)
