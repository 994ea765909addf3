"""The one step from a checked config to objects: the model, its optimiser and schedule, the run's
data splits, augmentation and loop settings.

The only module that knows both the config schema and the engine's constructors, so the numerical
modules take plain values and every key is passed on in exactly one place. Everything here takes
a validated :class:`Config` (a command reads and checks its config once, in
:mod:`fmnist_mlp.config.load`); the Python API's entry points :func:`build` and
:func:`build_model` also take a plain dict, checked once at that boundary by :func:`as_config`.

    engine = build(cfg, steps_per_epoch)          # Engine(model, optimizer, lr_at)
    model = build_model({"model": {"hidden": [256, 128]}, "seed": 0})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fmnist_mlp.config.schema import Config
from fmnist_mlp.config.validate import config_from_dict
from fmnist_mlp.data.facts import NUM_CLASSES, NUM_FEATURES, TEST_IMAGES, TRAIN_IMAGES
from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn.rng import spawn_streams

# The generators a training run draws from, one per kind of randomness (see rng.spawn_streams).
# Their order is part of every checkpoint's RNG state: append, never reorder.
STREAMS = ("init", "shuffle", "dropout", "augment")


@dataclass(frozen=True)
class Engine:
    """What a config builds: the network, the optimiser over its parameters, and the learning
    rate at each step (one step = one minibatch)."""

    model: Any
    optimizer: Any
    lr_at: Callable[[int], float]


def as_config(config: Config | Mapping[str, Any]) -> Config:
    """A validated :class:`Config` from a Config or a plain (possibly partial) dict: the Python
    API's boundary (a Config was checked when it was made, so it is passed through)."""
    return config if isinstance(config, Config) else config_from_dict(config)


def make_streams(seed: int) -> dict[str, np.random.Generator]:
    """A run's generators (init, shuffle, dropout, augment), all from its one seed."""
    return spawn_streams(seed, STREAMS)


def model_kwargs(cfg: Config) -> dict[str, Any]:
    """The MLP constructor's keyword arguments for this config (without ``seed``): each key the
    engine's table (``nn.config_keys.CONFIG_KEYS``, what ``MLP.from_config`` reads) names."""
    from fmnist_mlp.nn.config_keys import CONFIG_KEYS

    kwargs: dict[str, Any] = dict(input_size=NUM_FEATURES, num_classes=NUM_CLASSES)
    for section, keys in CONFIG_KEYS.items():
        for key, argument in keys.items():
            value = getattr(getattr(cfg, section), key)
            kwargs[argument] = list(value) if isinstance(value, tuple) else value
    return kwargs


def build_model(config: Config | Mapping[str, Any], rng: np.random.Generator | None = None):
    """The MLP a config describes. Without ``rng`` it is seeded by ``config.seed`` (what
    ``MLP.from_config`` gives); a training run passes its ``init`` stream instead."""
    from fmnist_mlp.nn import MLP

    cfg = as_config(config)
    return MLP(**model_kwargs(cfg), seed=cfg.seed if rng is None else rng,
               kernels=resolve_kernels(cfg))


def resolve_kernels(cfg: Config) -> str:
    """``train.kernels`` as the engine takes it, ``numpy`` or ``numba`` (MissingExtra for numba
    without the fast extra); numba's compiled kernels are cached in the user's cache folder,
    beside the data's default home (one cache for every data folder)."""
    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import kernels

    choice = kernels.resolve_kernels(cfg.train.kernels)
    if choice == "numba" and kernels.cache_dir() is None:
        try:
            kernels.set_cache_dir(user_cache_dir() / "kernels")
        except ConfigError:             # no usable $HOME: the kernels compile, uncached
            pass
    return choice


def build_optimizer(cfg: Config, params: Mapping[str, np.ndarray]):
    """The configured optimiser over ``params``: every field of the optimizer section is offered,
    and the class registered under its name takes those its constructor names."""
    from dataclasses import asdict

    from fmnist_mlp.nn.optim import make_optimizer

    settings = asdict(cfg.optimizer)
    return make_optimizer(settings.pop("name"), params, kernels=resolve_kernels(cfg), **settings)


def build_schedule(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """``lr_at(step)``: the schedule's epoch-denominated settings become step counts."""
    from fmnist_mlp.nn.schedules import make_schedule

    s = cfg.schedule
    return make_schedule(s.name, base_lr=cfg.optimizer.lr,
                         total_steps=cfg.train.epochs * steps_per_epoch,
                         warmup_steps=s.warmup_epochs * steps_per_epoch,
                         step_size=s.step_epochs * steps_per_epoch, gamma=s.gamma,
                         min_lr=s.min_lr, decay_steps=steps_per_epoch)


def build(config: Config | Mapping[str, Any], steps_per_epoch: int,
          init_rng: np.random.Generator | None = None) -> Engine:
    """Model, optimiser and schedule for one run (``init_rng``: see :func:`build_model`)."""
    cfg = as_config(config)
    model = build_model(cfg, init_rng)
    return Engine(model, build_optimizer(cfg, model.params), build_schedule(cfg, steps_per_epoch))


def steps_per_epoch(cfg: Config, num_train: int) -> int:
    """Minibatches per epoch: the last one may be short; a batch never exceeds the data."""
    batch_size = min(cfg.train.batch_size, num_train)
    return -(-num_train // batch_size)


# ---------------------------------------------------------------------------------------------
# What a run does around the engine: its data, augmentation, loop and scoring settings


def split_seed(cfg: Config) -> int:
    """The seed that draws a run's validation rows (and subset): ``data.split_seed``, by default
    the run's own. Runs that share it (and val_size, split, subset, folds, fold) share their rows."""
    return cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed


def row_kwargs(cfg: Config) -> dict[str, Any]:
    """``split_rows``'s keyword arguments: which training images train and which validate."""
    d = cfg.data
    return dict(val_size=d.val_size, split=d.split, seed=split_seed(cfg), subset=d.subset,
                folds=d.folds, fold=d.fold)


def split_kwargs(cfg: Config) -> dict[str, Any]:
    """``make_splits``'s keyword arguments: which images train, validate and test, and how scaled."""
    return dict(row_kwargs(cfg), normalize=cfg.data.normalize, dtype=cfg.model.dtype)


def load_splits(cfg: Config, data_dir: str | Path | None = None, progress: bool = False):
    """The exact train/val/test splits a run with this config uses (as ``Splits``)."""
    from fmnist_mlp.data import load_raw, make_splits

    return make_splits(load_raw(data_dir, progress=progress), **split_kwargs(cfg))


def check_fits(cfg: Config, what: str = "config") -> None:
    """What can be refused from the config alone is refused before anything is written or read:
    a subset larger than the training set, a model that does not fit in memory."""
    from fmnist_mlp.io import memory as machine
    from fmnist_mlp.nn import memory

    d, m, t = cfg.data, cfg.model, cfg.train
    most = TRAIN_IMAGES - d.val_size
    if d.subset is not None and d.subset > most:
        raise ConfigError(f"{what}: data.subset: {d.subset} is more than the {most} training "
                          f"images left after data.val_size={d.val_size}")
    itemsize = np.dtype(m.dtype).itemsize
    machine.check_fits(memory.training_bytes(NUM_FEATURES, m.hidden, NUM_CLASSES, t.batch_size,
                                             t.eval_batch_size, itemsize, batchnorm=m.batchnorm,
                                             data_rows=TRAIN_IMAGES + TEST_IMAGES),
                       f"{what}: model.hidden={list(m.hidden)}, train.batch_size={t.batch_size}")


def build_augmenter(cfg: Config):
    """``augment(batch, rng, rows, epoch)`` applying the configured training augmentations, or None."""
    from fmnist_mlp.data.augment import make_augmenter

    a = cfg.data.augment
    return make_augmenter(a.flip, a.shift, a.cutout, a.alternate_flip)


@dataclass(frozen=True)
class LoopSettings:
    """The training loop's plain settings (:func:`fmnist_mlp.training.loop.fit` takes them)."""

    epochs: int
    batch_size: int
    eval_batch_size: int = 2000
    patience: int | None = None     # early stopping: epochs without val-accuracy improvement
    mixup: float = 0.0              # mixup's α; 0 = off


def loop_settings(cfg: Config) -> LoopSettings:
    """The training loop's settings: epochs, batch sizes, early stopping, mixup."""
    t = cfg.train
    return LoopSettings(t.epochs, t.batch_size, t.eval_batch_size, t.early_stopping_patience,
                        cfg.data.augment.mixup)
