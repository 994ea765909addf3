"""The one path from config to engine (fmnist_mlp/config/plan.py), and a walk over every config key.

The walk builds what a training run builds from a config — through the same functions
``training.session.run_training`` calls — and shows that changing any one key changes the part it
configures. A key added to the schema must be added either to ``WALK`` (what it changes) or to
``NOT_REACHING_ENGINE`` (why it reaches no built object), or this file fails.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from fmnist_mlp.config.plan import (
    STREAMS,
    Engine,
    build,
    build_augmenter,
    build_model,
    loop_settings,
    make_streams,
    model_kwargs,
    split_kwargs,
    steps_per_epoch,
)
from fmnist_mlp.config.load import config_to_dict, flatten, load_config
from fmnist_mlp.config.validate import all_key_paths, config_from_dict
from fmnist_mlp.data import RawData, make_splits
from fmnist_mlp.data.synthetic import synthetic_arrays
from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn import MLP
from fmnist_mlp.rundir.flips import scorer_for
from conftest import require_numba

# Keys that configure no built object, each with where it does act.
NOT_REACHING_ENGINE = {
    "train.plots": "the CLI draws the PNGs after training has finished (cli/training_commands.py: _write_plots)",
    "train.checkpoint_every": "how often the run recorder writes checkpoints/last.npz "
                              "(recorder.RunRecorder; tested in test_cli's resume tests)",
    "distill.teachers": "trained runs whose probabilities become the loss targets "
                        "(training.distill.distill_targets; tests/test_distill.py trains a student)",
    "distill.weight": "the labels' and teachers' mix in those targets (tests/test_distill.py)",
    "distill.temperature": "how the teachers' probabilities are softened (tests/test_distill.py)",
    "distill.consistent": "teachers score each batch as the student sees it "
                          "(training.distill.distill_targets; tests/test_distill.py)",
    "train.tensorboard": "a TensorBoard callback writes event files beside the run "
                         "(tensorboard.TensorBoardLogger; tested in test_after_training)",
}

# key -> (a value other than the base's, overrides that make the key matter, the part it changes).
# The base is small: an 8-unit hidden layer, 3 epochs, 20 validation images of 200.
WALK = {
    "seed": (7, {}, "init"),
    "data.val_size": (30, {}, "splits"),
    "data.split_seed": (3, {}, "splits"),
    "data.split": ("shuffled", {}, "splits"),
    "data.normalize": ("scale", {}, "splits"),
    "data.subset": (50, {}, "splits"),
    "data.folds": (4, {"data.folds": 3, "data.fold": 1}, "splits"),
    "data.fold": (1, {"data.folds": 3}, "splits"),
    "data.augment.flip": (True, {}, "augment"),
    "data.augment.alternate_flip": (True, {"data.augment.flip": True}, "augment"),
    "data.augment.shift": (2, {}, "augment"),
    "data.augment.cutout": (5, {}, "augment"),
    "data.augment.test_flip": (True, {}, "scores"),
    "data.augment.mixup": (0.4, {}, "loop"),
    "model.hidden": ([16], {}, "spec"),
    "model.activation": ("tanh", {}, "spec"),
    "model.output": ("sigmoid", {"loss.name": "squared_error"}, "spec"),
    "model.dropout": (0.5, {}, "spec"),
    "model.input_dropout": (0.5, {}, "spec"),
    "model.batchnorm": (True, {}, "spec"),
    "model.init": ("glorot", {}, "spec"),
    "model.dtype": ("float64", {}, "spec"),
    "model.layout": ("feature", {}, "spec"),          # issue 10: it once never reached the model
    "loss.name": ("squared_error", {}, "spec"),
    "loss.label_smoothing": (0.1, {}, "spec"),
    "loss.l2": (0.01, {}, "spec"),
    "optimizer.name": ("sgd", {}, "step"),
    "optimizer.lr": (0.01, {}, "lr"),
    "optimizer.momentum": (0.5, {"optimizer.name": "momentum"}, "step"),
    "optimizer.beta1": (0.5, {}, "step"),
    "optimizer.beta2": (0.5, {}, "step"),
    "optimizer.eps": (0.1, {}, "step"),
    "optimizer.rho": (0.5, {"optimizer.name": "rmsprop"}, "step"),
    "optimizer.weight_decay": (0.1, {}, "step"),
    "schedule.name": ("cosine", {}, "lr"),
    "schedule.warmup_epochs": (1, {}, "lr"),
    "schedule.step_epochs": (2, {"schedule.name": "step"}, "lr"),
    "schedule.gamma": (0.5, {"schedule.name": "step", "schedule.step_epochs": 1}, "lr"),
    "schedule.min_lr": (1e-4, {"schedule.name": "cosine"}, "lr"),
    "train.epochs": (4, {}, "loop"),
    "train.batch_size": (16, {}, "loop"),
    "train.eval_batch_size": (64, {}, "loop"),
    "train.early_stopping_patience": (2, {}, "loop"),
    "train.kernels": ("numpy", {}, "kernels"),       # the base's auto is numba where installed
}
BASE = {"model.hidden": [8], "data.val_size": 20, "train.epochs": 3}
RAW = RawData(**synthetic_arrays(n_train=200, n_test=20, seed=1))


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *sections, name = key.split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
        node[name] = value
    return out


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def what_a_run_builds(flat: dict) -> dict[str, object]:
    """The parts of a training run built from this config, each reduced to a comparable value,
    via the calls ``training.session.run_training`` makes."""
    cfg = config_from_dict(_nested(flat))
    splits = make_splits(RAW, **split_kwargs(cfg))
    streams = make_streams(cfg.seed)
    spe = steps_per_epoch(cfg, len(splits.train.y))
    engine = build(cfg, spe, init_rng=streams["init"])
    model, optimizer = engine.model, engine.optimizer
    init = _digest(*model.params.values())
    x = np.ascontiguousarray(splits.train.x[:10], dtype=model.params["layer0.W"].dtype)
    y = splits.train.y[:10]
    model.loss_and_grad(x, y, rng=streams["dropout"])
    for _ in range(2):                          # two steps: Adam's second moments show by then
        optimizer.step(model.params, model.grads, lr=0.01)
    batch = np.linspace(-1.0, 1.0, 4 * 784).reshape(4, 784)
    augment = build_augmenter(cfg)
    if augment is not None:
        augment(batch, np.random.default_rng(0), np.arange(4), 1)
    scorer = scorer_for(model, cfg.data.augment.test_flip)
    return {
        "splits": _digest(*(array for split in splits[:3] for array in split)),
        "init": init,
        "spec": model.spec(),
        "step": _digest(*model.params.values()),
        "lr": [engine.lr_at(s) for s in range(cfg.train.epochs * spe)],
        "augment": _digest(batch),
        "scores": _digest(scorer.forward(x)),
        "loop": dataclasses.asdict(loop_settings(cfg)),
        "kernels": (model.kernels, optimizer.kernels),
    }


def test_every_config_key_is_walked_or_listed_as_not_reaching_the_engine():
    keys = set(all_key_paths())
    missing = sorted(keys - set(WALK) - set(NOT_REACHING_ENGINE))
    assert not missing, (f"config keys {missing} are neither in WALK (what they change) nor in "
                         f"NOT_REACHING_ENGINE (why they change nothing built): add them")
    assert not set(WALK) & set(NOT_REACHING_ENGINE)
    assert set(WALK) | set(NOT_REACHING_ENGINE) <= keys, "stale entries for removed keys"


@pytest.fixture(scope="module")
def base_builds():
    cache: dict[tuple, dict] = {}

    def get(extra: dict) -> dict:
        key = tuple(sorted((k, repr(v)) for k, v in extra.items()))
        if key not in cache:
            cache[key] = what_a_run_builds({**BASE, **extra})
        return cache[key]

    return get


@pytest.mark.parametrize("key", sorted(WALK))
def test_config_key_changes_what_it_configures(key, base_builds):
    if key == "train.kernels":
        require_numba()                 # without numba, auto is numpy: nothing to change
    value, context, part = WALK[key]
    base_value = flatten(config_to_dict(config_from_dict(_nested({**BASE, **context}))))[key]
    assert base_value != value, "the walk's value must differ from the base's"
    before = base_builds(context)
    after = what_a_run_builds({**BASE, **context, key: value})
    changed = sorted(name for name in before if before[name] != after[name])
    assert part in changed, f"{key}={value!r} changed {changed}, not {part!r}"


def test_the_kernel_choice_changes_who_runs_and_nothing_that_is_built(base_builds):
    """The fused kernels are bit-identical: every other part of the walk stays the same."""
    require_numba()
    before, after = base_builds({}), what_a_run_builds({**BASE, "train.kernels": "numpy"})
    assert before["kernels"] == ("numba", "numba") and after["kernels"] == ("numpy", "numpy")
    assert sorted(name for name in before if before[name] != after[name]) == ["kernels"]


# ---------------------------------------------------------------------------------------------
# The builder itself


def test_build_model_takes_a_plain_dict_and_validates_it_first():
    model = build_model({"seed": 3, "model": {"hidden": [12], "activation": "sigmoid",
                                              "output": "sigmoid", "dtype": "float64"},
                         "loss": {"name": "squared_error", "l2": 1e-4}})
    assert model.hidden == [12] and model.activation == "sigmoid" and model.l2 == 1e-4
    assert model.spec()["seed"] == 3          # seeded by the config's seed, as from_config is
    again = MLP(**model.spec())
    for name, value in model.params.items():
        np.testing.assert_array_equal(again.params[name], value)
    with pytest.raises(ConfigError, match=r"model\.hiden: unknown key \(did you mean 'model\.hidden'"):
        build_model({"model": {"hiden": [3]}})
    with pytest.raises(ConfigError, match="cross_entropy needs model.output softmax"):
        build_model({"model": {"output": "linear"}})


def test_build_model_passes_every_constructor_argument_the_config_has():
    # The model's spec must echo each argument built from the config: none is dropped on the way.
    cfg = load_config(None, ["model.hidden=[600]", "model.layout=row", "model.batchnorm=true",
                             "model.input_dropout=0.1", "model.init=glorot"])
    kwargs = model_kwargs(cfg)
    spec = build_model(cfg).spec()
    assert {k: spec[k] for k in kwargs} == kwargs
    assert spec["layout"] == "row"            # "auto" would pick "feature" for 600 units


def test_build_returns_an_engine_whose_optimizer_updates_the_models_own_arrays():
    engine = build({"model": {"hidden": [4]}, "optimizer": {"name": "sgd", "lr": 0.5}}, 10,
                   init_rng=make_streams(0)["init"])
    assert isinstance(engine, Engine) and engine.lr_at(0) == 0.5
    model = engine.model
    before = {k: v.copy() for k, v in model.params.items()}
    model.loss_and_grad(np.ones((2, 784), np.float32), np.array([0, 1]))
    engine.optimizer.step(model.params, model.grads, lr=engine.lr_at(0))
    for name, value in model.params.items():
        np.testing.assert_allclose(value, before[name] - 0.5 * model.grads[name], rtol=1e-6)


def test_run_streams_are_independent_and_reproducible():
    a, b = make_streams(5), make_streams(5)
    assert list(a) == list(STREAMS)
    draws = {name: gen.integers(2**62, size=3).tolist() for name, gen in a.items()}
    assert draws == {name: gen.integers(2**62, size=3).tolist() for name, gen in b.items()}
    assert len({tuple(d) for d in draws.values()}) == len(STREAMS)


def test_split_seed_shares_the_rows_across_seeds_and_ensembles_accept_it():
    """Students of other seeds can validate on their teachers' rows (data.split_seed)."""
    from fmnist_mlp.scoring.ensemble import check_same_rows
    from fmnist_mlp.rundir.trained import TrainedModel

    def splits_of(overrides):
        return make_splits(RAW, **split_kwargs(load_config(None, ["data.val_size=20", *overrides])))

    own, shared = splits_of(["seed=0"]), splits_of(["seed=1", "data.split_seed=0"])
    other = splits_of(["seed=1"])
    np.testing.assert_array_equal(own.val.y, shared.val.y)
    np.testing.assert_array_equal(own.val.x, shared.val.x)
    assert not np.array_equal(own.val.x, other.val.x)
    members = [TrainedModel(f"run{i}", None, config_to_dict(load_config(None, o)), 0.0, 1.0)
               for i, o in enumerate((["seed=0"], ["seed=1", "data.split_seed=0"]))]
    check_same_rows(members, "val")                    # the same rows: accepted
    members.append(TrainedModel("run2", None, config_to_dict(load_config(None, ["seed=1"])),
                                0.0, 1.0))
    with pytest.raises(ConfigError, match="split seed"):
        check_same_rows(members, "val")
