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


def run_cli_read_only(read_only: list[Path], *args, timeout=300) -> subprocess.CompletedProcess:
    """The CLI in a private mount namespace where each folder of ``read_only`` is mounted
    read-only (EROFS even for root): what a colleague's group-readable sweep is to its reader."""
    import shlex
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        from conftest import require_or_skip

        require_or_skip("a read-only mount for the test needs root and unshare (util-linux)")
    mounts = " && ".join(f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(d))} && "
                         f"mount -o remount,ro,bind {shlex.quote(str(d))}" for d in read_only)
    command = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "fmnist_mlp", *args])
    return subprocess.run(["unshare", "-m", "sh", "-c", f"{mounts} && exec {command}"], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """Assert the CLI failed with ``code`` and exactly one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def tree(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` with its bytes (links as their target text); the holder
    a lock file records (pid and host) is not content."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.name.endswith((".lock", ".flock")) and not p.is_symlink():
            out[str(p.relative_to(directory))] = b"<lock>"
            continue
        if p.is_symlink():
            out[str(p.relative_to(directory))] = os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(directory))] = p.read_bytes()
        else:
            out[str(p.relative_to(directory))] = b"<dir>"
    return out


def run_tiny_sweep(directory: Path, data_dir, trials: int = 3) -> tuple[Path, Path]:
    """A finished sweep of ``trials`` tiny trials in ``directory``/sw: (its spec, its folder)."""
    spec = write_spec(directory / "spec.yaml", trials=trials)
    proc = run_cli("sweep", "run", spec, "--dir", directory / "sw", "--data-dir", data_dir)
    assert proc.returncode == 0, proc.stderr
    return spec, directory / "sw"


def run_pruned_sweep(directory: Path, data_dir) -> Path:
    """A grid of two 3-epoch trials where lr 1e-7 cannot learn: once the trial with a working lr
    (grid seed 1 puts lr 0.01 first) has finished, the median pruner (one start-up trial) stops
    the hopeless one after its first epoch. Returns the sweep folder."""
    spec = write_spec(directory / "spec.yaml", method="grid", seed=1,
                      pruner={"median": {"n_startup_trials": 1}},
                      set={"train.epochs": 3, "data.subset": 1000, "data.val_size": 500,
                           "model.hidden": [16]},
                      space={"optimizer.lr": {"choice": [0.01, 1e-7]}})
    proc = run_cli("sweep", "run", spec, "--dir", directory / "sw", "--data-dir", data_dir)
    assert proc.returncode == 0, proc.stderr
    return directory / "sw"
