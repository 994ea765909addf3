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

from fmnist_mlp.sweep.study import Sweep

BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GRACE_SECONDS = 5.0
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
