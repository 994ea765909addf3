"""The Python API (fmnist_mlp.train, fmnist_mlp.load): docs/python-api.md runs as written, and
the API checks what the command line checks, with the same errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fmnist_mlp
from fmnist_mlp.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "python-api.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.mark.slow
@pytest.mark.realdata
def test_the_python_api_page_runs_as_written(real_data_dir, tmp_path):
    blocks = _python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    (tmp_path / "configs").symlink_to(REPO / "configs")
    script = tmp_path / "page.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    env = dict(os.environ, FMNIST_MLP_DATA_DIR=str(real_data_dir), PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    run_dir, test_acc = out[0].split()
    assert (tmp_path / run_dir / "summary.json").is_file() and 0.5 < float(test_acc) <= 1.0
    predicted = np.array(out[1].strip("[]").split(), dtype=int)
    assert predicted.shape == (8,) and (predicted == [9, 2, 1, 1, 6, 1, 4, 6]).mean() >= 0.5
    # Each seed's run, the small mapping run and the fast runs: all in ./runs, all finished.
    assert len(list((tmp_path / "runs").iterdir())) == 4
    assert "epoch 1/2" in proc.stderr          # progress=True: one line per epoch on stderr


def test_a_mapping_with_a_bad_key_is_the_clis_one_line_error_and_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer\.lrr: unknown key"):
        fmnist_mlp.train({"optimizer": {"lrr": 0.1}}, runs_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        fmnist_mlp.train("configs/fast.yaml", set={"model.hidden": "wide"},
                         runs_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match="set: expected a mapping"):
        fmnist_mlp.train({}, set="train.epochs=1", runs_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match="--name"):
        fmnist_mlp.train({}, name="../x", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_set_takes_cli_strings_and_dotted_mappings_alike():
    from fmnist_mlp.config.load import config_from, load_config

    strings = config_from(REPO / "configs/fast.yaml", ["optimizer.lr=0.003", "model.hidden=[64]"])
    mapping = config_from(REPO / "configs/fast.yaml", {"optimizer.lr": 0.003,
                                                       "model.hidden": [64]})
    assert strings == mapping == load_config(REPO / "configs/fast.yaml",
                                             ["optimizer.lr=0.003", "model.hidden=[64]"])
    source = {"model": {"hidden": [8]}}
    assert config_from(source, {"model.hidden": [16]}).model.hidden == (16,)
    assert source == {"model": {"hidden": [8]}}          # the caller's mapping is not changed


def test_load_refuses_what_predict_refuses(tmp_path):
    with pytest.raises(ConfigError, match="give a run directory"):
        fmnist_mlp.load([])
    with pytest.raises(CheckpointError):
        fmnist_mlp.load(tmp_path / "nothing-here")


@pytest.mark.parametrize("shape", [(28, 28), (784,), (3, 28, 28), (3, 784), (0, 784)])
def test_pixels_are_taken_in_every_shape_predict_takes(shape):
    from fmnist_mlp.api import pixel_rows

    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    rows = pixel_rows(x)
    assert rows.dtype == np.float32 and rows.shape == (int(np.prod(shape)) // 784, 784)
    np.testing.assert_array_equal(rows.reshape(-1), x.reshape(-1).astype(np.float32))


@pytest.mark.parametrize("x, fragment", [
    (np.zeros((3, 10)), "shape"), (np.zeros((2, 28, 27)), "shape"),
    (np.full((1, 784), 256.0), "0..255"), (np.full((1, 784), np.nan), "finite"),
    (np.full((1, 784), -1), "0..255"), (np.array([["a"] * 784]), "numbers")])
def test_bad_pixels_are_one_config_error(x, fragment):
    from fmnist_mlp.api import pixel_rows

    with pytest.raises(ConfigError, match=fragment):
        pixel_rows(x)
