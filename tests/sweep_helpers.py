"""Helpers shared by the sweep tests: write a spec, run the CLI, read a sweep back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_spec(path: Path, **fields) -> Path:
    spec = {"base": str(REPO / "configs" / "default.yaml"),
            "set": {"train.epochs": 2, "data.subset": 1000, "data.val_size": 500,
                    "model.hidden": [16]},
            "method": "random", "trials": 4, "pruner": "none",
            "space": {"optimizer.lr": {"log_uniform": [1e-3, 1e-2]},
                      "train.batch_size": {"choice": [64, 128]}}}
    spec.update(fields)
    path.write_text(yaml.safe_dump(spec))
    return path


def cli_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("FMNIST_MLP_SWEEP_CHILD", None)
    return env


def run_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout, **kw)


def status(sweep_dir: Path) -> dict:
    proc = run_cli("sweep", "status", sweep_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in (sweep_dir / "runs").iterdir() if p.is_dir())
