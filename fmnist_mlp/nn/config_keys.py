"""Which config keys set which :class:`~fmnist_mlp.nn.model.MLP` argument: ``MLP.from_config``.

The engine reads a config dict's ``model`` and ``loss`` sections and its ``seed`` itself, so it
imports nothing above it (no YAML, no schema). A key left out takes the constructor's default:
the defaults are written once, in ``MLP.__init__``'s signature (``config/schema.py`` repeats
them for its documentation, and a test holds the two equal). The config's other sections
(data, optimiser, schedule, training) configure a run, not a network: they are not read here.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from numbers import Integral, Real
from typing import Any, Mapping

from fmnist_mlp.errors import ConfigError

# section -> {config key: MLP constructor argument}
CONFIG_KEYS: dict[str, dict[str, str]] = {
    "model": {"hidden": "hidden", "activation": "activation", "output": "output",
              "dropout": "dropout", "input_dropout": "input_dropout", "batchnorm": "batchnorm",
              "init": "init", "dtype": "dtype", "layout": "layout"},
    "loss": {"name": "loss", "label_smoothing": "label_smoothing", "l2": "l2"},
}
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
    defaults = constructor_defaults(model_class)
    arguments = model_arguments(config, defaults)
    seed = config.get("seed", defaults["seed"])
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ConfigError(f"seed: {seed!r} is not valid; expected a non-negative integer")
    try:
        return model_class(**arguments, seed=int(seed))
    except ValueError as exc:       # the constructor names its argument: name the config key
        argument, _, why = str(exc).partition(": ")
        raise ConfigError(f"{_PATH_OF.get(argument, argument)}: {why or exc}") from None


def constructor_defaults(model_class: type) -> dict[str, Any]:
    """``{argument: default}`` of the model's constructor: the one source of the defaults."""
    return {name: p.default for name, p in inspect.signature(model_class).parameters.items()
            if p.default is not inspect.Parameter.empty}


def model_arguments(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments a config dict's ``model`` and ``loss`` sections set, each
    checked to have its default's kind (widths, a number, a flag, a name)."""
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
            argument = keys[key]
            arguments[argument] = _checked(f"{section}.{key}", value, defaults[argument])
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
