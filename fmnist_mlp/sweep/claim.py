"""Who trains which trial: a worker's next claim, made in one go under the sweep's claim lock.

First any RUNNING trial whose worker is gone, resumed from its last checkpoint as the same trial;
else a new trial while the budget lasts, drawn by a sampler seeded from the spec's seed and the
trial count. Whose worker is gone is told by the trial lock in DIR/locks (journal file, one
machine: :func:`fmnist_mlp.sweep.flocks.journal_pick` picks the trial and holds its lock) or by
the trial's heartbeat in the database (:mod:`fmnist_mlp.sweep.ownership`), which is then the only
coordinator. A claim carries what the worker needs to train the trial: its number, its live
Optuna trial, its parameters and, when taken over, its run directory.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.io.lock import FileLock
from fmnist_mlp.io.terminal import show
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.sweep import optuna_private as private
from fmnist_mlp.sweep import ownership, weather
from fmnist_mlp.sweep.flocks import journal_pick, try_lock_trial
from fmnist_mlp.sweep.spec import SweepSpec
from fmnist_mlp.sweep.study import Sweep, import_optuna


def timestamped(message: str) -> str:
    """A log line as the Slurm logs of many nodes need it: time, host and process first."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {node_name()}[{os.getpid()}] {message}"


def stderr_log(message: str) -> None:
    show(timestamped(message))


@dataclass
class Claim:
    number: int
    params: dict[str, Any]
    run_dir: Path | None        # set when the trial is being resumed and had started a run
    lock: FileLock | None       # journal: the trial's lock, held; database: None
    owner: str | None = None    # database: this worker's token, recorded as the trial's owner
    previous_worker: str = ""   # taken over: the worker that had it
    trial: Any = None           # the live optuna Trial it reports to: made once, when claimed

    @property
    def trial_id(self) -> int:
        """The trial's id in the storage (what the database's ownership records name)."""
        return private.trial_id(self.trial)


WAIT = object()      # claim_next: nothing free now, but a running trial may yet be


def claim_next(sweep: Sweep, owner: str, elsewhere: set[int] = frozenset(),
               log: Callable[[str], None] = stderr_log) -> Claim | object | None:
    """The worker's next trial (a :class:`Claim`), ``WAIT`` (database: nothing free now, but a
    running trial may yet be), or None (nothing left)."""
    if sweep.coordinated_by_database:
        return _claim_in_database(sweep, owner, elsewhere, log)
    with journal_pick(sweep.dir, sweep.study, sweep.budget) as pick:
        if pick is None:
            return None
        frozen, lock, number = pick
        if frozen is not None:
            return _resume_claim(sweep, frozen, lock, None)
        return _new_claim(sweep, number, None, lock)


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


def _new_claim(sweep: Sweep, count: int, owner: str | None, lock: FileLock | None = None) -> Claim:
    """A new trial, asked with the sampler for the trial count. Journal: ``lock`` is the lock of
    trial number ``count``, the number the study gives next (workers ask under the claim lock)."""
    trial = _ask(sweep, count)
    if owner is None and trial.number != count:     # (not with workers of this tool alone)
        lock.release()
        lock = try_lock_trial(sweep.dir, trial.number)
        assert lock is not None, "a new trial's lock is free"      # we hold the claim lock
    elif owner is not None:
        ownership.take(sweep.rdb, private.trial_id(trial), owner)
    trial.set_user_attr("worker", _worker_id())
    return Claim(trial.number, suggest(trial, sweep.spec), None, lock, owner, trial=trial)


def _ask(sweep: Sweep, count: int):
    """A new trial, asked with the sampler for the trial count, through Optuna's public API: the
    study loaded on the sweep's storage with that sampler (and the sweep's pruner, which the
    trial's ``should_prune`` asks)."""
    optuna = import_optuna()
    study = optuna.load_study(study_name=sweep.study.study_name, storage=sweep.storage,
                              sampler=make_sampler(sweep.spec, count), pruner=sweep.study.pruner)
    return study.ask()


def _resume_claim(sweep: Sweep, frozen, lock: FileLock | None, owner: str | None) -> Claim:
    """A gone worker's trial, taken over: its parameters as stored (any it had not drawn yet,
    drawn now), its run directory found under DIR/runs."""
    trial = private.trial_handle(sweep.study, private.trial_id(frozen))
    trial.set_user_attr("worker", _worker_id())
    return Claim(frozen.number, suggest(trial, sweep.spec),
                 sweep.run_dir_of(frozen.user_attrs.get("run_dir")), lock, owner,
                 previous_worker=str(frozen.user_attrs.get("worker") or ""), trial=trial)


def node_name() -> str:
    """The Slurm node this runs on (several nodes may share one host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _worker_id() -> str:
    slurm = os.environ.get("SLURM_ARRAY_JOB_ID")
    where = f"{node_name()}:{os.getpid()}"
    if slurm:
        where += f" slurm {slurm}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return where


def make_sampler(spec: SweepSpec, salt: int):
    """A sampler seeded by the spec's seed and the trial count: reproducible, and workers that
    start together do not all draw the same first parameters."""
    optuna = import_optuna()
    seed = (spec.seed * 1_000_003 + salt) % 2**32       # what the samplers' generators take
    if spec.method == "grid":
        grid = {p.key: p.encoded_choices() for p in spec.space}
        return _grid_sampler_class()(grid, seed=spec.seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _grid_sampler_class():
    optuna = import_optuna()

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is covered (only
        valid inside ``study.optimize``): the budget, the size of the grid, ends the sweep."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return GridSampler


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's parameters as config values (choices decoded back to lists)."""
    params = {}
    for p in spec.space:
        if p.kind == "choice":
            value = trial.suggest_categorical(p.key, p.encoded_choices())
        elif p.kind == "int_uniform":
            value = trial.suggest_int(p.key, p.values[0], p.values[1], log=p.log)
        else:
            value = trial.suggest_float(p.key, p.values[0], p.values[1], log=p.log)
        params[p.key] = p.decode(value)
    return params
