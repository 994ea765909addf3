"""Starting workers: the command line of one worker, N of them on this machine, and the exit
status of a sweep read back from its study."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from fmnist_mlp.errors import FmnistMlpError, TrainingInterrupted
from fmnist_mlp.io.terminal import emit, show
from fmnist_mlp.sweep.slurm import BLAS_VARS
from fmnist_mlp.sweep.study import Sweep

GRACE_SECONDS = 5.0
CHILD_VAR = "FMNIST_MLP_SWEEP_CHILD"     # set for workers started by run_local: no summary line


def is_child_worker() -> bool:
    return os.environ.get(CHILD_VAR) == "1"


def work_count(sweep: Sweep) -> int:
    """How many workers would find something to do: budget left plus trials not ended (more
    than that would start, find nothing and end, each loading NumPy and the study for nothing)."""
    from fmnist_mlp.sweep.status import trial_rows

    rows = trial_rows(sweep)
    # With a database, a trial shown running may be a dead worker's not yet gone silent long
    # enough: a worker here waits for it and takes it over.
    open_states = ("interrupted", "running") if sweep.coordinated_by_database else ("interrupted",)
    return max(0, sweep.budget - len(rows)) + sum(r["state"] in open_states for r in rows)


def work_left(sweep: Sweep) -> bool:
    return work_count(sweep) > 0


def worker_args(spec_file: str | Path, directory: str | Path, storage: str | None,
                data_dir: str | Path | None, trials: int | None = None) -> list[str]:
    """Arguments after the program name for one worker (``sweep run ... --jobs 1``)."""
    args = ["sweep", "run", str(Path(spec_file).resolve()), "--dir", str(Path(directory).resolve()),
            "--jobs", "1"]
    if storage:
        args += ["--storage", storage]
    if trials is not None:
        args += ["--trials", str(trials)]
    if data_dir:
        args += ["--data-dir", str(Path(data_dir).resolve())]
    return args


def rerun_command(spec_file: str | Path, directory: str | Path) -> str:
    """The command that continues this sweep (its storage and budget are in DIR/sweep.json)."""
    return "fmnist-mlp sweep run " + " ".join(shlex.quote(str(a)) for a in
                                              (spec_file, "--dir", directory))


class SweepInterrupted(FmnistMlpError):
    exit_code = 130


class DatabaseAway(FmnistMlpError):
    """The study's database stayed away past the retry window: exit 75 (EX_TEMPFAIL), which
    slurm.conf's RequeueExit=75 requeues; nothing was marked failed."""

    exit_code = 75


def run_sweep(spec_file: Path, sweep_dir: Path, *, jobs: int = 1, storage: str | None = None,
              slurm: bool = False, workers: int = 4, sbatch_args: tuple = (), wait: bool = False,
              dry_run: bool = False, data_dir: Path | None = None, trials: int | None = None,
              echo: Callable[[str], None] = emit,
              note: Callable[[str], None] = show) -> int:
    """``sweep run``: check everything, create or open DIR, run the workers (here, or a Slurm
    array), and return the exit code: 0 when the budget is spent and every trial ended, whatever
    the workers went through on the way."""
    from fmnist_mlp.sweep import slurm as slurm_jobs
    from fmnist_mlp.sweep.spec import load_spec
    from fmnist_mlp.sweep.storage import PASSWORD_VAR, database_errors, parse_storage
    from fmnist_mlp.sweep.study import import_optuna, open_sweep
    from fmnist_mlp.sweep.weather import StorageAway, first_line

    spec = load_spec(spec_file)
    import_optuna()
    ref = parse_storage(storage)
    # The workers' command lines (and DIR/slurm/worker.sbatch) carry the URL without its
    # password; they find it in their environment, inherited from this process.
    args = worker_args(spec_file, sweep_dir, ref.url if storage else None, data_dir, trials)
    if ref.password:
        os.environ[PASSWORD_VAR] = ref.password
    if dry_run:         # more workers than trials would find nothing to do
        for line in dry_run_lines(args, min(workers if slurm else jobs, trials or spec.trials)):
            echo(line)
        return 0
    if slurm:
        slurm_jobs.require_sbatch()                     # before anything is created
    rerun = rerun_command(spec_file, Path(sweep_dir).absolute())
    try:
        # (inside: a worker started while the database is away requeues itself as well)
        sweep = open_sweep(sweep_dir, spec, storage, trials=trials, note=note)
        with slurm_jobs.signals_as_interrupt():   # (run_local passes SIGTERM on itself)
            code = _run_workers(sweep, args, jobs, slurm, workers, sbatch_args, wait, data_dir,
                                echo)
    except (StorageAway, *database_errors()) as exc:     # the database away past the retries
        what = str(exc) if isinstance(exc, StorageAway) else first_line(exc)
        requeued = slurm_jobs.requeue_self(f"the database is away ({what})")
        raise DatabaseAway(f"{what}; nothing was marked failed (a worker saves its trial and "
                           f"releases it)" + ("; this Slurm task is requeued" if requeued else "")
                           + f"; continue with: {rerun}") from None
    except (TrainingInterrupted, KeyboardInterrupt):
        if slurm_jobs.requeue_if_time_is_up():
            return 0
        if is_child_worker():
            return 130
        raise SweepInterrupted(f"interrupted; every trial is saved; continue with: {rerun}") from None
    return 0 if code is None else _exit_code(sweep, code, rerun, note, strict=slurm)


def _run_workers(sweep, args: list[str], jobs: int, slurm: bool, workers: int, sbatch_args: tuple,
                 wait: bool, data_dir: Path | None, echo: Callable[[str], None]) -> int | None:
    """The workers: a Slurm array (None once submitted, without --wait), ``jobs`` processes
    here, or this process. Returns the local workers' exit code."""
    from fmnist_mlp.sweep import slurm as slurm_jobs
    from fmnist_mlp.sweep.worker import run_worker

    if slurm:
        job_id = slurm_jobs.submit(sweep.dir, args, workers, list(sbatch_args))
        echo(job_id)
        if not wait:
            return None
        slurm_jobs.wait(job_id, done=lambda: sweep_done(sweep))
        return 0
    if jobs > 1:
        left = work_count(sweep)
        return run_local(args, min(jobs, left)) if left else 0
    run_worker(sweep, data_dir)
    return 0


def sweep_done(sweep: Sweep) -> bool:
    """Budget spent and every trial ended: nothing is left for any worker (those Slurm still
    lists, on a node that died say, would find nothing to do)."""
    return final_status(sweep, strict=True)[0] == 0


def _exit_code(sweep, code: int, rerun: str, note: Callable[[str], None],
               strict: bool = False) -> int:
    """0 when the budget is spent and every trial ended, whatever the workers went through;
    else the workers' code or the study's, with the command that continues the sweep.
    ``strict`` (after ``--slurm --wait``): a trial still running or budget left is unfinished
    too (130), since every worker of the array has ended."""
    final, line = final_status(sweep, strict)
    if final == 0 and code not in (0, 130):
        line += "; every trial ended (a worker exited abnormally: its trials were taken over)"
    elif final or code:
        line += f"; continue with: {rerun}"
    if not is_child_worker():
        note(line)
    return 0 if final == 0 and code != 130 else (code or final)


def threads_per_worker(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def dry_run_lines(args: list[str], workers: int) -> list[str]:
    """One shell line per worker, every word quoted: safe to run as printed (GNU parallel)."""
    threads = threads_per_worker(workers)
    env = " ".join(f"{v}={threads}" for v in BLAS_VARS)
    line = f"env {env} fmnist-mlp " + " ".join(shlex.quote(a) for a in args)
    return [line] * workers


def run_local(args: list[str], jobs: int) -> int:
    """Start ``jobs`` worker processes with the BLAS threads split between them; wait for all.

    The variables are set in each worker's environment before it starts, so they are in place
    before NumPy loads. SIGTERM is passed on at once; after Ctrl-C (which reaches the workers
    too, as one process group) they get time to save first. Each worker saves its trial."""
    env = dict(os.environ, **{v: str(threads_per_worker(jobs)) for v in BLAS_VARS})
    env[CHILD_VAR] = "1"
    procs = [subprocess.Popen([sys.executable, "-m", "fmnist_mlp", *args], env=env)
             for _ in range(jobs)]

    def terminate(signum=None, frame=None):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        codes, interrupted = _wait_all(procs, terminate)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted or 130 in codes or -signal.SIGTERM in codes or -signal.SIGINT in codes:
        return 130
    return next((c if c > 0 else 1 for c in codes if c != 0), 0)


def _wait_all(procs: list[subprocess.Popen], terminate) -> tuple[list[int], bool]:
    """Exit codes of all workers; Ctrl-C does not stop the waiting, and workers still running
    ``GRACE_SECONDS`` after it get SIGTERM."""
    interrupted_at: float | None = None
    terminated = False
    while True:
        try:
            if all(p.poll() is not None for p in procs):
                return [p.returncode for p in procs], interrupted_at is not None
            if interrupted_at is not None and not terminated \
                    and time.monotonic() > interrupted_at + GRACE_SECONDS:
                terminate()
                terminated = True
            time.sleep(0.1)
        except KeyboardInterrupt:
            interrupted_at = interrupted_at or time.monotonic()


def final_status(sweep: Sweep, strict: bool = False) -> tuple[int, str]:
    """Exit code and one line for a sweep after its workers ended: 0 when the budget is spent
    and no trial is left interrupted, 130 when some are (run again to continue). A trial counts
    as running only while a live, unreleased owner beats for it. Trials other live workers are
    training do not count against this one, unless ``strict`` (every worker has ended)."""
    from fmnist_mlp.sweep.status import trial_rows

    rows = trial_rows(sweep)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    left = sweep.budget - len(rows)
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"
    line = f"sweep {sweep.dir}: {text}; budget left {left} of {sweep.budget}"
    unfinished = counts.get("interrupted") or (strict and (counts.get("running") or left > 0))
    return (130 if unfinished else 0), line
