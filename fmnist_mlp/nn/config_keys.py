"""A model's config keys, declared once: which key sets which :class:`~fmnist_mlp.nn.model.MLP`
argument, its default and the values it allows. ``MLP.from_config`` reads a config dict by it.

This table is the one source of a model's keys: the config schema's ``model`` and ``loss``
sections are made from it (:mod:`fmnist_mlp.config.schema`), the plan hands the values on by it
(:func:`fmnist_mlp.config.plan.model_kwargs`), and ``MLP.from_config`` reads and checks a dict
by it, so adding a model key is its argument in ``MLP.__init__`` (what it does) and its row here
(tests/test_nn_model.py holds the two equal: every keyword argument is a key or in
:data:`NOT_CONFIG_KEYS`, with the same default, and ``MLP.spec`` records each). NumPy-free: the
schema reads it before a command runs. The config's other sections (data, optimiser, schedule,
training) configure a run, not a network: they are not read here.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping

from fmnist_mlp.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One config key: the MLP argument it sets, its default (MLP.__init__'s) and what it allows:
    ``choices`` names the engine's table of names as (module, attribute), read on first use;
    ``lo``/``hi`` bound a number (open bounds excluded)."""

    argument: str
    default: Any
    choices: tuple[str, str] | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False


# section -> {config key: Key}, in the order config.yaml lists them
MODEL_KEYS: dict[str, dict[str, Key]] = {
    "model": {
        "hidden": Key("hidden", (256, 128), lo=1),      # [] = softmax (logistic) regression
        "activation": Key("activation", "relu", ("fmnist_mlp.nn.activations", "ACTIVATIONS")),
        "output": Key("output", "softmax", ("fmnist_mlp.nn.losses", "OUTPUTS")),
        "dropout": Key("dropout", 0.0, lo=0.0, hi=1.0, hi_open=True),
        "input_dropout": Key("input_dropout", 0.0, lo=0.0, hi=1.0, hi_open=True),  # on the pixels
        "batchnorm": Key("batchnorm", False),   # batch normalisation before each hidden activation
        "init": Key("init", "auto", ("fmnist_mlp.nn.init", "INITS")),
        "dtype": Key("dtype", "float32", ("fmnist_mlp.nn.model", "DTYPES")),
        "layout": Key("layout", "auto", ("fmnist_mlp.nn.workspace", "LAYOUTS")),   # speed only
    },
    "loss": {
        "name": Key("loss", "cross_entropy", ("fmnist_mlp.nn.losses", "LOSSES")),
        "label_smoothing": Key("label_smoothing", 0.0, lo=0.0, hi=1.0, hi_open=True),
        "l2": Key("l2", 0.0, lo=0.0),           # coupled: added to the loss
    },
}
# MLP's keyword arguments that no model key sets, and what does.
NOT_CONFIG_KEYS = {
    "input_size": "the dataset's facts (784 pixels)",
    "num_classes": "the dataset's facts (10 classes)",
    "seed": "the config's top-level seed (a run passes its init stream instead)",
    "kernels": "train.kernels: who computes, never what",
    "bn_momentum": "fixed at its default: batch norm's running averages",
    "bn_eps": "fixed at its default: batch norm's stabiliser",
}
# section -> {config key: MLP constructor argument}
CONFIG_KEYS: dict[str, dict[str, str]] = {
    section: {key: k.argument for key, k in keys.items()} for section, keys in MODEL_KEYS.items()}
_PATH_OF = {arg: f"{section}.{key}" for section, keys in CONFIG_KEYS.items()
            for key, arg in keys.items()}
_PATH_OF["seed"] = "seed"


def build_from_config(model_class: type, config: Mapping[str, Any]):
    """``model_class(**arguments)`` from a config dict (or a config dataclass), seeded by its
    ``seed`` (0 when absent). Bad keys and values raise ConfigError naming the dotted key."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
    arguments = model_arguments(config)
    seed = config.get("seed", constructor_defaults(model_class)["seed"])
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ConfigError(f"seed: {seed!r} is not valid; expected a non-negative integer")
    try:
        return model_class(**arguments, seed=int(seed))
    except ValueError as exc:       # the constructor names its argument: name the config key
        argument, _, why = str(exc).partition(": ")
        raise ConfigError(f"{_PATH_OF.get(argument, argument)}: {why or exc}") from None


def constructor_defaults(model_class: type) -> dict[str, Any]:
    """``{argument: default}`` of the model's constructor."""
    return {name: p.default for name, p in inspect.signature(model_class).parameters.items()
            if p.default is not inspect.Parameter.empty}


def model_arguments(config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments a config dict's ``model`` and ``loss`` sections set, each
    checked to have its default's kind (widths, a number, a flag, a name); the constructor
    checks the values themselves."""
    _check_top_level(config)
    arguments: dict[str, Any] = {}
    for section, keys in CONFIG_KEYS.items():
        values = config.get(section)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__}")
        for key, value in values.items():
            if key not in keys:
                raise ConfigError(f"{section}.{key}: unknown key{_did_you_mean(key, keys, section)}")
            entry = MODEL_KEYS[section][key]
            arguments[entry.argument] = _checked(f"{section}.{key}", value, entry.default)
    return arguments


def _check_top_level(config: Mapping[str, Any]) -> None:
    """A misspelt ``model``/``loss``/``seed`` would silently give a default network."""
    for key in config:
        if key not in (*CONFIG_KEYS, "seed"):
            close = difflib.get_close_matches(str(key), [*CONFIG_KEYS, "seed"], n=1, cutoff=0.75)
            if close:
                raise ConfigError(f"{key}: unknown key (did you mean {close[0]!r}?)")


def _did_you_mean(key: str, keys: Mapping[str, str], section: str) -> str:
    close = difflib.get_close_matches(str(key), list(keys), n=1)
    return f" (did you mean '{section}.{close[0]}'?)" if close else ""


def _checked(path: str, value: Any, default: Any) -> Any:
    """``value`` if it has the kind of ``default``, else ConfigError naming ``path``."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):
        ok, kind = isinstance(value, Real) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a name"
    else:                                           # layer widths
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, Integral) and not isinstance(v, bool) for v in value)
        kind = "a list of layer widths"
    if not ok:
        raise ConfigError(f"{path}: {value!r} is not valid; expected {kind}")
    return value
