"""One path from a config to the engine: the model, its optimiser and its learning-rate schedule.

The only module that knows both the config schema and the engine's constructors, so the
numerical modules take plain values and every key is passed on in exactly one place (the CLI,
:func:`fmnist_mlp.training.session.run_training` and ``MLP.from_config`` all come through here).
A config is validated before anything is built: a plain dict goes through
:func:`~fmnist_mlp.config.schema.config_from_dict`, so a bad key is one :class:`ConfigError` line.

    engine = build(cfg, steps_per_epoch, streams)   # Engine(model, optimizer, lr_at)
    model = build_model({"model": {"hidden": [256, 128]}, "seed": 0})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from fmnist_mlp.config.schema import Config, config_from_dict
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
    """A validated :class:`Config` from a Config or a plain (possibly partial) dict."""
    return config if isinstance(config, Config) else config_from_dict(config)


def make_streams(seed: int) -> dict[str, np.random.Generator]:
    """A run's generators (init, shuffle, dropout, augment), all from its one seed."""
    return spawn_streams(seed, STREAMS)


def model_kwargs(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """The MLP constructor's keyword arguments for this config (without ``seed``)."""
    from fmnist_mlp.data.dataset import NUM_FEATURES
    from fmnist_mlp.data.idx import NUM_CLASSES

    cfg = as_config(config)
    m, loss = cfg.model, cfg.loss
    return dict(input_size=NUM_FEATURES, hidden=list(m.hidden), num_classes=NUM_CLASSES,
                activation=m.activation, output=m.output, loss=loss.name, dropout=m.dropout,
                input_dropout=m.input_dropout, batchnorm=m.batchnorm,
                label_smoothing=loss.label_smoothing, l2=loss.l2, init=m.init, dtype=m.dtype,
                layout=m.layout)


def build_model(config: Config | Mapping[str, Any], rng: np.random.Generator | None = None):
    """The MLP a config describes. Without ``rng`` it is seeded by ``config.seed`` (what
    ``MLP.from_config`` gives); a training run passes its ``init`` stream instead."""
    from fmnist_mlp.nn import MLP

    cfg = as_config(config)
    return MLP(**model_kwargs(cfg), seed=cfg.seed if rng is None else rng)


def build_optimizer(config: Config | Mapping[str, Any], params: Mapping[str, np.ndarray]):
    """The configured optimiser over ``params`` (hyperparameters it does not use are ignored)."""
    from fmnist_mlp.nn.optim import make_optimizer

    o = as_config(config).optimizer
    return make_optimizer(o.name, params, lr=o.lr, momentum=o.momentum, beta1=o.beta1,
                          beta2=o.beta2, eps=o.eps, rho=o.rho, weight_decay=o.weight_decay)


def build_schedule(config: Config | Mapping[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """``lr_at(step)``: the schedule's epoch-denominated settings become step counts."""
    from fmnist_mlp.nn.schedules import make_schedule

    cfg = as_config(config)
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


def steps_per_epoch(config: Config | Mapping[str, Any], num_train: int) -> int:
    """Minibatches per epoch: the last one may be short; a batch never exceeds the data."""
    batch_size = min(as_config(config).train.batch_size, num_train)
    return -(-num_train // batch_size)


# ---------------------------------------------------------------------------------------------
# What a run does around the engine: its data, augmentation, loop and scoring settings


def split_seed(config: Config | Mapping[str, Any]) -> int:
    """The seed that draws a run's validation rows (and subset): ``data.split_seed``, by default
    the run's own. Runs that share it (and val_size, split, subset, folds, fold) share their rows."""
    cfg = as_config(config)
    return cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed


def row_kwargs(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """``split_rows``'s keyword arguments: which training images train and which validate."""
    cfg = as_config(config)
    d = cfg.data
    return dict(val_size=d.val_size, split=d.split, seed=split_seed(cfg), subset=d.subset,
                folds=d.folds, fold=d.fold)


def split_kwargs(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """``make_splits``'s keyword arguments: which images train, validate and test, and how scaled."""
    cfg = as_config(config)
    return dict(row_kwargs(cfg), normalize=cfg.data.normalize, dtype=cfg.model.dtype)


def build_augmenter(config: Config | Mapping[str, Any]):
    """``augment(batch, rng, rows, epoch)`` applying the configured training augmentations, or None."""
    from fmnist_mlp.data.augment import make_augmenter

    a = as_config(config).data.augment
    return make_augmenter(a.flip, a.shift, a.cutout, a.alternate_flip)


def loop_settings(config: Config | Mapping[str, Any]):
    """The training loop's settings: epochs, batch sizes, early stopping, mixup."""
    from fmnist_mlp.training.loop import LoopSettings

    cfg = as_config(config)
    t = cfg.train
    return LoopSettings(t.epochs, t.batch_size, t.eval_batch_size, t.early_stopping_patience,
                        cfg.data.augment.mixup)


def build_scorer(model, config: Config | Mapping[str, Any]):
    """The model as it is scored: averaged with mirrored images when data.augment.test_flip."""
    from fmnist_mlp.data.augment import FlipAveraged

    return FlipAveraged(model) if as_config(config).data.augment.test_flip else model
