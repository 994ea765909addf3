"""Reading a config: a YAML file plus ``--set`` overrides, checked once into a :class:`Config`,
and (:func:`plan_from`) planned, in one descent: read, checked, planned.

A command reads its config here once and passes the plan (or the :class:`Config`) down;
everything after that takes the checked values, never the file or a dict again. Writing one
back (the run's record: ``config_to_dict``, ``dump_config``, ``flatten``) is the plan's,
:mod:`fmnist_mlp.config.plan`, named here too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fmnist_mlp.config.plan import Plan, config_record, config_to_dict, dump_config, flatten  # noqa: F401
from fmnist_mlp.config.plan import make_plan
from fmnist_mlp.config.schema import Config
from fmnist_mlp.config.validate import config_from_dict, type_name
from fmnist_mlp.errors import ConfigError


def plan_from(source: str | Path | Mapping[str, Any] | None,
              overrides: Iterable[str] | Mapping[str, Any] = (),
              seeds: Sequence[int] | None = None, *, label: str | None = None) -> list[Plan]:
    """A config read, checked and planned in one descent: a YAML file's path, a mapping or None
    (the defaults), with overrides as :func:`config_from` takes them (and ``label``); one plan
    per seed of ``seeds`` (each run's ``seed``), else one plan with the config's own seed. A
    file's stem is the runs' default name."""
    cfg = config_from(source, overrides, label=label)
    configs = [dataclasses.replace(cfg, seed=seed) for seed in seeds] if seeds else [cfg]
    path = source if isinstance(source, (str, Path)) else None
    return [make_plan(c, path) for c in configs]


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML file (or start from the defaults when ``path`` is None), apply ``--set``
    overrides (``"optimizer.lr=0.01"``, values parsed as YAML) and validate the result."""
    raw: dict = {}
    if path is not None:
        raw = read_config_file(Path(path))
    overrides = list(overrides)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return config_from_dict(raw, source=_source_label(path, overrides))


def config_from(source: str | Path | Mapping[str, Any] | None,
                overrides: Iterable[str] | Mapping[str, Any] = (), *,
                label: str | None = None) -> Config:
    """The Python API's reading of a config: a YAML file's path (as :func:`load_config`) or a
    mapping (a nested dict as YAML gives it), with overrides as ``--set`` strings
    (``"optimizer.lr=0.01"``) or a mapping of dotted keys to values (``{"optimizer.lr": 0.01}``).
    Checked as the command line checks it; the same errors. ``label`` names a mapping in them
    (a sweep's trial: its spec), instead of "config"."""
    if isinstance(overrides, (str, bytes)):
        raise ConfigError("set: expected a mapping of dotted keys to values, or a list of "
                          "KEY.PATH=VALUE strings, not one string")
    if source is None or isinstance(source, (str, Path)):
        if isinstance(overrides, Mapping):
            raw = read_config_file(Path(source)) if source is not None else {}
            return _with_overrides(raw, overrides, _source_label(source, ["set"]))
        return load_config(source, overrides)
    if not isinstance(source, Mapping):
        raise ConfigError(f"config: expected a YAML file's path or a mapping of keys, got "
                          f"{type_name(source)}")
    import copy

    raw = copy.deepcopy(source if isinstance(source, dict) else dict(source))  # theirs untouched
    if not isinstance(overrides, Mapping):
        overrides = dict(parse_override(item) for item in overrides)
    return _with_overrides(raw, overrides, (label or "config") + (" + set" if overrides else ""))


def _with_overrides(raw: dict, overrides: Mapping[str, Any], source: str) -> Config:
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"set: key {key!r} is not a dotted name like 'optimizer.lr'")
        _set_dotted(raw, key, value)
    return config_from_dict(raw, source=source)


def _source_label(path: str | Path | None, overrides: list[str]) -> str:
    parts = [str(path)] if path is not None else []
    if overrides:
        parts.append("--set")
    return " + ".join(parts) or "config"


def read_config_file(path: Path) -> dict:
    """A config file as a mapping, read once: a regular file of at most 1 MB (not /dev/zero, not a
    FIFO), strict YAML (a sweep's base config: :class:`fmnist_mlp.sweep.spec.SweepSpec`)."""
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
