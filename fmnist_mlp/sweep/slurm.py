"""A sweep on Slurm: one requeue-able job array whose tasks are ordinary sweep workers."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.io.files import atomic_write_text, dir_inside


# The BLAS libraries' thread-count variables, set for every worker (launch.py uses them too).
BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TASK_VAR = "FMNIST_MLP_SWEEP_SLURM_TASK"     # set by the batch script: this is an array task


class SlurmError(FmnistMlpError):
    """sbatch/squeue failed."""


# Seconds before its --time limit that Slurm warns a task (SIGUSR1 to the batch shell, which is
# the worker itself): time to finish saving the current epoch and requeue.
TIME_LIMIT_WARNING = 120
_time_is_up = False


def batch_script(args: list[str], workers: int, log_dir: Path) -> str:
    """The array job: each task execs one worker, so Slurm's SIGTERM (pre-emption, requeue,
    scancel) reaches the worker itself, which saves its trial; ``--requeue`` lets Slurm restart a
    pre-empted task, which then resumes that trial. ``--signal=B:USR1@120``: before a ``--time``
    limit the worker saves and requeues its own task, rather than ending TIMEOUT with its trial
    waiting for a manual rerun (scancel's SIGTERM still ends a task for good)."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "fmnist_mlp", *args])
    return "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=fmnist-sweep",
        f"#SBATCH --array=0-{workers - 1}",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{TIME_LIMIT_WARNING}",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={log_dir}/%A_%a.out",
        'threads=${SLURM_CPUS_PER_TASK:-1}',
        "export " + " ".join(f"{v}=$threads" for v in BLAS_VARS) + f" {TASK_VAR}=1",
        f"exec {command}", ""])


def require_sbatch() -> str:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigError("--slurm: sbatch not found on PATH (run on a Slurm login node, or "
                          "use --jobs N on this machine)")
    return sbatch


def submit(directory: Path, args: list[str], workers: int, sbatch_args: list[str]) -> str:
    """Write DIR/slurm/worker.sbatch and submit it; returns the job id."""
    sbatch = require_sbatch()
    log_dir = dir_inside(directory, "slurm")          # a link planted there is refused
    script = log_dir / "worker.sbatch"
    atomic_write_text(script, batch_script(args, workers, log_dir), base=directory)
    proc = subprocess.run([sbatch, "--parsable", *sbatch_args, str(script)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SlurmError(f"sbatch failed: {reason}")
    return proc.stdout.strip().split(";")[0]


def wait(job_id: str, poll: float = 5.0, done=lambda: False) -> None:
    """Block until no task of the array is pending or running, or ``done()`` says the study
    needs none of them (a node that died keeps its tasks listed until Slurm's SlurmdTimeout;
    its trial was taken over and ended). Ctrl-C stops the waiting only: the array keeps running
    on the cluster."""
    try:
        _wait(job_id, poll, done)
    except KeyboardInterrupt:
        raise SlurmWaitInterrupted(f"stopped waiting; job array {job_id} keeps running "
                                   f"(scancel {job_id} stops it)") from None


class SlurmWaitInterrupted(FmnistMlpError):
    exit_code = 130


def _wait(job_id: str, poll: float, done) -> None:
    squeue = shutil.which("squeue")
    if squeue is None:
        raise ConfigError("--wait: squeue not found on PATH")
    while True:
        proc = subprocess.run([squeue, "-h", "-r", "-j", job_id, "-o", "%T"],
                              capture_output=True, text=True)
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            raise SlurmError(f"squeue failed: {proc.stderr.strip()}")
        if not proc.stdout.strip() or done():
            return
        time.sleep(poll)


class signals_as_interrupt:
    """SIGTERM (pre-emption, ``kill``, scancel) is handled like Ctrl-C: save, mark, exit 130.
    SIGUSR1 (Slurm's warning before a --time limit) too, remembered so that the task requeues
    itself once its trial is saved."""

    def __enter__(self):
        import signal
        import threading

        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _interrupt)
            if os.environ.get("SLURM_JOB_ID"):
                self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, _time_limit)
        return self

    def __exit__(self, *exc_info):
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _time_limit(signum, frame):
    global _time_is_up
    _time_is_up = True
    raise KeyboardInterrupt


def requeue_self(reason: str) -> bool:
    """In a Slurm task: requeue it (``scontrol requeue``), so it starts again later and resumes
    its trial; True when requeued. Outside Slurm, nothing (the exit code says try again)."""
    if os.environ.get(TASK_VAR) != "1" or not os.environ.get("SLURM_JOB_ID"):
        return False
    return _requeue(reason)


def _requeue(reason: str) -> bool:
    from fmnist_mlp.sweep.worker import stderr_log

    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    stderr_log(f"{reason}: trial saved; requeueing task {job}")
    proc = subprocess.run([shutil.which("scontrol") or "scontrol", "requeue", job],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        stderr_log(f"scontrol requeue {job} failed: {proc.stderr.strip()[-200:]}; run the sweep "
                   f"again to continue it")
        return False
    return True


def requeue_if_time_is_up() -> bool:
    """After SIGUSR1 (the trial is saved by now): requeue this array task, so it resumes the
    trial when it starts again. True when requeued."""
    if not _time_is_up:
        return False
    return _requeue("time limit near")
