"""A run's directory opened for training in one call: created, locked, its config recorded and its
recorder listening (or, resumed, its recorder started on the run the resume already locked).

The session asks twice: where a new run goes is checked before anything is loaded
(:func:`check_new_run`: the name, and a runs folder that can be written), and once the run's
engine is built :func:`start_run` does the rest here, in one place, rather than the session
stepping through the directory, the lock, the config file and the recorder one at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmnist_mlp.rundir import files as runs
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
    runs.check_runs_dir_writable(new.runs_dir)
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
               runs.create_run_dir(where.runs_dir, where.name, record=record.yaml, held=held))
    return RunRecorder(run_dir, record.config, epochs, checkpoint_every, engine, streams, state,
                       resumed=resumed, normalization=normalization)
