"""A sweep on Slurm: one requeue-able job array whose tasks are ordinary sweep workers."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.rundir.files import atomic_write_text
from fmnist_mlp.sweep.launch import BLAS_VARS


class SlurmError(FmnistMlpError):
    """sbatch/squeue failed."""


def batch_script(args: list[str], workers: int, log_dir: Path) -> str:
    """The array job: each task execs one worker, so Slurm's SIGTERM (pre-emption, requeue,
    scancel) reaches the worker itself, which saves its trial; ``--requeue`` lets Slurm restart a
    pre-empted task, which then resumes that trial."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "fmnist_mlp", *args])
    return "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=fmnist-sweep",
        f"#SBATCH --array=0-{workers - 1}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={log_dir}/%A_%a.out",
        'threads=${SLURM_CPUS_PER_TASK:-1}',
        "export " + " ".join(f"{v}=$threads" for v in BLAS_VARS),
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
    log_dir = (directory / "slurm").resolve()
    log_dir.mkdir(exist_ok=True)
    script = log_dir / "worker.sbatch"
    atomic_write_text(script, batch_script(args, workers, log_dir))
    proc = subprocess.run([sbatch, "--parsable", *sbatch_args, str(script)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SlurmError(f"sbatch failed: {reason}")
    return proc.stdout.strip().split(";")[0]


def wait(job_id: str, poll: float = 5.0) -> None:
    """Block until no task of the array is pending or running. Ctrl-C stops the waiting only:
    the array keeps running on the cluster."""
    try:
        _wait(job_id, poll)
    except KeyboardInterrupt:
        raise SlurmWaitInterrupted(f"stopped waiting; job array {job_id} keeps running "
                                   f"(scancel {job_id} stops it)") from None


class SlurmWaitInterrupted(FmnistMlpError):
    exit_code = 130


def _wait(job_id: str, poll: float) -> None:
    squeue = shutil.which("squeue")
    if squeue is None:
        raise ConfigError("--wait: squeue not found on PATH")
    while True:
        proc = subprocess.run([squeue, "-h", "-r", "-j", job_id, "-o", "%T"],
                              capture_output=True, text=True)
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            raise SlurmError(f"squeue failed: {proc.stderr.strip()}")
        if not proc.stdout.strip():
            return
        time.sleep(poll)
