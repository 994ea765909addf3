"""train's config flows down the package map as a plan made once; sweep run's directory is opened
once into plain values. The walks that follow them from the command line to the loop
(benchmarks/call_path.py, which follows the fields an ``__init__`` sets) are held where they are
now, so that a change that makes them climb or return more fails here. Measured with this tracer
on the main of 7 December before the plan (21c0dff), after it, and since:

    train      60 stays, 17 climbs, 42 returns  ->  39 stays,  8 climbs, 23 returns
                                                ->  28 stays,  4 climbs, 10 returns
                                                ->  27 stays,  3 climbs,  9 returns
    sweep run 107 stays, 21 climbs, 81 returns  -> 101 stays, 19 climbs, 72 returns
                                                ->  53 stays,  8 climbs, 25 returns
                                                ->  47 stays,  6 climbs, 22 returns
                                                ->  45 stays,  4 climbs, 20 returns

Issue 32 asks for at most 8 / 12 (train) and 5 / 20 (sweep run): both are there. train: the
config is read, checked and planned in one descent (``config.load.plan_from``), the finished plan
checked against memory last, by its own estimate (``Plan.memory_bytes``), the engine built in one
(``nn.engine.build_engine``; an optimiser's arrays allocated in one call to the workspace). The
sweep's run directory is opened in one call into rundir/start.py, the recorder is started by the
loop, a worker's claim is made in one go and the run's name is recorded by the trial's reporter;
a trial's config is planned in one descent (``SweepSpec.trial_plan``) from the base config as read
once with the spec, a new trial is asked through Optuna's public API, the journal study's creation
and its budget share one hold of the claim lock, and a new DIR is made whole in one call into io
(``io.paths.make_folder``: its folders, then sweep.json). The sweep's climbs and returns left:
its opening (sweep.study between the io descent, sweep.storage and the claim lock), each hold of
the claim lock (sweep.flocks entered again as its block ends), the config's own (validate <->
schema), the session's two calls into rundir.start (the new run checked, with io.paths, before
the data loads; opened after) and the engine's."""

from __future__ import annotations

import pytest

from benchmarks import call_path


def test_stays_climbs_and_returns_are_counted_as_defined():
    stays = ["fmnist_mlp.cli.app", "fmnist_mlp.training.session", "fmnist_mlp.config.plan",
             "fmnist_mlp.training.session", "fmnist_mlp.nn.model", "fmnist_mlp.config.plan"]
    s = call_path.summarise(stays)
    assert (s["stays"], s["modules"]) == (6, 4)
    assert s["climbs"] == 2                     # plan -> session, nn.model -> plan
    assert call_path.layer("fmnist_mlp.nn.model") > call_path.layer("fmnist_mlp.config.plan")
    assert s["returns"] == 2 and s["entries"]["fmnist_mlp.config.plan"] == 2


def test_a_deep_copy_of_followed_data_is_followed():
    """config_from deep-copies a mapping before checking it: the copy is the same data, so the
    checking is on the walk (it vanished from it at the copy before)."""
    import sys

    from fmnist_mlp.config.load import config_from

    raw = {"model": {"hidden": [8]}, "optimizer": {"lr": 0.01}}
    walk = call_path.Walk([raw], None)
    sys.setprofile(walk)
    try:
        config_from(raw, {"train.epochs": 1})
    finally:
        sys.setprofile(None)
    assert walk.stays[:2] == ["fmnist_mlp.config.load", "fmnist_mlp.config.validate"], walk.stays


# The walk, and the most climbs and returns it may make (where it is now: see the docstring).
WALKS = {"train": (call_path.walk_train, 3, 9),
         "sweep-run": (call_path.walk_sweep_run, 4, 20)}


@pytest.mark.realdata
@pytest.mark.parametrize("name", WALKS)
def test_the_walk_from_the_command_line_to_the_loop_is_held(name, real_data_dir, tmp_path,
                                                            monkeypatch):
    """train's config and sweep run's directory (its facts resolved once when the sweep is
    opened, the claim carrying its trial), each followed to the loop's fit."""
    walk, most_climbs, most_returns = WALKS[name]
    monkeypatch.setenv("FMNIST_MLP_DATA_DIR", str(real_data_dir))
    stays = walk(str(call_path.Path(__file__).parents[1] / "configs/fast.yaml"), tmp_path)
    s = call_path.summarise(stays)
    assert stays[-1] == "fmnist_mlp.training.loop"
    assert s["climbs"] <= most_climbs and s["returns"] <= most_returns, stays
    if name == "sweep-run":     # the session opens the run in one call; nothing climbs back
        below = stays[stays.index("fmnist_mlp.training.session"):]      # into the sweep
        assert [m for m in below if m.startswith("fmnist_mlp.sweep")] == []
        assert {m for m in below if m.startswith("fmnist_mlp.rundir")} == {
            "fmnist_mlp.rundir.start", "fmnist_mlp.rundir.recorder"}
    if name == "train":     # nothing below the session calls back up into config/
        below = stays[stays.index("fmnist_mlp.training.session"):]
        assert [m for m in below[below.index("fmnist_mlp.rundir.recorder"):]
                if m.startswith("fmnist_mlp.config")] == []

BELOW_THE_SESSION = ("training/loop.py", "training/callbacks.py", "training/progress.py",
                     "training/tensorboard.py", "training/distill.py", "rundir/recorder.py")


@pytest.mark.parametrize("module", BELOW_THE_SESSION)
def test_nothing_below_the_session_reads_the_config(module):
    """They take the plan's plain values: no Config, no reading or checking of one, no builder.
    (The loop names LoopSettings, one of the plan's value types, for its signature.)"""
    import ast
    from pathlib import Path

    path = Path(__file__).parents[1] / "fmnist_mlp" / module
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fmnist_mlp.config"):
            imported |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names if a.name.startswith("fmnist_mlp.config")}
    assert imported <= {"fmnist_mlp.config.plan.LoopSettings"}, imported
    import re

    assert not re.search(r"\bConfig\b", path.read_text(encoding="utf-8"))
