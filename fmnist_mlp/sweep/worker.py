"""A sweep worker: claims trials from the study one at a time and trains each as a run directory.

A trial is claimed under the sweep's claim lock: first any RUNNING trial whose worker is gone,
which is resumed from its last checkpoint as the same trial; else a new trial while the budget
lasts. Whose worker is gone is told by the trial lock in DIR/locks (journal file, one machine)
or by the trial's heartbeat in the database (ownership.py), which is then the only coordinator.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.errors import (FmnistMlpError, TrainingDivergedError, TrainingInterrupted,
                               TrainingPruned)
from fmnist_mlp.io.lock import FileLock
from fmnist_mlp.io.terminal import show
from fmnist_mlp.rundir import guard, layout
from fmnist_mlp.sweep import optuna_private as private
from fmnist_mlp.sweep import ownership, weather
from fmnist_mlp.sweep.flocks import claim_lock, try_lock_trial
from fmnist_mlp.sweep.study import Sweep, import_optuna, make_pruner, make_sampler, suggest


@dataclass
class Claim:
    number: int
    trial_id: int
    params: dict[str, Any]
    run_dir: Path | None        # set when the trial is being resumed and had started a run
    lock: FileLock | None       # journal: the trial's lock, held; database: None
    owner: str | None = None    # database: this worker's token, recorded as the trial's owner
    previous_worker: str = ""   # taken over: the worker that had it
    trial: Any = None           # the live optuna Trial it reports to: made once, when claimed


WAIT = object()      # claim_next: nothing free now, but a running trial may yet be


class TrialTakenOver(TrainingInterrupted):
    """Another worker took this trial over (this one had stopped beating): stop, train nothing
    more of it, tell the study nothing."""


def timestamped(message: str) -> str:
    """A log line as the Slurm logs of many nodes need it: time, host and process first."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {node_name()}[{os.getpid()}] {message}"


def node_name() -> str:
    """The Slurm node this runs on (several nodes may share one host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def stderr_log(message: str) -> None:
    show(timestamped(message))


def run_worker(sweep: Sweep, data_dir: str | Path | None = None,
               log: Callable[[str], None] = stderr_log) -> int:
    """Train trials until the budget is spent; returns how many this worker trained.

    Raises :class:`~fmnist_mlp.sweep.weather.StorageAway` when the database stays away past
    the retry window (the trial saved and released as far as the database lets it)."""
    sweep.study.pruner = make_pruner(sweep.spec)
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


def claim_next(sweep: Sweep, owner: str, elsewhere: set[int] = frozenset(),
               log: Callable[[str], None] = stderr_log) -> Claim | object | None:
    if sweep.coordinated_by_database:
        return _claim_in_database(sweep, owner, elsewhere, log)
    optuna = import_optuna()
    study = sweep.study
    with claim_lock(sweep.dir):
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state == optuna.trial.TrialState.RUNNING:
                lock = try_lock_trial(sweep.dir, t.number)
                if lock is not None:        # its worker is gone: take it over
                    return _resume_claim(sweep, t, lock, None)
        if len(trials) >= sweep.budget:
            return None
        return _new_claim(sweep, len(trials), None)


def _claim_in_database(sweep: Sweep, owner: str, elsewhere: set[int],
                       log: Callable[[str], None]) -> Claim | object | None:
    """Under the database's claim lock: a trial released in good order, or whose worker stopped
    beating (or died between asking it and its first beat), else a new one while the budget
    lasts. A dead worker's trial is judged so only by a worker that has heard the database for
    a whole grace period (after an outage the owners beat again first); one taken over more
    than the cap allows is told FAIL instead."""
    optuna = import_optuna()
    study, rdb = sweep.study, sweep.rdb
    _, grace = sweep.heartbeat
    with ownership.claim_lock(rdb, study.study_name):
        sweep.refresh_budget()
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        owners = ownership.Liveness(rdb, private.study_id(study)) if running else None
        may_judge = weather.quiet_for() >= grace
        for t in running:
            if t.number in elsewhere or not (owners.released(t) or
                                             (may_judge and owners.dead(t))):
                continue
            if owners.released(t) or not _died_mid_run(sweep, t):
                ownership.take(rdb, private.trial_id(t), owner)
                return _resume_claim(sweep, t, None, owner)
            count = ownership.takeovers_of(t) + 1
            if count > ownership.max_takeovers():
                _fail_for_takeovers(sweep, t, log)
                continue
            ownership.take(rdb, private.trial_id(t), owner, takeovers=count)
            return _resume_claim(sweep, t, None, owner)
        if len(trials) < sweep.budget:
            return _new_claim(sweep, len(trials), owner)
        # Budget spent, but trials still run elsewhere: one of them may belong to a worker that
        # just died, which only its silence will tell. Wait, then look again.
        return WAIT if any(t.number not in elsewhere for t in running) else None


def _died_mid_run(sweep: Sweep, frozen) -> bool:
    """Whether the trial's last worker died without a word (its run still marked running, or no
    run to look at): what the take-over cap counts. A worker that stopped in good order (the
    database away, a signal) marked its run interrupted first."""
    run_dir = sweep.run_dir_of(frozen.user_attrs.get("run_dir"))
    if run_dir is None or not runs.is_run_dir(run_dir):
        return True
    try:
        return runs.read_summary(run_dir).get("status") == "running"
    except FmnistMlpError:
        return True


def _fail_for_takeovers(sweep: Sweep, frozen, log: Callable[[str], None]) -> None:
    """The retry cap: every worker that took this trial died; it is told FAIL with the reason."""
    optuna = import_optuna()
    reason = (f"taken over {ownership.max_takeovers()} times, every worker that trained it died "
              f"(out of memory?); failed (cap: {ownership.MAX_TAKEOVERS_VAR})")
    handle = private.trial_handle(sweep.study, private.trial_id(frozen))
    handle.set_user_attr("fail_reason", reason)
    try:
        sweep.study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    log(f"trial {frozen.number}: {reason}")


def _new_claim(sweep: Sweep, count: int, owner: str | None) -> Claim:
    study = sweep.study
    private.use_sampler(study, make_sampler(sweep.spec, count))
    trial = study.ask()
    lock = None
    if owner is None:
        lock = try_lock_trial(sweep.dir, trial.number)
        assert lock is not None, "a new trial's lock is free"      # we hold the claim lock
    else:
        ownership.take(sweep.rdb, private.trial_id(trial), owner)
    trial.set_user_attr("worker", _worker_id())
    return Claim(trial.number, private.trial_id(trial), suggest(trial, sweep.spec), None, lock,
                 owner, trial=trial)


def _resume_claim(sweep: Sweep, frozen, lock: FileLock | None, owner: str | None) -> Claim:
    """A gone worker's trial, taken over: its parameters as stored (any it had not drawn yet,
    drawn now), its run directory found under DIR/runs."""
    trial = private.trial_handle(sweep.study, private.trial_id(frozen))
    trial.set_user_attr("worker", _worker_id())
    return Claim(frozen.number, private.trial_id(frozen), suggest(trial, sweep.spec),
                 sweep.run_dir_of(frozen.user_attrs.get("run_dir")), lock, owner,
                 previous_worker=str(frozen.user_attrs.get("worker") or ""), trial=trial)


class _ReportToTrial:
    """Training-loop callback: each epoch's validation accuracy goes to the study; when the
    pruner says so, the run stops as pruned.

    Why it stopped a run is kept in ``stopped`` (the session marks the run and raises its own
    ``TrainingInterrupted``): another worker took the trial over, or the database stayed away."""

    def __init__(self, sweep: Sweep, trial, number: int, log,
                 beat: "ownership.Heartbeat | None" = None):
        self.sweep, self.trial, self.number, self.log, self.beat = sweep, trial, number, log, beat
        self.stopped: TrainingInterrupted | None = None

    def _stop_if_taken_over(self) -> None:
        if self.beat is not None and not self.beat.check():
            self._taken_over()

    def _taken_over(self) -> None:
        self.stopped = TrialTakenOver("taken over by another worker (this one stopped beating "
                                      "for longer than the grace period); left to it")
        raise self.stopped

    def on_epoch_start(self, event) -> None:
        # Database: one read per epoch, so a worker that was stopped past the grace period
        # (and lost its trial) trains no epoch of it after it wakes.
        self._stop_if_taken_over()

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
    cfg = None if resume else sweep.spec.trial_config(claim.params)
    reporter = _ReportToTrial(sweep, trial, n, log, beat)

    unrecorded: list[Path] = []

    def record_run_dir(d) -> None:
        # its name only: the sweep directory may be moved or mounted elsewhere, and the run
        # is always DIR/runs/<name>
        try:
            sweep.call(lambda: trial.set_user_attr("run_dir", Path(d).name),
                       f"trial {n}: recording its run", log)
        except weather.StorageAway:
            unrecorded.append(Path(d))      # the study cannot name it: removed below
            raise

    try:
        result = run_training(cfg, name=f"trial-{n:04d}", runs_dir=sweep.runs_dir,
                              data_dir=data_dir, resume=resume, callbacks=[reporter],
                              on_run_dir=record_run_dir)
    except guard.RunTakenOver as exc:
        raise TrialTakenOver(str(exc)) from None
    except TrainingPruned as exc:
        _tell(sweep, n, "pruned", {"message": str(exc)}, log, beat)
    except TrainingDivergedError as exc:
        _tell(sweep, n, "failed", {"message": str(exc)}, log, beat)
    except TrainingInterrupted:
        for run_dir in unrecorded:      # nothing trained in it, and the study never learnt it
            _discard_unstarted_run(run_dir, sweep.runs_dir, log)
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


def _worker_id() -> str:
    slurm = os.environ.get("SLURM_ARRAY_JOB_ID")
    where = f"{node_name()}:{os.getpid()}"
    if slurm:
        where += f" slurm {slurm}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return where
