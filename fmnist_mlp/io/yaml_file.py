"""YAML for files the tool does not trust (configs, a run's config.yaml, ``--set`` values).

``yaml.safe_load`` already builds only plain data (no Python objects, so no code runs), but it
expands aliases ("billion laughs": 782 bytes became gigabytes) and recurses once per nesting level
(a deep ``[[[[...]]]]`` is a RecursionError), and keeps the last of two equal keys in a mapping
without a word. This loader refuses anchors and aliases outright (a config never needs them),
nesting deeper than :data:`MAX_DEPTH` and a key given twice, so what it builds is never larger
than the text it read, and means what a reader of the text sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fmnist_mlp.errors import ConfigError, FmnistMlpError

MAX_DEPTH = 32                  # the schema is 3 deep; lists of lists add a level or two
MAX_CONFIG_BYTES = 1 << 20      # a config is a few hundred bytes
MAX_VALUE_CHARS = 10_000        # one --set value


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases or deep nesting."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"alias *{event.anchor} refused (anchors and aliases are not "
                           f"allowed in configs)", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"anchor &{event.anchor} refused (anchors and aliases are not "
                           f"allowed in configs)", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


    def construct_mapping(self, node, deep=False):
        # A key given twice (``seed: 1`` ... ``seed: 2``): YAML says keys are unique, PyYAML keeps
        # the last silently, and a reader of the file may well believe the first. Refused, as a
        # duplicate key in a JSON header is.
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:       # an unhashable key: the constructor's own error follows
                continue
            if duplicate:
                raise _Refused(f"key {key!r} appears twice in one mapping (which one was "
                               f"meant?)", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, label: str) -> Any:
    """Parse ``text`` with :class:`StrictLoader`; any problem is a ConfigError naming ``label``."""
    try:
        loader = StrictLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{label}: invalid YAML{line}: {problem}") from None
    except RecursionError:      # belt and braces: the depth limit should make this unreachable
        raise ConfigError(f"{label}: invalid YAML: nested too deeply") from None


def load_yaml_file(path: str | Path, what: str, error: type[FmnistMlpError] = ConfigError) -> Any:
    """``path`` read as a bounded regular file (:func:`fmnist_mlp.io.reader.read_regular`),
    decoded as UTF-8 and parsed with :func:`load_yaml`: how every YAML file a user names is read."""
    from fmnist_mlp.io.reader import read_regular

    raw = read_regular(path, what, MAX_CONFIG_BYTES, follow_links=True, error=error)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from None
    return load_yaml(text, str(path))
