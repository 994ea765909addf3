"""Whole ``fmnist-mlp train`` processes, two settings alternated: the time a user waits.

    python -m benchmarks.train_ab --config configs/fast.yaml --a train.kernels=numpy \\
        --b train.kernels=numba --rounds 3

Each round runs one process with ``--set A`` and one with ``--set B`` (the order swapped every
round, so both see the same load), from start to exit: imports, data from the cache, the kernels'
cache, training, the test score. Prints each process's wall time and peak resident memory, the
median B/A ratios and the two runs' test accuracies (equal kernels give equal accuracy). Runs land
in a temporary folder. ``--repo-a``/``--repo-b`` run each side from another checkout (before and
after a change: ``git worktree add ../before <commit>``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def one_run(config: str, override: str, runs_dir: Path, extra: list[str],
            repo: Path = REPO_ROOT) -> tuple[float, float, dict]:
    """(wall seconds, peak resident MB, summary) of one `fmnist-mlp train` process."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # Run from the checkout itself: `python -m` puts the working folder first on the path.
        proc = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "train", "--config",
                                 str(Path(config).resolve()), "--set", override, "--runs-dir",
                                 str(runs_dir), "--quiet", "--json", *extra], env=env, cwd=repo,
                                stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"train --set {override} failed: {err.read().strip().splitlines()[-1:]}")
        return seconds, usage.ru_maxrss / 1024, json.loads(out.read())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fast.yaml")
    parser.add_argument("--a", default="train.kernels=numpy", help="--set of the A processes")
    parser.add_argument("--b", default="train.kernels=numba", help="--set of the B processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo-a", type=Path, default=REPO_ROOT, help="the checkout A runs from")
    parser.add_argument("--repo-b", type=Path, default=REPO_ROOT, help="the checkout B runs from")
    parser.add_argument("--data-dir", help="the dataset folder (default: the tool's own)")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="a further --set for both (e.g. train.epochs=3); repeatable")
    args = parser.parse_args(argv)
    extra = [a for s in args.extra for a in ("--set", s)]
    extra += ["--data-dir", str(Path(args.data_dir).resolve())] if args.data_dir else []
    times: dict[str, list[float]] = {"a": [], "b": []}
    peaks: dict[str, list[float]] = {"a": [], "b": []}
    accs: dict[str, list[float]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="train-ab-") as tmp:
        for r in range(args.rounds):
            for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                seconds, peak, summary = one_run(args.config, getattr(args, side), Path(tmp),
                                                 extra, getattr(args, f"repo_{side}").resolve())
                times[side].append(seconds)
                peaks[side].append(peak)
                accs[side].append(summary["test_acc"])
                print(f"round {r + 1} {side.upper()} ({getattr(args, side)}): {seconds:.2f} s, "
                      f"peak {peak:.0f} MB, test acc {summary['test_acc']:.4f}, kernels {summary.get('kernels')}",
                      flush=True)
    ratios = [b / a for a, b in zip(times["a"], times["b"])]
    print(f"B/A wall time: median {statistics.median(ratios):.3f} "
          f"(each round: {', '.join(f'{x:.3f}' for x in ratios)}); peak memory B/A "
          f"{statistics.median(peaks['b']) / statistics.median(peaks['a']):.3f} "
          f"({statistics.median(peaks['a']):.0f} and {statistics.median(peaks['b']):.0f} MB); "
          f"load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
