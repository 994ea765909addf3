"""Model files written by the previous main (before the package moved into folders) load and score
exactly as they did: a run with batch norm, dropout and test-time flips, and its safetensors export.

The fixture's expected scores were taken with the previous main's ``fmnist-mlp eval --json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fmnist_mlp.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "run-v1.expected-eval.json").read_text())

pytestmark = pytest.mark.realdata


def eval_json(target: Path, data_dir: Path, capsys) -> dict:
    with pytest.raises(SystemExit) as info:
        main(["eval", str(target), "--data-dir", str(data_dir), "--json"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("kind", ["run directory", "safetensors"])
def test_previous_mains_model_files_score_as_they_did(kind, real_data_dir, tmp_path, capsys):
    # Copied first: nothing may be written into tests/, and eval must not need to write at all.
    if kind == "run directory":
        target = tmp_path / "run-v1"
        shutil.copytree(FIXTURES / "run-v1", target)
    else:
        target = tmp_path / "run-v1.safetensors"
        shutil.copyfile(FIXTURES / "run-v1.safetensors", target)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = eval_json(target, real_data_dir, capsys)
    assert result["loss"] == pytest.approx(EXPECTED["loss"], rel=1e-6)
    assert result["accuracy"] == EXPECTED["accuracy"]
    assert result["confusion_matrix"] == EXPECTED["confusion_matrix"]
    for key in ("split", "num_samples", "per_class_accuracy", "class_names", "ece_bins"):
        assert result[key] == EXPECTED[key], key
    for key in ("macro_f1", "ece"):
        assert result[key] == pytest.approx(EXPECTED[key], rel=1e-6), key
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_fixture_is_what_it_says(tmp_path):
    """A run with batch norm, dropout and test-time flips, trained by the previous main."""
    from fmnist_mlp.rundir.trained import load_model
    from fmnist_mlp.rundir.flips import FlipAveraged

    scorer, cfg = load_model(FIXTURES / "run-v1")
    assert cfg.model.batchnorm and cfg.model.dropout > 0 and cfg.data.augment.test_flip
    assert isinstance(scorer, FlipAveraged)
