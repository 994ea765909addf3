"""The one step from a checked config to a run's plan: plain values that flow down.

The only module that knows both the config schema and the engine's constructors. A command reads
and checks its config once (:mod:`fmnist_mlp.config.load`) and :func:`make_plan` turns it, once,
into a :class:`Plan`: the split, the engine's arguments, the streams' seed, the loop's settings
(step counts computed here, from the dataset's facts), the distillation spec and the run's
record (what ``config.yaml``, the checkpoints and TensorBoard keep). The session, the loop and
the recorder take those values; nothing below the session reads a :class:`Config`.

The Python API's entry points :func:`build` and :func:`build_model` also take a plain dict,
checked once at that boundary by :func:`as_config`:

    plan = make_plan(cfg)                         # Plan(data, engine, loop, distill, record, ...)
    engine = build_engine(plan.engine, init_rng)  # Engine(model, optimizer, lr_at)
    engine = build(cfg, steps_per_epoch)          # the same from a config, as the README shows
    model = build_model({"model": {"hidden": [256, 128]}, "seed": 0})
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from fmnist_mlp.config.schema import Config
from fmnist_mlp.config.validate import config_from_dict
from fmnist_mlp.data.facts import NUM_CLASSES, NUM_FEATURES, TEST_IMAGES, TRAIN_IMAGES
from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn.engine import Engine, build_engine  # noqa: F401 (the engine's build)
from fmnist_mlp.nn.rng import spawn_streams

# The generators a training run draws from, one per kind of randomness (see rng.spawn_streams).
# Their order is part of every checkpoint's RNG state: append, never reorder.
STREAMS = ("init", "shuffle", "dropout", "augment")


@dataclass(frozen=True)
class EngineSpec:
    """The engine's arguments, as plain values: :func:`fmnist_mlp.nn.engine.build_engine` makes
    the objects.

    An engine-wide setting (say, which kernels compute the steps) is one more field here, read
    from its config key in :func:`engine_spec` and handed on in ``build_engine``."""

    seed: int                       # the network's initial weights, when no init stream is given
    model: Mapping[str, Any]        # MLP's keyword arguments (without seed)
    optimizer: Mapping[str, Any]    # make_optimizer's: name and every hyperparameter
    schedule: Mapping[str, Any]     # make_schedule's, in steps
    kernels: str = "numpy"          # who computes the elementwise work: numpy | numba (resolved)


@dataclass(frozen=True)
class DataSpec:
    """Which images train, validate and test, how they are scaled and augmented."""

    rows: Mapping[str, Any]         # split_rows' keyword arguments (val_size, split, seed, ...)
    splits: Mapping[str, Any]       # make_splits': the rows', normalize and the model's dtype
    train_rows: int                 # how many rows train: from the dataset's facts, not the data
    augment: Mapping[str, Any]      # make_augmenter's keyword arguments
    test_flip: bool                 # the final test score averages each image and its mirror


@dataclass(frozen=True)
class DistillSpec:
    """What a student learns from: its teachers and how their outputs are mixed in."""

    teachers: tuple[str, ...]
    weight: float
    temperature: float
    consistent: bool
    label_smoothing: float          # the student's: its label rows are smoothed as in training
    output: str                     # the student's output units; a teacher must share them
    rows: Mapping[str, Any]         # the student's split_rows arguments (cross-fitting)


@dataclass(frozen=True)
class LoopSettings:
    """The training loop's plain settings (:func:`fmnist_mlp.training.loop.fit` takes them)."""

    epochs: int
    batch_size: int
    eval_batch_size: int = 2000
    patience: int | None = None     # early stopping: epochs without val-accuracy improvement
    mixup: float = 0.0              # mixup's α; 0 = off


@dataclass(frozen=True)
class RunRecord:
    """The run's resolved config, serialised once: ``config.yaml``'s text, the dict every
    checkpoint keeps, and the dotted keys TensorBoard's HParams view shows."""

    config: Mapping[str, Any]
    yaml: str
    hparams: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    """A training run, planned once from its checked config: plain values only."""

    name: str                       # the run's default name: its config file's stem, else "run"
    seed: int                       # the run's random streams (STREAMS) all come from it
    data: DataSpec
    engine: EngineSpec
    loop: LoopSettings
    steps_per_epoch: int            # minibatches per epoch: the schedule's and resume's unit
    distill: DistillSpec | None     # None: no teachers
    checkpoint_every: int
    tensorboard: bool
    plots: bool
    record: RunRecord

    @property
    def total_steps(self) -> int:
        return self.loop.epochs * self.steps_per_epoch

    @property
    def memory_bytes(self) -> int:
        """The run's memory estimate, from its own values: what :func:`make_plan` checked."""
        return memory_estimate(self.engine.model, self.loop)

    @property
    def num_parameters(self) -> int:
        """Trained parameters of the network (weights, biases, batch norm's γ and β)."""
        from fmnist_mlp.nn.model import is_buffer, parameter_shapes

        widths = [self.engine.model["input_size"], *self.engine.model["hidden"],
                  self.engine.model["num_classes"]]
        shapes = parameter_shapes(widths, self.engine.model["batchnorm"])
        return sum(int(np.prod(shape)) for name, shape in shapes.items() if not is_buffer(name))

    def describe(self) -> str:
        """What ``train --dry-run`` prints after the resolved config: size, memory, steps."""
        from fmnist_mlp.io.memory import format_bytes

        widths = " -> ".join(str(w) for w in (self.engine.model["input_size"],
                                               *self.engine.model["hidden"],
                                               self.engine.model["num_classes"]))
        loop = self.loop
        return "\n".join([
            f"model: {widths} ({self.num_parameters:,} parameters, {self.engine.model['dtype']})",
            f"memory: about {format_bytes(self.memory_bytes)} (estimated; checked against this "
            f"machine's available memory)",
            f"data: {self.data.train_rows:,} training rows, {self.data.rows['val_size']:,} "
            f"validation rows, the test split scored once at the end",
            f"steps: {self.steps_per_epoch:,} per epoch (batch {loop.batch_size}) x {loop.epochs} "
            f"epochs = {self.total_steps:,}"
            + (f" at most (early stopping after {loop.patience} epochs without a better "
               f"val acc)" if loop.patience else ""),
        ])


def make_plan(cfg: Config, source: str | Path | None = None) -> Plan:
    """The run a checked config describes, refused here if it cannot fit: the finished plan's
    memory estimate is checked last (:meth:`Plan.memory_bytes`). ``source`` is where the config
    came from (a file, a run's config.yaml): it names the config in that error, and its stem is
    the run's default name."""
    from fmnist_mlp.data.dataset import batches_per_epoch

    what = str(source) if source is not None else "config"
    check_subset(cfg, what)
    rows = row_kwargs(cfg)
    train_rows = train_row_count(cfg)
    steps = batches_per_epoch(train_rows, cfg.train.batch_size)
    d, a = cfg.distill, cfg.data.augment
    data = DataSpec(rows, split_kwargs(cfg), train_rows,
                    dict(flip=a.flip, shift=a.shift, cutout=a.cutout,
                         alternate_flip=a.alternate_flip), a.test_flip)
    distill = (DistillSpec(tuple(d.teachers), d.weight, d.temperature, d.consistent,
                           cfg.loss.label_smoothing, cfg.model.output, rows)
               if d.teachers else None)
    config, text, hparams = config_record(cfg)      # serialised once, here
    plan = Plan(default_run_name(source), cfg.seed, data, engine_spec(cfg, steps),
                loop_settings(cfg), steps, distill, cfg.train.checkpoint_every,
                cfg.train.tensorboard, cfg.train.plots, RunRecord(config, text, hparams))
    refuse_unless_fits(plan.engine.model, plan.loop, what)
    return plan


def default_run_name(source: str | Path | None) -> str:
    """A run's default name: its config file's stem made safe for a directory name
    ("my exp.yaml" -> "my-exp"), else "run"."""
    import re

    stem = Path(source).stem if source else ""
    stem = re.sub(r"[^A-Za-z0-9._+=-]+", "-", stem).strip("-.")
    return stem[:80] or "run"


def train_row_count(cfg: Config) -> int:
    """How many rows a run trains on, from the dataset's facts and the row settings: what
    ``split_rows`` draws (each draw takes exactly its count)."""
    d = cfg.data
    count = d.subset if d.subset is not None else TRAIN_IMAGES - d.val_size
    if d.fold is not None:
        rest = count
        for part in range(d.fold + 1):        # as split_rows cuts the parts, in turn
            left_out = rest // (d.folds - part)
            rest -= left_out
        count -= left_out
    return count


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


def engine_spec(cfg: Config, steps_per_epoch: int) -> EngineSpec:
    """The engine's arguments: the schedule's epoch-denominated settings become step counts."""
    s = cfg.schedule
    schedule = dict(name=s.name, base_lr=cfg.optimizer.lr,
                    total_steps=cfg.train.epochs * steps_per_epoch,
                    warmup_steps=s.warmup_epochs * steps_per_epoch,
                    step_size=s.step_epochs * steps_per_epoch, gamma=s.gamma,
                    min_lr=s.min_lr, decay_steps=steps_per_epoch)
    return EngineSpec(cfg.seed, model_kwargs(cfg), asdict(cfg.optimizer), schedule,
                      kernels=resolve_kernels(cfg))


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


def build(config: Config | Mapping[str, Any], steps_per_epoch: int,
          init_rng: np.random.Generator | None = None) -> Engine:
    """Model, optimiser and schedule for one run (``init_rng``: see :func:`build_engine`)."""
    return build_engine(engine_spec(as_config(config), steps_per_epoch), init_rng)


def steps_per_epoch(cfg: Config, num_train: int) -> int:
    """Minibatches per epoch of ``num_train`` rows (:func:`~fmnist_mlp.data.dataset.batches_per_epoch`)."""
    from fmnist_mlp.data.dataset import batches_per_epoch

    return batches_per_epoch(num_train, cfg.train.batch_size)


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


def check_fits(cfg: Config, what: str = "config") -> int:
    """What can be refused from the config alone is refused before anything is written or read:
    a subset larger than the training set, a model that does not fit in memory. Returns the
    memory estimate (bytes). (A run's plan is checked by :func:`make_plan`, the same way.)"""
    check_subset(cfg, what)
    return refuse_unless_fits(model_kwargs(cfg), loop_settings(cfg), what)


def check_subset(cfg: Config, what: str) -> None:
    """A subset larger than the training images left after the validation rows: one line."""
    d = cfg.data
    most = TRAIN_IMAGES - d.val_size
    if d.subset is not None and d.subset > most:
        raise ConfigError(f"{what}: data.subset: {d.subset} is more than the {most} training "
                          f"images left after data.val_size={d.val_size}")


def memory_estimate(model: Mapping[str, Any], loop: LoopSettings) -> int:
    """A run's memory estimate from the MLP's keyword arguments (:func:`model_kwargs`) and the
    loop's batch sizes: :func:`fmnist_mlp.nn.memory.training_bytes`, the whole dataset held."""
    from fmnist_mlp.nn import memory

    return int(memory.training_bytes(model["input_size"], model["hidden"], model["num_classes"],
                                     loop.batch_size, loop.eval_batch_size,
                                     np.dtype(model["dtype"]).itemsize,
                                     batchnorm=model["batchnorm"],
                                     data_rows=TRAIN_IMAGES + TEST_IMAGES))


def refuse_unless_fits(model: Mapping[str, Any], loop: LoopSettings, what: str) -> int:
    """The estimate (bytes), or one line naming the model and batch size when this machine's
    available memory cannot hold it."""
    from fmnist_mlp.io import memory as machine

    needed = memory_estimate(model, loop)
    machine.check_fits(needed, f"{what}: model.hidden={list(model['hidden'])}, "
                               f"train.batch_size={loop.batch_size}")
    return needed


def build_augmenter(cfg: Config):
    """``augment(batch, rng, rows, epoch)`` applying the configured training augmentations, or None."""
    from fmnist_mlp.data.augment import make_augmenter

    a = cfg.data.augment
    return make_augmenter(a.flip, a.shift, a.cutout, a.alternate_flip)


def loop_settings(cfg: Config) -> LoopSettings:
    """The training loop's settings: epochs, batch sizes, early stopping, mixup."""
    t = cfg.train
    return LoopSettings(t.epochs, t.batch_size, t.eval_batch_size, t.early_stopping_patience,
                        cfg.data.augment.mixup)


# ---------------------------------------------------------------------------------------------
# The run's record: the resolved config serialised once (config.yaml, checkpoints, TensorBoard)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) — what YAML, JSON and ``MLP.from_config`` take."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


class _FlowListDumper(yaml.SafeDumper):
    """Block-style sections with flow-style lists: ``hidden: [256, 128]`` reads best."""


_FlowListDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def config_record(cfg: Config) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The run's config serialised once for everything that keeps it: the plain dict (every
    checkpoint's metadata), the YAML text (``config.yaml``) and the dotted keys with values
    TensorBoard's HParams view can show (lists and None as text)."""
    plain = config_to_dict(cfg)
    text = yaml.dump(plain, Dumper=_FlowListDumper, sort_keys=False)
    hparams = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
               for key, value in flatten(plain).items()}
    return plain, text, hparams


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text, every key present, in schema order."""
    return config_record(cfg)[1]
