"""Optuna's private names (fmnist_mlp/sweep/optuna_private.py) against the Optuna in use, and
the sweep's database tests against the oldest Optuna the ``sweep`` extra allows.

The newest allowed Optuna is the one installed (the whole suite runs on it). The oldest is
installed by pip into a cache folder (FMNIST_MLP_OLD_OPTUNA_DIR, default
~/.cache/fmnist-mlp/optuna-<version>) and put first on PYTHONPATH for a subprocess that runs
the door's test, the take-over cap and a real two-worker sweep coordinated by a database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_or_skip
from sweep_helpers import REPO

pytestmark = pytest.mark.usefixtures("needs_optuna")


def test_the_private_door_works_with_this_optuna(tmp_path):
    import optuna

    from fmnist_mlp.sweep import optuna_private as private

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}",
                                         heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="door", direction="maximize")
    assert isinstance(private.study_id(study), int)
    asked = study.ask()
    tid = private.trial_id(asked)
    assert tid == private.trial_id(study.get_trials(deepcopy=False)[0])
    handle = private.trial_handle(study, tid)             # as another process would resume it
    assert handle.number == asked.number
    handle.report(0.5, 1)
    assert study.get_trials(deepcopy=False)[0].intermediate_values == {1: 0.5}
    assert handle.should_prune() is False
    assert private.beating_trial_ids(storage, private.study_id(study)) == set()
    storage.record_heartbeat(tid)
    assert private.beating_trial_ids(storage, private.study_id(study)) == {tid}
    assert private.stale_trial_ids(storage, private.study_id(study)) == set()
    time.sleep(2.5)                # SQLite's clock counts whole seconds
    assert private.stale_trial_ids(storage, private.study_id(study)) == {tid}
    assert private.engine_of(storage).dialect.name == "sqlite"
    assert len(private.journal_op_codes()) >= 5


def _oldest_allowed() -> str:
    text = (REPO / "pyproject.toml").read_text()
    sweep = re.search(r'^sweep = \[(.*)\]', text, re.M).group(1)
    return re.search(r'"optuna>=([0-9.]+)"', sweep).group(1)


def _install(version: str) -> Path:
    default = Path.home() / ".cache" / "fmnist-mlp" / f"optuna-{version}"
    target = Path(os.environ.get("FMNIST_MLP_OLD_OPTUNA_DIR", default))
    if (target / "optuna").is_dir():
        return target
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--target", str(target), f"optuna=={version}"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        require_or_skip(f"could not install optuna=={version} to test against it: "
                        f"{proc.stderr.strip()[-200:]}")
    return target


@pytest.mark.slow
def test_the_sweep_runs_on_the_oldest_optuna_allowed(tmp_path):
    version = _oldest_allowed()
    target = _install(version if version.count(".") == 2 else version + ".0")
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{REPO}"}
    env.pop("FMNIST_MLP_SWEEP_CHILD", None)
    seen = subprocess.run([sys.executable, "-c", "import optuna; print(optuna.__version__)"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert seen.stdout.strip().startswith(version), seen
    tests = ["tests/test_sweep_optuna_versions.py::test_the_private_door_works_with_this_optuna",
             "tests/test_sweep_weather.py::test_a_trial_whose_workers_keep_dying_is_failed_after_the_cap",
             "tests/test_sweep_storage.py::test_a_sqlite_url_runs_a_sweep"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "t"), *tests], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]
