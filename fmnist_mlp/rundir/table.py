"""The table ``fmnist-mlp runs`` prints: one row per run, with the hyperparameters that differ.

Pure data shaping over what :mod:`fmnist_mlp.rundir.files` reads; formatting as text, CSV or JSON.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from fmnist_mlp.rundir import guard as run_guard
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir import layout
from fmnist_mlp.config.load import flatten
from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.io.printable import printable

BEST_FIRST = ("best_val_acc", "test_acc")     # sorted descending: the best run on top


def collect_runs(runs_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (``run``, ``name``, differing ``config.key``s, results) and the differing keys."""
    entries = []
    for run_dir in runs.list_run_dirs(runs_dir):
        summary, flat = _read_run(run_dir)
        entries.append((run_dir, summary, flat))
    # An unreadable run has no config: it must not make every key look like it differs.
    readable = [flat for _, _, flat in entries if flat]
    keys = sorted({k for flat in readable for k in flat})
    differing = [k for k in keys
                 if len({_hashable(flat.get(k)) for flat in readable}) > 1]
    rows = []
    for run_dir, summary, flat in entries:
        row: dict[str, Any] = {"run": printable(run_dir.name), "name": _text(summary.get("name"))}
        row.update({k: flat.get(k) for k in differing})
        row.update(best_val_acc=_number(summary.get("best_val_acc")),
                   test_acc=_number(summary.get("test_acc")),
                   epochs=_number(summary.get("epochs_completed")),
                   wall_time=_number(summary.get("wall_time")),
                   status=_status(run_dir, summary))
        rows.append(row)
    return rows, differing


SEED_KEYS = ("seed", "data.split_seed")      # what differs between the runs of one recipe


def group_seeds(rows: list[dict[str, Any]], differing: Sequence[str]) -> list[dict[str, Any]]:
    """One row per recipe: the runs that differ only in their seed (``train --seeds`` names them
    NAME-seedN), with how many, which seeds, and the mean and sample standard deviation of
    their accuracies (finished runs only)."""
    import re
    import statistics

    shared = [k for k in differing if k not in SEED_KEYS]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] != "finished":
            continue
        name = re.sub(r"-seed\d+$", "", row["name"])
        key = (name, *(_hashable(row.get(k)) for k in shared))
        groups.setdefault(key, []).append(row)
    out = []
    for (name, *_), members in groups.items():
        group: dict[str, Any] = {"name": name, **{k: members[0].get(k) for k in shared},
                                 "runs": len(members),
                                 "seeds": ",".join(str(m.get("seed", "-")) for m in members)}
        for column in BEST_FIRST:
            values = [m[column] for m in members if m.get(column) is not None]
            group[column] = statistics.fmean(values) if values else None
            group[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(group)
    return out


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, flattened config) of one run; whatever is wrong with it (unreadable, an alias
    bomb, a date, a nested list, a link) makes it one row marked "unreadable", not an error."""
    from fmnist_mlp.io.yaml_file import load_yaml_file

    try:
        summary = runs.read_summary(run_dir)
        run_guard.refuse_links_inside(run_dir, layout.CONFIG)
        config = load_yaml_file(run_dir / layout.CONFIG, "run config", FmnistMlpError)
        if not isinstance(config, dict):
            raise ConfigError("not a mapping")
        flat = {str(k): _cell_value(v) for k, v in flatten(config).items()}
    except (FmnistMlpError, OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError):
        return {"status": "unreadable"}, {}
    return summary, flat


def _status(run_dir: Path, summary: dict[str, Any]) -> str:
    status = summary.get("status", "unknown")
    if not isinstance(status, str):
        return "unknown"
    return "stale" if run_guard.is_stale(run_dir, summary) else printable(status)


def _number(value: Any) -> float | int | None:
    """A summary's number as is; anything else (hand-edited text, NaN, a list) becomes None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _text(value: Any) -> str:
    return printable(value) if isinstance(value, str) else ""


def _cell_value(value: Any) -> Any:
    """A config value as the table shows it: scalars and flat lists as they are, anything else
    (a date, a nested list) as printable text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return [printable(v) if isinstance(v, str) else v for v in value]
    return printable(value)


def sort_rows(rows: list[dict[str, Any]], key: str | None, reverse: bool = False) -> list[dict]:
    """Sort by a column (accuracies best first); rows lacking the value go last."""
    if key is None:
        return rows[::-1] if reverse else rows
    if rows and key not in rows[0]:
        raise ConfigError(f"--sort {key!r}: no such column; choose from {', '.join(rows[0])}")
    descending = (key in BEST_FIRST) != reverse
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    present.sort(key=lambda r: _sort_key(r[key]), reverse=descending)
    return present + missing


def format_text(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "no runs"
    columns = list(rows[0])
    cells = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def format_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue().rstrip("\n")


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "wall_time":
        return _duration(float(value))
    if isinstance(value, float):
        return f"{value:.4f}" if column.removesuffix("_std") in BEST_FIRST else f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return "" if value is None else value


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sort_key(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))
