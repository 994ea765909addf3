"""A sweep worker: claims trials from the study one at a time and trains each as a run directory.

Each claim (:mod:`fmnist_mlp.sweep.claim`: a gone worker's trial first, else a new one) carries
its trial down to the session in one call; the run's directory reaches the trial's reporter on
the loop's first epoch, which records its name in the study before anything is trained.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.errors import (FmnistMlpError, TrainingDivergedError, TrainingInterrupted,
                               TrainingPruned)
from fmnist_mlp.rundir import guard, layout
from fmnist_mlp.sweep import ownership, weather
from fmnist_mlp.sweep.claim import WAIT, Claim, claim_next, stderr_log
from fmnist_mlp.sweep.study import Sweep, import_optuna


class TrialTakenOver(TrainingInterrupted):
    """Another worker took this trial over (this one had stopped beating): stop, train nothing
    more of it, tell the study nothing."""


def run_worker(sweep: Sweep, data_dir: str | Path | None = None,
               log: Callable[[str], None] = stderr_log) -> int:
    """Train trials until the budget is spent; returns how many this worker trained.

    Raises :class:`~fmnist_mlp.sweep.weather.StorageAway` when the database stays away past
    the retry window (the trial saved and released as far as the database lets it)."""
    owner = ownership.new_owner_token()
    done, waiting_said = 0, False
    elsewhere: set[int] = set()     # trials whose run is in another copy of DIR
    while (claim := _claim_or_release(sweep, owner, elsewhere, log)) is not None:
        if claim is WAIT:
            if not waiting_said:
                log("budget spent; waiting for the trials other workers train (one whose "
                    "worker dies is taken over here)")
                waiting_said = True
            # One look per beat: a dead worker's trial waits out the grace anyway (4 beats).
            time.sleep(sweep.heartbeat[0])
            continue
        try:
            if sweep.coordinated_by_database:
                interval, _ = sweep.heartbeat
                with ownership.Heartbeat(sweep.rdb, claim.trial_id, owner, interval) as beat:
                    try:
                        train_trial(sweep, claim, data_dir, log, beat)
                    except TrialTakenOver:
                        raise
                    except BaseException:   # a signal (even before the first epoch), the
                        ownership.release(sweep.rdb, claim.trial_id, owner)   # database away
                        raise
            else:
                train_trial(sweep, claim, data_dir, log)
        except TrialTakenOver as exc:
            log(f"trial {claim.number}: {exc}; on to the next trial")
            continue
        except RunElsewhere as exc:
            log(f"trial {claim.number}: {exc}")
            elsewhere.add(claim.number)
            continue
        finally:
            if claim.lock is not None:
                claim.lock.release()
        done += 1
    return done


def _claim_or_release(sweep: Sweep, owner: str, elsewhere: set[int], log) -> Claim | object | None:
    """The next claim, retried while the database is away. A signal between taking a trial and
    training it releases the trial (its beat is fresh: it would look owned until the grace)."""
    try:
        return sweep.call(lambda: claim_next(sweep, owner, elsewhere, log), "claiming a trial",
                          log)
    except BaseException:
        if sweep.coordinated_by_database:
            for trial_id in ownership.owned_by(sweep.rdb, sweep.study, owner):
                ownership.release(sweep.rdb, trial_id, owner)
        raise


class RunElsewhere(FmnistMlpError):
    """The trial's run directory is not in this copy of DIR: it is resumed where it is."""


class _ReportToTrial:
    """Training-loop callback: each epoch's validation accuracy goes to the study; when the
    pruner says so, the run stops as pruned.

    Why it stopped a run is kept in ``stopped`` (the session marks the run and raises its own
    ``TrainingInterrupted``): another worker took the trial over, or the database stayed away."""

    def __init__(self, sweep: Sweep, trial, number: int, log,
                 beat: "ownership.Heartbeat | None" = None):
        self.sweep, self.trial, self.number, self.log, self.beat = sweep, trial, number, log, beat
        self.stopped: TrainingInterrupted | None = None
        # None until the first epoch starts; then the run directory until the study has its
        # name, and False once it has
        self.unrecorded: Path | bool | None = None

    def _stop_if_taken_over(self) -> None:
        if self.beat is not None and not self.beat.check():
            self._taken_over()

    def _taken_over(self) -> None:
        self.stopped = TrialTakenOver("taken over by another worker (this one stopped beating "
                                      "for longer than the grace period); left to it")
        raise self.stopped

    def on_epoch_start(self, event) -> None:
        first = self.unrecorded is None     # the first epoch this worker trains of the trial
        if first:
            self.unrecorded = Path(event.run_dir)
        # Database: one read per epoch, so a worker that was stopped past the grace period
        # (and lost its trial) trains no epoch of it after it wakes (nor names its run).
        self._stop_if_taken_over()
        if first:
            self._record_run_dir()

    def _record_run_dir(self) -> None:
        """The study learns the trial's run before it trains, by its name only: the sweep
        directory may be moved or mounted elsewhere, and the run is always DIR/runs/<name>.
        A database away past the retries stops the run (saved, interrupted); the study cannot
        name it, so ``unrecorded`` keeps it for the worker to remove."""
        try:
            self.sweep.call(lambda: self.trial.set_user_attr("run_dir", self.unrecorded.name),
                            f"trial {self.number}: recording its run", self.log)
        except weather.StorageAway as exc:
            self.stopped = exc
            raise
        self.unrecorded = False

    def on_epoch_end(self, event) -> None:
        # A worker frozen mid-epoch wakes here: it reports nothing to a trial another worker
        # took over (and perhaps finished) meanwhile.
        self._stop_if_taken_over()
        metrics = event.metrics
        epoch, value = int(metrics["epoch"]), float(metrics["val_acc"])
        optuna = import_optuna()
        try:
            self.sweep.call(lambda: self.trial.report(value, epoch),
                            f"trial {self.number}: reporting epoch {epoch}", self.log)
            prune = self.sweep.call(self.trial.should_prune,
                                    f"trial {self.number}: asking the pruner", self.log)
        except weather.StorageAway as exc:
            self.stopped = exc          # a TrainingInterrupted: the run is saved, not failed
            raise
        except optuna.exceptions.UpdateFinishedTrialError:  # taken over and finished between
            self._taken_over()                                # the check and the report
        if prune:
            raise TrainingPruned(f"pruned after epoch {metrics['epoch']} "
                                 f"(val acc {metrics['val_acc']:.4f} behind other trials)")


def train_trial(sweep: Sweep, claim: Claim, data_dir, log, beat=None) -> None:
    from fmnist_mlp.training.session import run_training

    n, trial = claim.number, claim.trial
    ended = _already_ended(claim.run_dir)
    if ended is not None:            # its worker died between the run's end and telling the study
        _tell(sweep, n, ended, runs.read_summary(claim.run_dir), log)
        return
    if beat is not None and claim.run_dir is not None and not claim.run_dir.exists():
        raise RunElsewhere(f"its run {claim.run_dir.name} is not in this copy of the sweep folder "
                           f"(last trained by {claim.previous_worker or 'another worker'}); it is "
                           f"resumed only where that folder is, so it is left for a worker there "
                           f"(or share one folder between machines)")
    resume = claim.run_dir if _resumable(claim.run_dir) else None
    if resume is not None and beat is not None and guard.break_lock(resume):
        log(f"trial {n}: broke the run lock of its previous owner (the database declared it "
            f"dead); should it wake, it writes nothing more to {resume.name}")
    if resume is None and claim.run_dir is not None:
        _discard_unstarted_run(claim.run_dir, sweep.runs_dir, log)
    shown = " ".join(f"{k}={v}" for k, v in claim.params.items())
    log(f"trial {n}: " + (f"resuming {resume}" if resume else f"started: {shown}"))
    plan = None if resume else sweep.spec.trial_plan(claim.params)
    reporter = _ReportToTrial(sweep, trial, n, log, beat)

    try:
        result = run_training(plan, name=f"trial-{n:04d}", runs_dir=sweep.runs_dir,
                              data_dir=data_dir, resume=resume, callbacks=[reporter])
    except guard.RunTakenOver as exc:
        raise TrialTakenOver(str(exc)) from None
    except TrainingPruned as exc:
        _tell(sweep, n, "pruned", {"message": str(exc)}, log, beat)
    except TrainingDivergedError as exc:
        _tell(sweep, n, "failed", {"message": str(exc)}, log, beat)
    except TrainingInterrupted:
        if reporter.unrecorded:     # nothing trained in it, and the study never learnt it
            _discard_unstarted_run(reporter.unrecorded, sweep.runs_dir, log)
        if reporter.stopped is not None:        # the session said "interrupted"; this is why
            raise reporter.stopped from None
        if beat is not None and beat.lost.is_set():
            raise TrialTakenOver("taken over by another worker while this one was stopped; "
                                 "left to it") from None
        log(f"trial {n}: interrupted; the same `sweep run` (or another worker) resumes it")
        raise
    else:
        _tell(sweep, n, "finished", result.summary, log, beat)


def _tell(sweep: Sweep, number: int, status: str, summary: dict, log, beat=None) -> None:
    optuna = import_optuna()
    if beat is not None and not beat.check():
        log(f"trial {number}: {status}, but another worker has taken it over; left to it")
        return
    try:
        sweep.call(lambda: _tell_state(sweep.study, number, status, summary, log),
                   f"trial {number}: telling the study it {status}", log)
    except optuna.exceptions.UpdateFinishedTrialError:
        log(f"trial {number}: already ended in the study (another worker told it first)")


def _tell_state(study, number, status, summary, log) -> None:
    TrialState = import_optuna().trial.TrialState
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
    if run_dir is None or not layout.last_checkpoint(run_dir).is_file():
        return False
    summary = runs.read_summary(run_dir)
    if summary.get("status") == "running":
        summary.update(status="interrupted", message="its sweep worker died; resumed by another")
        runs.write_summary(run_dir, summary)
    return True


# A run's bookkeeping before its first checkpoint, its lock file included.
_UNSTARTED_FILES = layout.BOOKKEEPING


def _discard_unstarted_run(run_dir: Path, runs_dir: Path, log) -> None:
    """A trial stopped before its first epoch ended left a run directory with nothing to resume
    from; the trial starts again in a new one, so this one is removed — only after checking it is
    the sweep's own (a real directory in DIR/runs holding nothing but a run's bookkeeping files
    and an empty checkpoints folder), so each trial stays one run."""
    if run_dir.is_symlink() or not run_dir.is_dir() or run_dir.parent.resolve() != runs_dir.resolve():
        return
    ckpt = run_dir / layout.CHECKPOINTS
    names = {p.name for p in run_dir.iterdir()}
    if not names <= _UNSTARTED_FILES | {layout.CHECKPOINTS}:
        return
    if layout.CHECKPOINTS in names and (ckpt.is_symlink() or not ckpt.is_dir()
                                        or any(ckpt.iterdir())):
        return
    for name in names - {layout.CHECKPOINTS}:
        (run_dir / name).unlink()
    if layout.CHECKPOINTS in names:
        ckpt.rmdir()
    run_dir.rmdir()
    log(f"removed {run_dir}: its trial stopped before its first epoch and starts over")
