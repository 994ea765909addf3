"""A sweep worker: claims trials from the study one at a time and trains each as a run directory.

A trial is claimed under the sweep's claim lock: first any RUNNING trial whose worker is gone
(its trial lock is free: interrupted, killed, pre-empted), which is resumed from its last
checkpoint; else a new trial while the budget lasts. The trial lock is held until the trial ends.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.errors import TrainingDivergedError, TrainingInterrupted, TrainingPruned
from fmnist_mlp.rundir.guard import RunLock
from fmnist_mlp.sweep.spec import decode_params
from fmnist_mlp.sweep.study import (
    Sweep,
    claim_lock,
    import_optuna,
    make_pruner,
    make_sampler,
    suggest,
    try_lock_trial,
)


@dataclass
class Claim:
    number: int
    trial_id: int
    params: dict[str, Any]
    run_dir: Path | None        # set when the trial is being resumed and had started a run
    lock_fd: int


def run_worker(sweep: Sweep, data_dir: str | Path | None = None,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> int:
    """Train trials until the budget is spent; returns how many this worker trained."""
    sweep.study.pruner = make_pruner(sweep.spec)
    done = 0
    while (claim := claim_next(sweep)) is not None:
        try:
            train_trial(sweep, claim, data_dir, log)
        finally:
            os.close(claim.lock_fd)
        done += 1
    return done


def claim_next(sweep: Sweep) -> Claim | None:
    optuna = import_optuna()
    study, spec = sweep.study, sweep.spec
    with claim_lock(sweep.dir):
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state == optuna.trial.TrialState.RUNNING:
                fd = try_lock_trial(sweep.dir, t.number)
                if fd is not None:          # its worker is gone: take it over
                    run_dir = t.user_attrs.get("run_dir")
                    return Claim(t.number, t._trial_id, decode_params(t.params, spec.space),
                                 Path(run_dir) if run_dir else None, fd)
        if len(trials) >= sweep.budget:
            return None
        study.sampler = make_sampler(spec, len(trials))
        trial = study.ask()
        fd = try_lock_trial(sweep.dir, trial.number)
        assert fd is not None, "a new trial's lock is free"      # we hold the claim lock
        params = suggest(trial, spec)
        return Claim(trial.number, trial._trial_id, params, None, fd)


class _ReportToTrial:
    """Training-loop callback: each epoch's validation accuracy goes to the study; when the
    pruner says so, the run stops as pruned."""

    def __init__(self, trial):
        self.trial = trial

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        pass

    def on_batch(self, batch: int, loss: float, acc: float) -> None:
        pass

    def on_epoch_end(self, metrics, state, is_best) -> None:
        self.trial.report(float(metrics["val_acc"]), int(metrics["epoch"]))
        if self.trial.should_prune():
            raise TrainingPruned(f"pruned after epoch {metrics['epoch']} "
                                 f"(val acc {metrics['val_acc']:.4f} behind other trials)")


def train_trial(sweep: Sweep, claim: Claim, data_dir, log) -> None:
    from fmnist_mlp.training.session import run_training

    optuna = import_optuna()
    study, n = sweep.study, claim.number
    trial = optuna.trial.Trial(study, claim.trial_id)
    trial.set_user_attr("worker", _worker_id())
    ended = _already_ended(claim.run_dir)
    if ended is not None:            # its worker died between the run's end and telling the study
        _tell(study, n, ended, runs.read_summary(claim.run_dir), log)
        return
    resume = claim.run_dir if _resumable(claim.run_dir) else None
    if resume is None and claim.run_dir is not None:
        _discard_unstarted_run(claim.run_dir, sweep.runs_dir, log)
    shown = " ".join(f"{k}={v}" for k, v in claim.params.items())
    log(f"trial {n}: " + (f"resuming {resume}" if resume else f"started: {shown}"))
    cfg = None if resume else sweep.spec.trial_config(claim.params)
    try:
        result = run_training(cfg, name=f"trial-{n:04d}", runs_dir=sweep.runs_dir,
                              data_dir=data_dir, resume=resume, callback=_ReportToTrial(trial),
                              on_run_dir=lambda d: trial.set_user_attr("run_dir", str(d)))
    except TrainingPruned as exc:
        _tell(study, n, "pruned", {"message": str(exc)}, log)
    except TrainingDivergedError as exc:
        _tell(study, n, "failed", {"message": str(exc)}, log)
    except TrainingInterrupted:
        log(f"trial {n}: interrupted; the same `sweep run` (or another worker) resumes it")
        raise
    else:
        _tell(study, n, "finished", result.summary, log)


def _tell(study, number: int, status: str, summary: dict, log) -> None:
    optuna = import_optuna()
    TrialState = optuna.trial.TrialState
    if status == "finished":
        study.tell(number, float(summary["best_val_acc"]))
        log(f"trial {number}: finished, best val acc {summary['best_val_acc']:.4f}")
    else:
        state = TrialState.PRUNED if status == "pruned" else TrialState.FAIL
        study.tell(number, state=state)
        log(f"trial {number}: {status}: {summary.get('message', '')}")


def _already_ended(run_dir: Path | None) -> str | None:
    if run_dir is None or not runs.is_run_dir(run_dir):
        return None
    status = runs.read_summary(run_dir).get("status")
    return status if status in ("finished", "pruned", "failed") else None


def _resumable(run_dir: Path | None) -> bool:
    """A run with a saved epoch. A run still marked running belongs to a worker that is gone
    (we hold its trial lock), so it is marked interrupted first, as it would have marked itself."""
    if run_dir is None or not (run_dir / "checkpoints" / "last.npz").is_file():
        return False
    summary = runs.read_summary(run_dir)
    if summary.get("status") == "running":
        summary.update(status="interrupted", message="its sweep worker died; resumed by another")
        runs.write_summary(run_dir, summary)
    return True


# A run's bookkeeping before its first checkpoint, its lock file (run_guard.RunLock) included.
_UNSTARTED_FILES = {"config.yaml", "summary.json", "train.log", "metrics.jsonl", RunLock.NAME}


def _discard_unstarted_run(run_dir: Path, runs_dir: Path, log) -> None:
    """A trial stopped before its first epoch ended left a run directory with nothing to resume
    from; the trial starts again in a new one, so this one is removed — only after checking it is
    the sweep's own (a real directory in DIR/runs holding nothing but a run's bookkeeping files
    and an empty checkpoints folder), so each trial stays one run."""
    if run_dir.is_symlink() or not run_dir.is_dir() or run_dir.parent.resolve() != runs_dir.resolve():
        return
    ckpt = run_dir / "checkpoints"
    names = {p.name for p in run_dir.iterdir()}
    if not names <= _UNSTARTED_FILES | {"checkpoints"}:
        return
    if "checkpoints" in names and (ckpt.is_symlink() or not ckpt.is_dir() or any(ckpt.iterdir())):
        return
    for name in names - {"checkpoints"}:
        (run_dir / name).unlink()
    if "checkpoints" in names:
        ckpt.rmdir()
    run_dir.rmdir()
    log(f"removed {run_dir}: its trial stopped before its first epoch and starts over")


def _worker_id() -> str:
    slurm = os.environ.get("SLURM_ARRAY_JOB_ID")
    where = f"{socket.gethostname()}:{os.getpid()}"
    if slurm:
        where += f" slurm {slurm}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return where
