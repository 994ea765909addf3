"""Starting workers: the command line of one worker, N of them on this machine, and the exit
status of a sweep read back from its study."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from fmnist_mlp.sweep.study import Sweep

BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
CHILD_VAR = "FMNIST_MLP_SWEEP_CHILD"     # set for workers started by run_local: no summary line


def is_child_worker() -> bool:
    return os.environ.get(CHILD_VAR) == "1"


def work_left(sweep: Sweep) -> bool:
    """Whether a worker would find anything to do: budget left, or a trial not ended."""
    from fmnist_mlp.sweep.status import trial_rows

    rows = trial_rows(sweep)
    return len(rows) < sweep.budget or any(r["state"] == "interrupted" for r in rows)


def worker_args(spec_file: str | Path, directory: str | Path, storage: str | None,
                data_dir: str | Path | None) -> list[str]:
    """Arguments after the program name for one worker (``sweep run ... --jobs 1``)."""
    args = ["sweep", "run", str(Path(spec_file).resolve()), "--dir", str(Path(directory).resolve()),
            "--jobs", "1"]
    if storage:
        args += ["--storage", storage]
    if data_dir:
        args += ["--data-dir", str(Path(data_dir).resolve())]
    return args


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
    before NumPy loads. SIGTERM (and Ctrl-C) are passed on: each worker saves its trial."""
    env = dict(os.environ, **{v: str(threads_per_worker(jobs)) for v in BLAS_VARS})
    env[CHILD_VAR] = "1"
    procs = [subprocess.Popen([sys.executable, "-m", "fmnist_mlp", *args], env=env)
             for _ in range(jobs)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            _wait_uninterrupted(p)
        return 130
    if 130 in codes or -signal.SIGTERM in codes or -signal.SIGINT in codes:
        return 130
    return next((c if c > 0 else 1 for c in codes if c != 0), 0)


def _wait_uninterrupted(proc: subprocess.Popen) -> None:
    while True:
        try:
            proc.wait()
            return
        except KeyboardInterrupt:
            continue


def final_status(sweep: Sweep) -> tuple[int, str]:
    """Exit code and one line for a sweep after its workers ended: 0 when the budget is spent
    and no trial is left interrupted, 130 when some are (run again to continue). Trials other
    live workers are training do not count against this one."""
    from fmnist_mlp.sweep.status import trial_rows

    rows = trial_rows(sweep)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    left = sweep.budget - len(rows)
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"
    line = f"sweep {sweep.dir}: {text}; budget left {left} of {sweep.budget}"
    return (130 if counts.get("interrupted") else 0), line
