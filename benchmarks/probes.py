"""The benchmark's whole-tool measurements: CLI start-up, data-cache load, training memory, and
the cost of the real ``fmnist-mlp train`` path over the bare engine loop.

Each probe runs the tool in a child process, so the numbers are what a user would see, and a
probe that cannot run (the dataset or the CLI missing) reports ``{"error": ...}`` instead of
stopping the benchmark.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"

# Runs ``argv[1:]`` as a child (its stdout discarded, so the wrapper's line is the only output)
# and prints the child's peak RSS in KiB. RUSAGE_CHILDREN covers only children this wrapper
# waited for, i.e. exactly that one command (and its descendants). The wrapper must be a small
# process: on Linux an exec'd child's ru_maxrss starts at its parent's high-water mark, and the
# benchmark's own process has held the dataset.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
)


def cli_command() -> list[str]:
    """The ``fmnist-mlp`` console script of this interpreter's environment (``make bench`` runs the
    venv's python without the venv on PATH), else the one on PATH, else ``python -m fmnist_mlp``."""
    beside = Path(sys.executable).parent / "fmnist-mlp"
    if beside.is_file():
        return [str(beside)]
    script = shutil.which("fmnist-mlp")
    return [script] if script else [sys.executable, "-m", "fmnist_mlp"]


def time_command(cmd: list[str], repeats: int = 5, env: dict | None = None) -> dict:
    """Best-of-``repeats`` wall time of ``cmd`` after one untimed run (warm file cache).

    Raises RuntimeError naming the command if it fails.
    """
    seconds = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {tail}")
        if i > 0:
            seconds.append(elapsed)
    return {"best_seconds": min(seconds), "seconds": seconds, "command": cmd}


def peak_rss_of_command(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Peak RSS (MiB) of ``cmd`` via getrusage(RUSAGE_CHILDREN) in a fresh wrapper process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *cmd], env=env, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    maxrss_kib, code = proc.stdout.strip().splitlines()[-1].split()
    if int(code) != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}: {tail}")
    return {"peak_rss_mb": int(maxrss_kib) / 1024.0, "seconds": elapsed, "command": cmd}


def _probe(name: str, progress: Callable[[str], None], measure: Callable[[], dict]) -> dict:
    """Run one probe; any failure becomes ``{"error": message}`` so the benchmark goes on."""
    progress(name)
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - a probe must never abort the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"}


def _help_time(env: dict) -> dict:
    result = time_command([*cli_command(), "--help"], repeats=5, env=env)
    # Context: what the bare interpreter costs before any of our code runs.
    result["python_startup_seconds"] = time_command([sys.executable, "-c", "pass"], 5, env)["best_seconds"]
    return result


def measure_cache_load(data_dir: str | None, threads: int, run_child) -> dict:
    """First child fills/validates the cache; a second, fresh child times loading from it."""
    warm = run_child({"kind": "load_raw", "data_dir": data_dir}, threads)
    if "error" in warm:
        return warm
    timed = run_child({"kind": "load_raw", "data_dir": data_dir}, threads)
    if "error" in timed:
        return timed
    return {"fresh_process_seconds": timed["first_call_seconds"],
            "same_process_second_call_seconds": timed["second_call_seconds"],
            "first_ever_call_seconds": warm["first_call_seconds"], "peak_rss_mb": timed["peak_rss_mb"]}


def _default_train_rss(env: dict, quick: bool, data_dir: str | None) -> dict:
    """Peak RSS of ``fmnist-mlp train`` on configs/default.yaml, writing its run to a temp dir."""
    if not DEFAULT_CONFIG.exists():
        raise FileNotFoundError(f"{DEFAULT_CONFIG} does not exist yet")
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-run-") as runs_dir:
        cmd = [*cli_command(), "train", "--config", str(DEFAULT_CONFIG), "--runs-dir", runs_dir]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        if quick:
            cmd += ["--set", "train.epochs=1"]
        result = peak_rss_of_command(cmd, env=env, cwd=str(REPO_ROOT))
    result["epochs"] = "1 (--quick)" if quick else "config default"
    return result


def run_probes(*, skip, quick: bool, threads: int, data_dir: str | None, synthetic: int | None,
               progress: Callable[[str], None], thread_env: dict,
               run_child: Callable[[dict, int], dict]) -> dict:
    """All whole-tool probes not named in ``skip``; real-data probes are skipped on synthetic data."""
    extras: dict = {}
    if "cli" not in skip:
        extras["help"] = _probe("fmnist-mlp --help wall time", progress, lambda: _help_time(thread_env))
    real_data = not synthetic
    if "cache" not in skip and real_data:
        extras["data_cache"] = _probe("decoded-data cache load", progress,
                                      lambda: measure_cache_load(data_dir, threads, run_child))
    if "rss" not in skip and real_data:
        extras["default_train"] = _probe("peak RSS of training configs/default.yaml", progress,
                                         lambda: _default_train_rss(thread_env, quick, data_dir))
    if "overhead" not in skip and real_data:
        extras["train_overhead"] = _probe(
            "bare loop vs real train epoch", progress,
            lambda: _check(run_child({"kind": "overhead", "data_dir": data_dir, "config": str(DEFAULT_CONFIG),
                                      "timed_epochs": 1 if quick else 2}, threads)))
    return extras


def _check(result: dict) -> dict:
    if "error" in result:
        raise RuntimeError(result["error"])
    return result
