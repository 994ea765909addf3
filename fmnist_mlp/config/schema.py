"""Experiment configuration: a frozen dataclass tree, loaded from YAML plus ``--set`` overrides.

Every key is optional (the defaults below are the schema). Loading validates everything before
anything touches the disk: an unknown key (with a did-you-mean), a wrong type or an out-of-range
value raises :class:`~fmnist_mlp.errors.ConfigError` naming the dotted key path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from fmnist_mlp.config.validate import build_checked, leaf_paths, type_name
from fmnist_mlp.errors import ConfigError


class _Names:
    """The names a key accepts, read from the engine's own table (a dict or tuple) on first use.

    Lazy because the engine modules import NumPy, which the CLI must not pay for before a
    command runs; written as a reference, so a name added to the engine is accepted here too.
    """

    def __init__(self, module: str, table: str) -> None:
        self.module, self.table = module, table

    def __iter__(self) -> Iterator[str]:
        import importlib

        return iter(tuple(getattr(importlib.import_module(self.module), self.table)))

    def __contains__(self, value: object) -> bool:
        return value in tuple(self)

    def __repr__(self) -> str:
        return f"{self.module}.{self.table}"


def _opt(default: Any, *, choices: tuple | _Names = (), lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A dataclass field whose metadata carries its allowed values (checked by :func:`_check_range`)."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, (list, tuple, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = _opt(False)                 # random horizontal flips, p = 0.5 per image
    alternate_flip: bool = _opt(False)       # with flip: each image mirrored every other epoch
    shift: int = _opt(0, lo=0, hi=27)         # random shifts of up to N pixels in x and y
    cutout: int = _opt(0, lo=0, hi=28)        # blank a random N×N square of each training image
    mixup: float = _opt(0.0, lo=0.0)          # α of mixup's Beta(α, α) pair weights; 0 = off
    test_flip: bool = _opt(False)            # test/eval: mean of each image and its mirror


@dataclass(frozen=True)
class DataConfig:
    val_size: int = _opt(5000, lo=1, hi=59999)   # held out of data.idx.TRAIN_IMAGES (60,000)
    split_seed: int | None = _opt(None, lo=0)    # draws the held-out rows; None = the run's seed
    split: str = _opt("stratified", choices=_Names("fmnist_mlp.data.dataset", "SPLITS"))
    normalize: str = _opt("standardize",
                          choices=_Names("fmnist_mlp.data.dataset", "NORMALIZATIONS"))
    subset: int | None = _opt(None, lo=1)        # only N training images: quick runs and tests
    # Cross-fitting for distillation: the training rows cut into `folds` parts (drawn by the
    # split seed, after val and subset) and part `fold` left out, so a teacher scores it unseen.
    folds: int = _opt(1, lo=1, hi=100)
    fold: int | None = _opt(None, lo=0)
    augment: AugmentConfig = _opt(AugmentConfig())


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = _opt((256, 128), lo=1)   # [] = softmax (logistic) regression
    activation: str = _opt("relu", choices=_Names("fmnist_mlp.nn.activations", "ACTIVATIONS"))
    output: str = _opt("softmax", choices=_Names("fmnist_mlp.nn.losses", "OUTPUTS"))
    dropout: float = _opt(0.0, lo=0.0, hi=1.0, hi_open=True)
    input_dropout: float = _opt(0.0, lo=0.0, hi=1.0, hi_open=True)   # on the input pixels
    batchnorm: bool = _opt(False)            # batch normalisation before each hidden activation
    init: str = _opt("auto", choices=_Names("fmnist_mlp.nn.init", "INITS"))
    dtype: str = _opt("float32", choices=_Names("fmnist_mlp.nn.model", "DTYPES"))
    layout: str = _opt("auto", choices=_Names("fmnist_mlp.nn.workspace", "LAYOUTS"))  # speed only


@dataclass(frozen=True)
class LossConfig:
    name: str = _opt("cross_entropy", choices=_Names("fmnist_mlp.nn.losses", "LOSSES"))
    label_smoothing: float = _opt(0.0, lo=0.0, hi=1.0, hi_open=True)
    l2: float = _opt(0.0, lo=0.0)              # coupled: added to the loss


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = _opt("adam", choices=_Names("fmnist_mlp.nn.optim", "OPTIMIZERS"))
    lr: float = _opt(0.001, lo=0.0, lo_open=True)
    momentum: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    beta1: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    beta2: float = _opt(0.999, lo=0.0, hi=1.0, hi_open=True)
    eps: float = _opt(1.0e-8, lo=0.0, lo_open=True)
    rho: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)   # RMSProp's squared-gradient decay
    weight_decay: float = _opt(0.0, lo=0.0)    # decoupled (AdamW-style)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = _opt("constant", choices=_Names("fmnist_mlp.nn.schedules", "SCHEDULES"))
    warmup_epochs: int = _opt(0, lo=0)
    step_epochs: int = _opt(10, lo=1)
    gamma: float = _opt(0.1, lo=0.0, lo_open=True)
    min_lr: float = _opt(0.0, lo=0.0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(10, lo=1)
    batch_size: int = _opt(128, lo=1)
    early_stopping_patience: int | None = _opt(None, lo=1)
    checkpoint_every: int = _opt(1, lo=1)
    eval_batch_size: int = _opt(2000, lo=1)
    plots: bool = _opt(False)
    tensorboard: bool = _opt(False)          # event files in the run directory (tensorboardX)


@dataclass(frozen=True)
class DistillConfig:
    teachers: tuple[str, ...] = _opt(())        # run directories; [] = no distillation
    weight: float = _opt(0.5, lo=0.0, hi=1.0)  # target = (1 − weight)·labels + weight·teachers
    temperature: float = _opt(1.0, lo=0.0, lo_open=True)   # softens the teachers' probabilities
    consistent: bool = _opt(False)   # teachers score each batch as the student sees it, not once


@dataclass(frozen=True)
class Config:
    seed: int = _opt(0, lo=0)
    data: DataConfig = _opt(DataConfig())
    model: ModelConfig = _opt(ModelConfig())
    loss: LossConfig = _opt(LossConfig())
    optimizer: OptimizerConfig = _opt(OptimizerConfig())
    schedule: ScheduleConfig = _opt(ScheduleConfig())
    train: TrainConfig = _opt(TrainConfig())
    distill: DistillConfig = _opt(DistillConfig())


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML file (or start from the defaults when ``path`` is None), apply ``--set``
    overrides (``"optimizer.lr=0.01"``, values parsed as YAML) and validate the result."""
    raw: dict = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    overrides = list(overrides)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return config_from_dict(raw, source=_source_label(path, overrides))


def _source_label(path: str | Path | None, overrides: list[str]) -> str:
    parts = [str(path)] if path is not None else []
    if overrides:
        parts.append("--set")
    return " + ".join(parts) or "config"


def _read_yaml(path: Path) -> dict:
    """A config file: a regular file of at most 1 MB (not /dev/zero, not a FIFO), strict YAML."""
    from fmnist_mlp.io.yaml_file import load_yaml_file

    data = load_yaml_file(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, "
                          f"got {type_name(data)}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.hidden=[512,256]"`` -> ``("model.hidden", [512, 256])`` (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. optimizer.lr=0.01")
    from fmnist_mlp.io.yaml_file import MAX_VALUE_CHARS, load_yaml

    if len(text) > MAX_VALUE_CHARS:
        raise ConfigError(f"--set {key}: value of {len(text)} characters is too long "
                          f"(limit {MAX_VALUE_CHARS})")
    try:
        value = load_yaml(text, f"--set {key}") if text.strip() else ""
    except ConfigError as exc:
        why = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"--set {key}: cannot parse value {text[:80]!r} as YAML ({why})") from None
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {key}: empty component in key path")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: is a value, not a section "
                              f"(cannot set {key})")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Validation (the generic walk lives in config_validate; cross-field rules live here)


def config_from_dict(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Build and validate a :class:`Config` from a plain (possibly partial) dict."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type_name(raw)}")
    cfg = build_checked(Config, raw, source)
    _check_cross_fields(cfg, source)
    return cfg


def _check_cross_fields(cfg: Config, source: str) -> None:
    if cfg.loss.name == "cross_entropy" and cfg.model.output != "softmax":
        raise ConfigError(f"{source}: loss.name: cross_entropy needs model.output softmax "
                          f"(got {cfg.model.output!r}); use squared_error for other outputs")
    if cfg.loss.label_smoothing and cfg.loss.name != "cross_entropy":
        raise ConfigError(f"{source}: loss.label_smoothing: only used with cross_entropy")
    if cfg.data.augment.alternate_flip and not cfg.data.augment.flip:
        raise ConfigError(f"{source}: data.augment.alternate_flip: needs data.augment.flip: true")
    if cfg.data.fold is not None and (cfg.data.folds < 2 or cfg.data.fold >= cfg.data.folds):
        raise ConfigError(f"{source}: data.fold: {cfg.data.fold} needs data.folds of 2 or more "
                          f"and above it (got {cfg.data.folds}): the parts are 0..folds-1")
    if cfg.distill.teachers and cfg.loss.name != "cross_entropy":
        raise ConfigError(f"{source}: distill.teachers: distillation needs loss.name "
                          f"cross_entropy (got {cfg.loss.name!r})")
    if cfg.distill.consistent and not cfg.distill.teachers:
        raise ConfigError(f"{source}: distill.consistent: needs distill.teachers")
    if cfg.schedule.warmup_epochs >= cfg.train.epochs and cfg.schedule.warmup_epochs:
        raise ConfigError(f"{source}: schedule.warmup_epochs: must be < train.epochs "
                          f"({cfg.train.epochs}), got {cfg.schedule.warmup_epochs}")


# ---------------------------------------------------------------------------------------------
# Output


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) — what YAML, JSON and ``MLP.from_config`` take."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text, every key present, in schema order."""
    return yaml.dump(config_to_dict(cfg), Dumper=_FlowListDumper, sort_keys=False)


class _FlowListDumper(yaml.SafeDumper):
    """Block-style sections with flow-style lists: ``hidden: [256, 128]`` reads best."""


_FlowListDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def all_key_paths() -> list[str]:
    """Every leaf key of the schema as a dotted path, e.g. ``"optimizer.lr"``."""
    return leaf_paths(Config)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
