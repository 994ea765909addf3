"""sweep report: every plot titled (the title is also the PNG's Title text), pruned trials in the
best-so-far plot at their last epoch, importances only from enough finished trials, and saying
how many."""

from __future__ import annotations

import pytest

from sweep_helpers import run_cli, run_pruned_sweep, status, write_spec

pytest.importorskip("yaml")
pytestmark = pytest.mark.usefixtures("needs_optuna")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")




def _text(png) -> dict:
    with Image.open(png) as im:
        im.load()
        return dict(im.text)


@pytest.mark.slow
def test_pruned_trials_are_in_best_so_far_and_every_plot_is_titled(tmp_path, real_data_dir):
    sweep_dir = run_pruned_sweep(tmp_path, real_data_dir)
    pruned = [t for t in status(sweep_dir)["trials"] if t["state"] == "pruned"]
    assert len(pruned) == 1
    proc = run_cli("sweep", "report", sweep_dir)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted((sweep_dir / "report").glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        assert _text(png).get("Title"), f"{png.name} has no title"
    described = _text(sweep_dir / "report" / "best_so_far.png")["Description"]
    assert f"{pruned[0]['number']} (epoch {pruned[0]['epochs']})" in described
    assert "importances withheld: 1 finished trial(s), at least 8" in proc.stdout


@pytest.mark.slow
def test_importances_say_how_many_trials_they_rest_on(tmp_path, real_data_dir):
    spec = write_spec(tmp_path / "spec.yaml", trials=8)
    sweep_dir = tmp_path / "sw"
    proc = run_cli("sweep", "run", spec, "--dir", sweep_dir, "--jobs", 2,
                   "--data-dir", real_data_dir)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("sweep", "report", sweep_dir)
    assert proc.returncode == 0, proc.stderr
    assert "importances from 8 finished trials" in proc.stdout
    title = _text(sweep_dir / "report" / "importances.png")["Title"]
    assert title == "parameter importances, from 8 finished trials"
