"""The sweep spec: a YAML file naming a base config, fixed overrides, a search space and a budget.

Everything is checked here, before anything runs or is created: keys against the config schema
(with a did-you-mean), ranges, and that the base config with the fixed overrides and with each
end of every range is a valid config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping


from fmnist_mlp.config.load import Plan, config_from, config_to_dict, plan_from, read_config_file
from fmnist_mlp.config.schema import Config
from fmnist_mlp.config.validate import all_key_paths
from fmnist_mlp.io.yaml_file import load_yaml_file
from fmnist_mlp.config.validate import _suggest, type_name
from fmnist_mlp.errors import ConfigError

MAX_SEED = 2**32 - 1    # what NumPy's and Optuna's seeded generators take
METHODS = ("tpe", "random", "grid")
# A grid is built whole by Optuna's GridSampler (40^8 points took 24 GB before the kernel killed
# it); 100,000 trainings are far beyond any sweep a grid is the right tool for.
MAX_GRID_POINTS = 100_000
PRUNERS = ("none", "median", "hyperband")
METRICS = ("best_val_acc",)
KINDS = ("log_uniform", "uniform", "int_uniform", "choice")
SPEC_KEYS = ("base", "set", "metric", "method", "trials", "pruner", "seed", "space")


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched config key: ``kind`` is one of KINDS; ``values`` the range or the choices."""

    key: str
    kind: str
    values: tuple
    log: bool = False

    def encoded_choices(self) -> list:
        """Choices as Optuna stores them: lists (model.hidden) become their JSON text."""
        return [_encode(v) for v in self.values]

    def decode(self, value: Any) -> Any:
        if self.kind == "choice":
            return self.values[self.encoded_choices().index(value)]
        return value


def decode_params(stored: Mapping[str, Any], space: tuple[Param, ...]) -> dict[str, Any]:
    """A trial's parameters as Optuna stored them, back as config values."""
    out = {}
    for p in space:
        try:
            out[p.key] = p.decode(stored[p.key])
        except (KeyError, ValueError, TypeError):   # not drawn yet, or a damaged record
            continue
    return out


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    source: str
    base: Path | None
    fixed: dict[str, Any]           # ``set``: dotted key -> YAML value
    metric: str
    method: str
    trials: int                     # the budget; for grid, the size of the grid
    pruner: str
    pruner_args: dict[str, Any]
    seed: int
    space: tuple[Param, ...]
    # The base config file as read, once, when the spec is loaded (``{}``: the defaults): every
    # trial is this with ``fixed`` and its parameters, so no trial reads the file again.
    base_raw: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def trial_config(self, params: Mapping[str, Any]) -> Config:
        """One trial's checked config: the base as read, the fixed overrides, ``params``."""
        return config_from(self.base_raw, {**self.fixed, **params}, label=self._label)

    def trial_plan(self, params: Mapping[str, Any]) -> Plan:
        """One trial's plan: its config (as :meth:`trial_config`) checked and planned in one
        descent, as ``train`` plans its config (:func:`fmnist_mlp.config.load.plan_from`)."""
        return plan_from(self.base_raw, {**self.fixed, **params}, label=self._label)[0]

    @property
    def _label(self) -> str:
        return str(self.base) if self.base is not None else "config"

    def identity(self) -> dict[str, Any]:
        """What makes two runs of ``sweep run`` the same sweep: the spec and the resolved base."""
        return {"metric": self.metric, "method": self.method, "trials": self.trials,
                "pruner": self.pruner, "pruner_args": self.pruner_args, "seed": self.seed,
                "space": {p.key: {p.kind: list(p.values), "log": p.log} for p in self.space},
                "base_config": config_to_dict(self.trial_config({}))}

    def fingerprint(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec file; every problem is one ConfigError line (exit 2)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: sweep spec not found")
    # Read as a config is: a bounded regular file, no anchors or aliases (an alias bomb in a
    # choice list otherwise expands for minutes), bounded nesting.
    raw = load_yaml_file(path, "sweep spec")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (base, set, space, ...), got {type_name(raw)}")
    return spec_from_dict(raw, source=str(path), root=path.parent)


def spec_from_dict(raw: Mapping[str, Any], source: str, root: Path) -> SweepSpec:
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{source}: {key}: unknown sweep key{_did_you_mean(str(key), SPEC_KEYS)}")
    base = _base_path(raw.get("base"), source, root)
    fixed = _mapping(raw.get("set") or {}, f"{source}: set")
    for key in fixed:
        _check_config_key(key, f"{source}: set")
    metric = _one_of(raw.get("metric", "best_val_acc"), METRICS, f"{source}: metric")
    method = _one_of(raw.get("method", "tpe"), METHODS, f"{source}: method")
    pruner, pruner_args = _pruner(raw.get("pruner", "none"), f"{source}: pruner")
    seed = _int(raw.get("seed", 0), f"{source}: seed", lo=0, hi=MAX_SEED)
    space_raw = _mapping(raw.get("space"), f"{source}: space")
    if not space_raw:
        raise ConfigError(f"{source}: space: give at least one parameter to search")
    space = tuple(_param(key, value, f"{source}: space.{key}") for key, value in space_raw.items())
    clash = [p.key for p in space if p.key in fixed]
    if clash:
        raise ConfigError(f"{source}: {clash[0]}: both fixed in set and searched in space")
    if method == "grid":
        loose = [p.key for p in space if p.kind != "choice"]
        if loose:
            raise ConfigError(f"{source}: space.{loose[0]}: method grid needs a choice list "
                              f"for every parameter")
        trials = math.prod(len(p.values) for p in space)
        if trials > MAX_GRID_POINTS:     # counted here, before any file or study exists
            sizes = " x ".join(str(len(p.values)) for p in space)
            raise ConfigError(f"{source}: space: a grid of {sizes} = {trials} points; at most "
                              f"{MAX_GRID_POINTS} (Optuna's grid sampler holds every point in "
                              f"memory): use fewer values, or method random or tpe with a "
                              f"trials budget")
    else:
        trials = _int(raw.get("trials"), f"{source}: trials", lo=1)
    spec = SweepSpec(source, base, fixed, metric, method, trials, pruner, pruner_args, seed, space,
                     read_config_file(base) if base is not None else {})
    _check_configs(spec)
    return spec


def _check_configs(spec: SweepSpec) -> None:
    """Each end of every range (and each choice) must give a valid config, so no trial can fail
    on its config after hours of sweeping."""
    from fmnist_mlp.config.plan import check_fits

    # check_fits: the memory estimate too, so a model that cannot fit is refused now,
    # not left interrupted by every trial and retried by every rerun.
    check_fits(spec.trial_config({}), f"{spec.source}: set")
    for p in spec.space:
        for value in p.values:
            check_fits(spec.trial_config({p.key: value}),
                       f"{spec.source}: space.{p.key}={json.dumps(value)}")


def _param(key: str, value: Any, where: str) -> Param:
    _check_config_key(key, where.rsplit(":", 1)[0] + ": space")
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{where}: expected e.g. {{uniform: [0.0, 0.5]}} or {{choice: [...]}}, "
                          f"got {type_name(value)}")
    extra = set(value) - set(KINDS) - {"log"}
    kinds = [k for k in value if k in KINDS]
    if extra or len(kinds) != 1:
        bad = sorted(map(str, extra))[0] if extra else ", ".join(map(str, value))
        raise ConfigError(f"{where}: {bad}: expected one of {', '.join(KINDS)}"
                          f"{_did_you_mean(bad, KINDS) if extra else ''}")
    kind = kinds[0]
    log = value.get("log", kind == "log_uniform")
    if not isinstance(log, bool) or (log and kind == "choice") or (kind == "log_uniform" and not log):
        raise ConfigError(f"{where}: log: true or false, only with uniform or int_uniform")
    values = value[kind]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind}: expected a list, got {type_name(values)}")
    if kind == "choice":
        if len({_encode(v) for v in values}) != len(values):
            raise ConfigError(f"{where}: choice: repeated values")
        return Param(key, kind, tuple(values))
    if len(values) != 2:
        raise ConfigError(f"{where}: {kind}: expected [low, high]")
    lo, hi = (_int(v, f"{where}: {kind}") if kind == "int_uniform" else _float(v, f"{where}: {kind}")
              for v in values)
    if not lo < hi:
        raise ConfigError(f"{where}: {kind}: low {lo} must be below high {hi}")
    if log and lo <= 0:
        raise ConfigError(f"{where}: {kind}: a log scale needs low > 0, got {lo}")
    return Param(key, kind, (lo, hi), log)


def param_from_record(key: Any, entry: Any) -> Param:
    """A searched parameter as sweep.json records it (``{"uniform": [lo, hi], "log": false}``),
    checked as the spec's was: an edited sweep.json is one line, not a traceback later."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{key}: expected a mapping")
    return _param(key, dict(entry), f"sweep.json: space.{key}")


def _pruner(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """``median`` or ``{median: {n_startup_trials: 2}}`` (arguments of Optuna's pruner)."""
    args: Any = {}
    if isinstance(value, Mapping) and len(value) == 1:
        (value, args), = value.items()
        args = _mapping(args or {}, where)
    name = _one_of(value, PRUNERS, where)
    for key, arg in args.items():
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise ConfigError(f"{where}: {name}.{key}: expected a number")
    return name, dict(args)


def _check_config_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or key not in all_key_paths():
        prefix, _, leaf = str(key).rpartition(".")
        suggestion = ""
        try:
            suggestion = _suggest(leaf, prefix + "." if prefix else "", Config)
        except (KeyError, TypeError):       # the section itself is unknown
            suggestion = _did_you_mean(str(key), all_key_paths())
        raise ConfigError(f"{where}: {key}: not a config key{suggestion}")


def _did_you_mean(word: str, options) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f"; expected one of {', '.join(options)}"


def _base_path(value: Any, source: str, root: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: base: expected a config file path")
    # Relative to the working directory (as train --config), else to the spec's folder.
    path = Path(value)
    if not path.is_absolute() and not path.is_file() and (root / path).is_file():
        path = root / path
    if not path.is_file():
        where = "" if path.is_absolute() else (
            f" in the current directory ({Path.cwd()}) nor beside the spec ({root.resolve()})")
        raise ConfigError(f"{source}: base: {value}: config file not found{where}")
    return path.resolve()


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(value)}")
    return dict(value)


def _one_of(value: Any, options: tuple, where: str) -> str:
    if value not in options:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(options)}"
                          f"{_did_you_mean(str(value), options) if isinstance(value, str) else ''}")
    return value


def _int(value: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {type_name(value)}")
    if lo is not None and value < lo:
        raise ConfigError(f"{where}: must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: must be <= {hi}, got {value}")
    return value


def _float(value: Any, where: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _encode(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
