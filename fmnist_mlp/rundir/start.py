"""A run's directory opened for training in one call: created, locked, its config recorded and its
recorder listening (or, resumed, its recorder started on the run the resume already locked).

The session asks twice: where a new run goes is checked before anything is loaded
(:func:`check_new_run`: the name, and a runs folder that can be written), and once the run's
engine is built :func:`start_run` does the rest here, in one place, rather than the session
stepping through the directory, the lock, the config file and the recorder one at a time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmnist_mlp.errors import CheckpointError, ConfigError
from fmnist_mlp.io import files as safe_io
from fmnist_mlp.io.paths import check_new_dirs
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir import guard, layout
from fmnist_mlp.rundir.recorder import RunRecorder


@dataclass(frozen=True)
class NewRun:
    """Where a new run goes, checked: its runs folder (writable, or creatable) and its name."""

    runs_dir: Path
    name: str


def check_new_run(runs_dir: str | Path, name: str) -> NewRun:
    """The run's name and its runs folder, checked before any data is fetched or decoded: a bad
    name or a folder that cannot be written is one line (ConfigError, exit 2), and nothing is
    created."""
    new = NewRun(Path(runs_dir), runs.validate_run_name(name))
    check_runs_dir_writable(new.runs_dir)
    return new


def start_run(where: NewRun | Path, held: contextlib.ExitStack, record: Any, epochs: int,
              checkpoint_every: int, engine: Any, streams: Mapping[str, np.random.Generator],
              state: Any, normalization: Mapping[str, float]) -> RunRecorder:
    """The run's recorder, listening. ``where``: a :class:`NewRun`, whose directory is made here
    (an exclusive mkdir, never reused), locked (released by ``held``) and given its record,
    ``config.yaml``; or a resumed run's directory, which its resume has already locked.

    ``record`` is the run's record (``.config``, the resolved config as a plain dict kept in
    every checkpoint; ``.yaml``, the same as ``config.yaml``'s text); ``engine`` holds the model
    and optimiser the checkpoints keep, ``state`` the loop's counters (a resumed run's,
    restored), ``normalization`` the input's mean and std."""
    resumed = not isinstance(where, NewRun)
    run_dir = (Path(where) if resumed else
               create_run_dir(where, record=record.yaml, held=held))
    return RunRecorder(run_dir, record.config, epochs, checkpoint_every, engine, streams, state,
                       resumed=resumed, normalization=normalization)


def create_run_dir(new: NewRun, *, record: str | None = None,
                   held: contextlib.ExitStack | None = None) -> Path:
    """Make ``<runs_dir>/<timestamp>-<name>-<6 hex>`` with an exclusive mkdir (never reused), in
    the runs folder and with the name :func:`check_new_run` checked (the names of the folders
    it creates included, so they are not checked twice).

    The random id makes collisions unlikely; ``os.mkdir`` failing on an existing path makes them
    impossible, even for eight trainings started in the same second. A run about to train is
    born whole: ``held`` takes its lock at once (released when ``held`` closes) and ``record``
    (the resolved config's YAML) is written as its ``config.yaml`` before the path is returned.
    """
    runs_dir, name = new.runs_dir, new.name
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--runs-dir {runs_dir}: cannot create directory "
                          f"({exc.strerror or exc})") from None
    stamp = time.strftime(layout.STAMP_FORMAT)
    for _ in range(100):
        run_dir = runs_dir / layout.run_dir_name(stamp, name, secrets.token_hex(3))
        try:
            os.mkdir(run_dir)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"--runs-dir {runs_dir}: cannot create a run directory "
                              f"({exc.strerror or exc})") from None
        safe_io.dir_inside(run_dir, layout.CHECKPOINTS)
        if held is not None:
            held.callback(guard.RunLock(run_dir).acquire().release)
        if record is not None:
            runs.atomic_write_text(run_dir / layout.CONFIG, record, base=run_dir)
        return run_dir
    raise CheckpointError(f"{runs_dir}: could not create a unique run directory")


def check_runs_dir_writable(runs_dir: str | Path) -> None:
    """ConfigError (exit 2) when ``runs_dir``, or the nearest folder that exists above it, cannot
    be written (read-only mount, permissions): said before any data is fetched or decoded."""
    check_new_dirs(runs_dir, "--runs-dir", ConfigError)
    path = Path(runs_dir).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        what = "is not a directory" if not path.is_dir() else "is not writable"
        raise ConfigError(f"--runs-dir {runs_dir}: {path} {what}")
