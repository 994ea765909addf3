"""Continuing a run: lock it, check everything it holds, and restore its last checkpoint.

A refused resume leaves the run exactly as it was: every check below runs before anything in the
run directory is touched (the stale temporary files it removes are its own, under its lock).
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from fmnist_mlp.config.load import config_to_dict, load_config
from fmnist_mlp.config.schema import Config
from fmnist_mlp.errors import CheckpointError
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir import guard, layout


@dataclass
class ResumePoint:
    """A run ready to continue: its directory, its config and its last checkpoint."""

    run_dir: Path
    cfg: Config
    checkpoint: runs.Checkpoint


@contextlib.contextmanager
def open_for_resume(run_dir: Path) -> Iterator[ResumePoint]:
    """Lock the run (one of two resumes started together wins) and check it; the lock is held
    until the block ends."""
    if not (run_dir / layout.CONFIG).is_file():
        raise CheckpointError(f"--resume {run_dir}: not a run directory (no {layout.CONFIG})")
    if not runs.is_run_dir(run_dir):
        raise CheckpointError(f"--resume {run_dir}: not a run directory (needs {layout.CONFIG} "
                              f"and {layout.SUMMARY})")
    lock = guard.RunLock(run_dir).acquire()
    try:
        yield check_resumable(run_dir)
    finally:
        lock.release()


def check_resumable(run_dir: Path) -> ResumePoint:
    """The run's config and last checkpoint, once the run is known to be unfinished, not running
    elsewhere, free of planted links, and its checkpoint made from its own config."""
    from fmnist_mlp.io import files as safe_io

    guard.check_run_entries(run_dir)
    for sub in (".", layout.CHECKPOINTS, layout.PLOTS):   # leftovers of a SIGKILL; we hold the lock
        safe_io.clean_stale_tmp(run_dir / sub, legacy=True)
    summary = runs.read_summary(run_dir)
    if summary.get("status") == "finished":
        raise CheckpointError(f"--resume {run_dir}: the run already finished")
    # We hold the run's lock, so no process on this host trains it, whatever pid it recorded
    # (that pid may belong to another process by now). One on another host cannot be told.
    if summary.get("status") == "running" and "pid" in summary \
            and summary.get("host") != socket.gethostname():
        raise CheckpointError(f"--resume {run_dir}: the run is still running (pid "
                              f"{summary['pid']} on {summary.get('host')}); stop it first")
    guard.refuse_links_inside(run_dir, layout.CONFIG)
    cfg = load_config(run_dir / layout.CONFIG)
    guard.refuse_links_inside(run_dir, layout.LAST)
    last = layout.last_checkpoint(run_dir)
    if not last.is_file():
        raise CheckpointError(f"--resume {run_dir}: no {layout.LAST} (it stopped before "
                              f"finishing an epoch); start a new run instead")
    ckpt = runs.load_checkpoint(last)
    if _with_defaults(ckpt.meta.get("config"), config_to_dict(Config())) != config_to_dict(cfg):
        raise CheckpointError(f"{last}: its config differs from {run_dir / layout.CONFIG}")
    return ResumePoint(run_dir, cfg, ckpt)


def _with_defaults(stored: Any, defaults: dict) -> Any:
    """A stored config with keys added to the schema since (e.g. model.batchnorm) filled in at
    their defaults, so runs started by an older version still resume. Compared with the run's
    checked config, so it needs no checking of its own: anything else differs."""
    if not isinstance(stored, dict):
        return stored
    merged = dict(defaults)
    for key, value in stored.items():
        merged[key] = (_with_defaults(value, defaults[key])
                       if isinstance(defaults.get(key), dict) else value)
    return merged


def restore(point: ResumePoint, engine: Any, streams: Mapping[str, np.random.Generator],
            epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """Load the checkpoint into the engine (parameters, optimiser state) and the random streams;
    returns its progress counters (the loop's ``TrainState`` fields), each checked against the
    run's ``epochs`` and ``steps_per_epoch`` (its plan's)."""
    ckpt, where = point.checkpoint, layout.last_checkpoint(point.run_dir)
    counters = checked_counters(ckpt.meta.get("state"), epochs, steps_per_epoch, where)
    try:
        engine.model.load_state_dict(ckpt.params)
        engine.optimizer.load_state_dict(ckpt.optim_state)
        for name, gen in streams.items():
            gen.bit_generator.state = ckpt.rng_states[name]
    except (KeyError, ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise CheckpointError(f"{where}: does not match the run's config ({exc})") from None
    return counters


def checked_counters(raw: Any, epochs: int, steps_per_epoch: int, where: Path) -> dict[str, Any]:
    """The checkpoint's progress counters, each checked for type and range (a damaged value
    must be refused here, not surface later as a ZeroDivisionError in the loop)."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: metadata lacks its training state")

    def bad(key: str) -> CheckpointError:
        return CheckpointError(f"{where}: damaged metadata: state.{key} = {raw.get(key)!r}")

    def count(key: str, hi: int) -> int:
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            raise bad(key)
        return value

    epoch = count("epoch", epochs)
    counters: dict[str, Any] = dict(epoch=epoch, step=count("step", epoch * steps_per_epoch),
                                    best_epoch=count("best_epoch", epoch),
                                    stale_epochs=count("stale_epochs", epoch))
    acc = raw.get("best_val_acc", -1.0)
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not -1.0 <= acc <= 1.0:
        raise bad("best_val_acc")
    counters["best_val_acc"] = float(acc)
    if not isinstance(raw.get("early_stopped", False), bool):
        raise bad("early_stopped")
    counters["early_stopped"] = raw.get("early_stopped", False)
    return counters
