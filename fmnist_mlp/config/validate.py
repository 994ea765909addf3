"""Checking a plain dict (as YAML gives it) against the schema: :func:`config_from_dict`.

The generic walk over a frozen dataclass tree is driven by the type hints (bool, int, float, str, ``X | None``, ``tuple[int, ...]``,
``tuple[str, ...]``, nested
dataclasses) and each field's metadata (``choices``, ``lo``/``hi`` bounds); the rules that
relate two fields follow it. Every problem is one :class:`ConfigError` line naming the dotted key
path; unknown keys get a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Mapping

import yaml

from fmnist_mlp.config.schema import Config
from fmnist_mlp.errors import ConfigError


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
    if cfg.schedule.min_lr > cfg.optimizer.lr:
        raise ConfigError(f"{source}: schedule.min_lr: {cfg.schedule.min_lr:g} is above "
                          f"optimizer.lr ({cfg.optimizer.lr:g}); the floor of a decaying rate "
                          f"must not exceed the rate itself")
    if cfg.data.augment.mixup > MAX_MIXUP_ALPHA:
        raise ConfigError(f"{source}: data.augment.mixup: must be <= {MAX_MIXUP_ALPHA:g}, got "
                          f"{cfg.data.augment.mixup:g} (the α of Beta(α, α); 0 is off, the mixup "
                          f"paper uses 0.1-0.4, and from about 100 on every pair is mixed half "
                          f"and half)")
    layers, most = len(cfg.model.hidden), max_hidden_layers(cfg)
    if layers > most:
        from fmnist_mlp.io.model_file import MAX_NPZ_MEMBERS

        raise ConfigError(f"{source}: model.hidden: {layers} hidden layers, at most {most} with "
                          f"optimizer {cfg.optimizer.name!r}"
                          f"{' and batch norm' if cfg.model.batchnorm else ''}: a checkpoint of "
                          f"more arrays than its reader accepts "
                          f"({MAX_NPZ_MEMBERS}) could never be loaded again")


# The one set of limits: each bound a reader enforces, checked here when the config is read, so
# that nothing is trained that the tool would refuse to load afterwards.
MAX_MIXUP_ALPHA = 100.0
_CHECKPOINT_FIXED_ARRAYS = 64     # the output layer, optimiser step, random streams, meta


def max_hidden_layers(cfg: Config) -> int:
    """The most hidden layers a run of ``cfg`` can have so that its checkpoint stays within the
    model-file reader's member limit (:data:`fmnist_mlp.io.model_file.MAX_NPZ_MEMBERS`): each
    layer stores its parameters (W, b; or W, γ, β and two running statistics with batch norm)
    and, per parameter, the optimiser's state slots (Adam: m and v)."""
    from fmnist_mlp.io.model_file import MAX_NPZ_MEMBERS
    from fmnist_mlp.nn.optim import OPTIMIZERS

    slots = len(OPTIMIZERS[cfg.optimizer.name].slots)
    per_layer = 5 * (1 + slots) if cfg.model.batchnorm else 2 * (1 + slots)
    return (MAX_NPZ_MEMBERS - _CHECKPOINT_FIXED_ARRAYS) // per_layer


def all_key_paths() -> list[str]:
    """Every leaf key of the schema as a dotted path, e.g. ``"optimizer.lr"``."""
    return leaf_paths(Config)


def build_checked(root: type, raw: Mapping[str, Any], source: str) -> Any:
    """An instance of the dataclass ``root`` from ``raw``; missing keys take their defaults."""
    return _build(root, raw, "", source, root)


def _build(cls: type, raw: Mapping[str, Any], prefix: str, source: str, root: type) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key{_suggest(str(key), prefix, root)}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        path = prefix + name
        hint = hints[name]
        value = raw[name]
        if dataclasses.is_dataclass(hint):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {path}: expected a section (mapping), "
                                  f"got {type_name(value)}")
            values[name] = _build(hint, value, path + ".", source, root)
        else:
            values[name] = _coerce(hint, value, path, source, f.metadata)
    return cls(**values)


def _coerce(hint: Any, value: Any, path: str, source: str, meta: Mapping[str, Any]) -> Any:
    where = f"{source}: {path}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args[0] is str:
        return _coerce_str_list(value, where)
    if origin is tuple:
        return _coerce_int_list(value, where, meta)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        _check_range(value, where, meta)
        return value
    if hint is float:
        number = _as_float(value)
        if number is None:
            if _is_non_finite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        _check_range(number, where, meta)
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        choices = tuple(meta.get("choices") or ())
        if choices and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint_text = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}{hint_text}")
        return value
    raise AssertionError(f"unhandled type {hint!r} for {path}")  # a schema bug, not user input


def _coerce_int_list(value: Any, where: str, meta: Mapping[str, Any]) -> tuple[int, ...]:
    """A list of positive ints; ``"512,256"`` is accepted as a shell-friendly spelling."""
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"{where}: empty string; use [] for no hidden layer or e.g. [256, 128]")
        try:
            value = [int(p) for p in value.split(",")]
        except ValueError:
            raise ConfigError(f"{where}: expected a list of integers like [256, 128], "
                              f"got {_show(value)}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of integers like [256, 128], got {_show(value)}")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"{where}[{i}]: expected an integer, got {_show(item)}")
        _check_range(item, f"{where}[{i}]", meta)
    return tuple(value)


def _coerce_str_list(value: Any, where: str) -> tuple[str, ...]:
    """A list of non-empty strings (e.g. run directories); one string is a list of one."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of strings, got {_show(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}[{i}]: expected a non-empty string, got {_show(item)}")
    return tuple(value)


def _is_non_finite(value: Any) -> bool:
    """NaN or ±infinity, as a YAML float (.nan, .inf) or a string float() reads ("nan", "inf")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        return not math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


def _as_float(value: Any) -> float | None:
    # PyYAML reads "1e-3" (no dot) as a string; accept numeric strings so --set lr=1e-3 works.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _check_range(value: float, where: str, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        bound = f"> {lo}" if meta.get("lo_open") else f">= {lo}"
        raise ConfigError(f"{where}: must be {bound}, got {value}")
    if hi is not None and (value >= hi if meta.get("hi_open") else value > hi):
        bound = f"< {hi}" if meta.get("hi_open") else f"<= {hi}"
        raise ConfigError(f"{where}: must be {bound}, got {value}")


# Common spellings from other tools that string similarity would not find.
_ALIASES = {"learning_rate": "lr", "lr_schedule": "schedule", "scheduler": "schedule",
            "hidden_sizes": "hidden", "hidden_layers": "hidden", "layers": "hidden",
            "n_epochs": "epochs", "num_epochs": "epochs", "batchsize": "batch_size",
            "optim": "optimizer", "activation_function": "activation", "patience":
            "early_stopping_patience", "wd": "weight_decay", "random_seed": "seed"}


def _suggest(key: str, prefix: str, root: type) -> str:
    """Did-you-mean among the section's keys, then among every dotted path."""
    section = _section_keys(prefix, root)
    if _ALIASES.get(key) in section:
        return f" (did you mean '{prefix}{_ALIASES[key]}'?)"
    close = difflib.get_close_matches(key, section, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    paths = leaf_paths(root)
    by_leaf = {p.rsplit(".", 1)[-1]: p for p in paths}
    close = difflib.get_close_matches(key, list(by_leaf), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {by_leaf[close[0]]!r}?)"
    return f"; known keys here: {', '.join(section)}"


def _section_keys(prefix: str, root: type) -> list[str]:
    cls: Any = root
    for part in [p for p in prefix.split(".") if p]:
        cls = typing.get_type_hints(cls)[part]
    return [f.name for f in dataclasses.fields(cls)]


def leaf_paths(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of the schema as a dotted path, e.g. ``"optimizer.lr"``."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths += leaf_paths(hints[f.name], prefix + f.name + ".")
        else:
            paths.append(prefix + f.name)
    return paths


def type_name(value: Any) -> str:
    return {type(None): "null", dict: "a mapping", list: "a list", str: "a string",
            bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").strip()
    return f"{text} ({type_name(value)})"
