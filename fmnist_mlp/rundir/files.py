"""Run directories: their names, atomic writes, metrics.jsonl, summary.json and .npz checkpoints
(a run directory is made by :mod:`fmnist_mlp.rundir.start`).

The names of a run's files and of the run directory itself are :mod:`fmnist_mlp.rundir.layout`'s.
Checkpoints are plain ``np.savez`` archives read back with ``allow_pickle=False``, so loading one
can never execute code. Every file except the append-only log and metrics is written atomically
(temporary file in the same directory, then ``os.replace``): a crash mid-write leaves the previous
version intact.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from fmnist_mlp.rundir import guard as run_guard
from fmnist_mlp.rundir import layout
from fmnist_mlp.io import files as safe_io
from fmnist_mlp.errors import CheckpointError, ConfigError
from fmnist_mlp.io.reader import read_regular

CHECKPOINT_FORMAT = "fmnist-mlp-checkpoint"
CHECKPOINT_VERSION = 1
_MAX_SUMMARY_BYTES = 1 << 20


# ---------------------------------------------------------------------------------------------
# Run directories


def validate_run_name(name: str) -> str:
    """A run name is one path component of safe characters; ``../x`` or ``/etc`` are refused."""
    if not layout.NAME_RE.match(name or "") or ".." in name:
        raise ConfigError(f"--name {name!r}: use 1-80 letters, digits, '.', '_', '-', '+' or '=' "
                          f"(no '/', no '..', not starting with '.')")
    return name


def is_run_dir(path: Path) -> bool:
    return (path / layout.CONFIG).is_file() and (path / layout.SUMMARY).is_file()


# ---------------------------------------------------------------------------------------------
# Atomic writes (one helper for the whole package: fmnist_mlp.io.files)


def atomic_write_bytes(path: str | Path, data: bytes, base: str | Path | None = None) -> None:
    """Write ``data`` to a new temporary file beside ``path``, fsync it, rename it over ``path``.

    base: the run directory ``path`` lies in; no component between them may be a link.
    """
    safe_io.atomic_write(path, data, base=base)


def atomic_write_text(path: str | Path, text: str, base: str | Path | None = None) -> None:
    safe_io.atomic_write_text(path, text, base=base)


def atomic_write_json(path: str | Path, obj: Any, base: str | Path | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", base=base)


# ---------------------------------------------------------------------------------------------
# Metrics, summary, log


class MetricsWriter:
    """Appends one JSON line per epoch to ``metrics.jsonl`` and flushes it straight away."""

    def __init__(self, run_dir: Path, keep_epochs_upto: int | None = None):
        self.path = Path(run_dir) / layout.METRICS
        if keep_epochs_upto is not None:
            # On resume, drop epochs newer than the checkpoint: they will be trained again.
            kept = [m for m in read_metrics(run_dir)
                    if not isinstance(m.get("epoch"), (int, float)) or m["epoch"] <= keep_epochs_upto]
            atomic_write_text(self.path, "".join(json.dumps(m) + "\n" for m in kept), base=run_dir)
        self._file = safe_io.open_inside(run_dir, layout.METRICS, "a")

    def write(self, metrics: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(metrics)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


_MAX_METRICS_BYTES = 256 << 20     # ~300 bytes an epoch: some 900,000 epochs


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch metrics of a run; a truncated last line (crash mid-write) is skipped."""
    path = Path(run_dir) / layout.METRICS
    try:
        # A regular file below the run directory, no link, bounded: a sparse file of
        # terabytes is refused from its size, a FIFO is never waited on.
        text = read_regular(path, "metrics file", _MAX_METRICS_BYTES, base=run_dir,
                            error=CheckpointError).decode("utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / layout.SUMMARY, dict(summary), base=run_dir)


def overwrite_summary_in_place(run_dir: str | Path, summary: Mapping[str, Any]) -> bool:
    """Last resort when the atomic write fails (no room for a temporary on a full disk):
    rewrite summary.json in place, which reuses its own blocks. Returns whether it worked."""
    try:
        with safe_io.open_inside(run_dir, layout.SUMMARY, "r+b") as f:
            f.truncate(0)
            f.write((json.dumps(dict(summary), indent=2) + "\n").encode("utf-8"))
        return True
    except OSError:
        return False


def read_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / layout.SUMMARY
    try:
        data = json.loads(read_regular(path, "run summary", _MAX_SUMMARY_BYTES, base=run_dir,
                                       error=CheckpointError).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir}: not a run directory (no summary.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable summary ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a run summary")
    return data


def process_owner() -> dict[str, Any]:
    """Who is writing a run: recorded in summary.json so a dead "running" run can be told apart."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def is_stale(summary: Mapping[str, Any]) -> bool:
    """Marked running, but its process on this host is gone (killed -9, OOM, power loss)."""
    if summary.get("status") != "running" or summary.get("host") != socket.gethostname():
        return False
    pid = summary.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    return not safe_io.pid_alive(pid)


class RunLog:
    """``train.log``: timestamped human-readable lines, appended and flushed."""

    def __init__(self, run_dir: Path):
        self._file = safe_io.open_inside(run_dir, layout.LOG, "a")

    def write(self, message: str) -> None:
        self._file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def format_epoch(m: Mapping[str, float], total_epochs: int, is_best: bool = False) -> str:
    """The one per-epoch line, printed on stderr and written to the run's train.log; ``*`` marks
    the best epoch so far by validation accuracy."""
    width = len(str(total_epochs))
    return (f"epoch {m['epoch']:>{width}}/{total_epochs}  "
            f"train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
            f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}  "
            f"lr {m['lr']:.3g}  {m['epoch_time']:.1f}s  {m['samples_per_sec']:,.0f}/s"
            + ("  *" if is_best else ""))


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    """Everything needed to rebuild a model and continue training exactly."""

    params: dict[str, np.ndarray]
    optim_state: dict[str, np.ndarray]
    rng_states: dict[str, dict]     # stream name -> np.random.Generator.bit_generator.state
    meta: dict                      # {"config", "model_spec", "epoch", "step", "best", ...}


def checkpoint_bytes(ckpt: Checkpoint) -> bytes:
    """Serialise to ``.npz`` bytes: ``param/<name>``, ``optim/<name>``, ``rng/<stream>`` and
    ``meta`` (the last two as 0-d unicode arrays holding JSON, which need no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in ckpt.params.items():
        arrays[f"param/{name}"] = value
    for name, value in ckpt.optim_state.items():
        arrays[f"optim/{name}"] = np.asarray(value)
    for name, state in ckpt.rng_states.items():
        arrays[f"rng/{name}"] = np.array(json.dumps(state))
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **ckpt.meta}
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    try:
        np.savez(buffer, **arrays)
        return buffer.getvalue()
    except (MemoryError, ValueError) as exc:
        # numpy's zip writer, interrupted by a MemoryError, fails again closing its member
        # ("I/O operation on closed file"): the memory is the cause either way.
        if not isinstance(exc, MemoryError) and not isinstance(exc.__context__, MemoryError):
            raise
        raise CheckpointError("not enough memory to write the checkpoint (the previous "
                              "epoch's checkpoint, if any, is kept)") from None


def save_checkpoint(paths: Path | Iterable[Path], ckpt: Checkpoint | bytes,
                    base: Path | None = None) -> None:
    """Atomically write one serialised checkpoint to each path (``last``, maybe ``best``);
    ``base``: the run directory, inside which no link is followed."""
    data = ckpt if isinstance(ckpt, bytes) else checkpoint_bytes(ckpt)
    for path in [paths] if isinstance(paths, Path) else paths:
        atomic_write_bytes(path, data, base=base)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``allow_pickle=False``; anything missing, truncated, pickled or
    foreign is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not _is_zip(path):
        raise CheckpointError(f"{path}: not a .npz checkpoint (foreign or corrupt file)")
    from fmnist_mlp.rundir.checkpoint_check import check_members

    try:
        # Names, shapes, dtypes and sizes from the headers, against the stored model spec,
        # before any array is read: a hostile header cannot make us allocate.
        with zipfile.ZipFile(path) as zf:
            meta = check_members(path, zf)      # the parsed metadata, already checked
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}   # read all now, inside the guard
    except ValueError as exc:
        if "pickle" in str(exc):
            raise CheckpointError(f"{path}: refused: holds pickled Python objects, "
                                  f"which a checkpoint never needs") from None
        raise CheckpointError(f"{path}: not a valid .npz checkpoint ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: not a valid .npz checkpoint (truncated or foreign: "
                              f"{exc})") from None
    if not isinstance(arrays, dict) or "meta" not in arrays:
        raise CheckpointError(f"{path}: not a fmnist-mlp checkpoint (no 'meta' entry)")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a fmnist-mlp checkpoint")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')} "
                              f"not supported (expected {CHECKPOINT_VERSION})")
    ckpt = Checkpoint({}, {}, {}, meta)
    for key, value in arrays.items():
        kind, _, name = key.partition("/")
        if kind == "param":
            ckpt.params[name] = value
        elif kind == "optim":
            ckpt.optim_state[name] = value
        elif kind == "rng":
            ckpt.rng_states[name] = _json_entry(value, path, key)
    if not ckpt.params:
        raise CheckpointError(f"{path}: checkpoint holds no parameters")
    return ckpt


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from None


def _json_entry(array: np.ndarray, path: Path, key: str) -> Any:
    if array.shape != () or array.dtype.kind != "U":
        raise CheckpointError(f"{path}: entry {key!r} is not a JSON string")
    try:
        return json.loads(str(array))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: entry {key!r} holds invalid JSON") from None


def find_checkpoint(path: str | Path) -> Path:
    """A run directory resolves to its ``best.npz``, falling back to ``last.npz``; a file is
    returned as is."""
    path = Path(path)
    if path.is_dir():
        for name in layout.MODEL_FILES:
            candidate = path / name
            if os.path.lexists(candidate):
                run_guard.refuse_links_inside(path, name)
                if not candidate.is_file():     # a FIFO or folder under best.npz: said, not skipped
                    raise CheckpointError(f"{candidate}: not a regular file")
                return candidate
        raise CheckpointError(f"{path}: no {layout.BEST} or {layout.LAST} "
                              f"(not a run directory, or it never finished an epoch)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    return path


def list_run_dirs(runs_dir: str | Path) -> list[Path]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for p in runs_dir.iterdir():
        try:
            if p.is_dir() and is_run_dir(p):
                found.append(p)
        except OSError:         # e.g. another user's run we may not look into: listed, and
            found.append(p)     # then shown as one unreadable row rather than failing the table
    return sorted(found)
