"""scripts/sweep.sh against hostile axes and environments: no text from an axis is ever run as
code, the printed trial lines are safe to run as printed, and nothing is written under /."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "sweep.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def sweep_sh(*args, cwd, env=None):
    base = {**os.environ, "PYTHONPATH": str(REPO)}
    base["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x1b", "\x1f", "\x07"])
def test_control_characters_in_an_axis_are_refused(tmp_path, char):
    marker = tmp_path / "pwned"
    proc = sweep_sh("-n", f"optimizer.lr=1e-3,1e-2{char}$(touch {marker})", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == "" and "control characters" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not marker.exists()


def test_control_characters_in_an_axis_file_are_refused(tmp_path):
    grid = tmp_path / "grid.txt"
    grid.write_text("optimizer.lr=1e-3\x1b]0;title\x07\n")
    proc = sweep_sh("-n", "-f", str(grid), cwd=tmp_path)
    assert proc.returncode == 2 and "control characters" in proc.stderr


def test_printed_trial_lines_are_safe_to_run_as_printed(tmp_path):
    marker = tmp_path / "pwned"
    value = f"$(touch {marker})`touch {marker}`;touch {marker}"
    proc = sweep_sh("-n", "-r", f"runs/a b;$(touch {marker})", f"optimizer.lr=1e-3,{value}",
                    "--", "--set", f"train.epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    words = shlex.split(lines[1])
    assert f"optimizer.lr={value}" in words                 # the value arrives as one word
    assert words[words.index("--runs-dir") + 1] == f"runs/a b;$(touch {marker})"
    # Run the line the way GNU parallel or `bash -c` would: the config error is the only effect.
    run = subprocess.run(["bash", "-c", lines[1]], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO),
                              "PATH": f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert run.returncode == 2 and "optimizer.lr" in run.stderr
    assert not marker.exists()


def test_empty_runs_dir_is_refused_and_nothing_is_written_under_root(tmp_path):
    before = Path("/.sweep-logs").exists()
    proc = sweep_sh("-r", "", "optimizer.lr=1e-3", cwd=tmp_path)
    assert proc.returncode == 2 and "-r" in proc.stderr
    assert Path("/.sweep-logs").exists() == before


def test_empty_home_without_a_data_dir_is_refused(tmp_path):
    before = Path("/.cache/fmnist-mlp").exists()
    env = {k: "" for k in ("HOME", "FMNIST_MLP_DATA_DIR", "XDG_CACHE_HOME")}
    proc = sweep_sh("-r", str(tmp_path / "runs"), "optimizer.lr=1e-3", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "HOME" in proc.stderr
    assert Path("/.cache/fmnist-mlp").exists() == before
    assert not (tmp_path / "runs").exists()


def test_trial_number_out_of_range_is_refused(tmp_path):
    proc = sweep_sh("-i", "3", "-r", str(tmp_path / "runs"), "optimizer.lr=1e-3,3e-3", cwd=tmp_path)
    assert proc.returncode == 2 and "2 trial(s)" in proc.stderr


@pytest.mark.realdata
def test_one_trial_of_the_grid_runs_by_number(tmp_path, real_data_dir):
    proc = sweep_sh("-i", "2", "-r", str(tmp_path / "runs"), "-d", str(real_data_dir),
                    "optimizer.lr=1e-3,3e-3", "--", "--set", "train.epochs=1",
                    "--set", "data.subset=500", "--set", "data.val_size=500",
                    "--set", "model.hidden=[8]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "-sweep-2-" in run_dir.name
    assert "lr: 0.003" in (run_dir / "config.yaml").read_text()
