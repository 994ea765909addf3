"""Before/after speed of the engine: two checkouts timed in alternating bursts, in one run.

    python benchmarks/ab.py --before ../old-checkout --after . [--rounds 16] [--steps 10]

Why not two runs of the full benchmark: on a shared or noisy machine the numpy/torch ratio of the
same code swings by several times between runs, which hides a 5 % change. Here one long-lived
worker process per checkout (``PYTHONPATH`` set to it) runs the same short burst — 10 training
steps at batch 128, or one evaluation pass over 2,000 rows — alternately, the order swapped each
round, so both see the same load. Prints after/before time per row (below 1: after is faster),
the median and quartiles over the rounds. Random inputs: only time is compared.

With several BLAS threads, the waiting worker's threads spin while the other one runs: short
bursts then scatter by tens of per cent. Compare with OMP_NUM_THREADS=1, or with --steps 300.

The kernels: ``--before-kernels numpy --after-kernels numba`` (on one checkout, ``--before .``)
times the NumPy reference against the fused kernels the same way. Without them each side uses
its checkout's default (a checkout that predates the choice has only NumPy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HIDDEN = ((256, 128), (1024, 512))
OPTIMIZERS = {"momentum": ({"lr": 0.01, "momentum": 0.9}, 0.0), "adam": ({"lr": 1e-3}, 0.2)}
STEPS_PER_BURST, BATCH = 10, 128


def _cases(steps: int = STEPS_PER_BURST):
    """name -> callable running one burst, built with the public API only (both sides have it)."""
    import numpy as np

    from fmnist_mlp.nn import MLP
    from fmnist_mlp.optim import make_optimizer

    # AB_KERNELS: this side's kernels (train.kernels); unset keeps the checkout's default.
    choice = {"kernels": os.environ["AB_KERNELS"]} if os.environ.get("AB_KERNELS") else {}
    if choice:
        from fmnist_mlp.data.download import user_cache_dir
        from fmnist_mlp.nn import kernels

        kernels.set_cache_dir(user_cache_dir() / "kernels")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20 * BATCH, 784)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    x_eval = rng.standard_normal((2000, 784)).astype(np.float32)
    cases = {}
    for hidden in HIDDEN:
        net = "-".join(map(str, hidden))
        for name, (settings, dropout) in OPTIMIZERS.items():
            model = MLP(hidden=hidden, dropout=dropout, seed=0, **choice)
            opt = make_optimizer(name, model.params, **settings, **choice)
            drop_rng = np.random.default_rng(1)

            def train(model=model, opt=opt, drop_rng=drop_rng):
                for k in range(steps):
                    s = (k % 20) * BATCH
                    model.loss_and_grad(x[s:s + BATCH], y[s:s + BATCH], rng=drop_rng)
                    opt.step(model.params, model.grads)
            cases[f"{net} b{BATCH} {name} dropout {dropout}"] = train
        model = MLP(hidden=hidden, seed=0, **choice)
        cases[f"{net} inference"] = lambda model=model: model.forward(x_eval)
    return cases


def worker(steps: int = STEPS_PER_BURST) -> None:
    """Read case names on stdin, answer each with the seconds one burst took."""
    import fmnist_mlp

    print(fmnist_mlp.__file__, flush=True)       # which checkout this worker measures
    cases = _cases(steps)
    for burst in cases.values():         # warm-up: work arrays, BLAS threads, caches
        burst()
    print(json.dumps(list(cases)), flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        cases[line.strip()]()
        print(time.perf_counter() - start, flush=True)


def compare(before: Path, after: Path, rounds: int, steps: int = STEPS_PER_BURST,
            kernels: tuple[str | None, str | None] = (None, None)) -> dict[str, list[float]]:
    # Run as a script, not with -m from the repository root: -m puts the current directory first
    # on sys.path, so both workers would import the checkout they were started in.
    procs = {side: subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker",
                                     "--steps", str(steps)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(path.resolve()),
                                         "AB_KERNELS": choice or ""})
             for side, path, choice in (("before", before, kernels[0]),
                                        ("after", after, kernels[1]))}
    for side, path in (("before", before), ("after", after)):
        imported = Path(procs[side].stdout.readline().strip())
        if path.resolve() not in imported.parents:
            raise SystemExit(f"the {side} worker imported {imported}, not the package in {path}")
    names = [json.loads(p.stdout.readline()) for p in procs.values()][0]
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for name in names:
            seconds = {}
            for side in order:
                procs[side].stdin.write(name + "\n")
                procs[side].stdin.flush()
                seconds[side] = float(procs[side].stdout.readline())
            ratios[name].append(seconds["after"] / seconds["before"])
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="checkout of the old code")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout of the new code")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=STEPS_PER_BURST,
                        help="training steps a burst (longer bursts average out BLAS threads "
                             "waking; 300 for a 2-thread check)")
    for side in ("before", "after"):
        parser.add_argument(f"--{side}-kernels", choices=("auto", "numpy", "numba"),
                            help=f"the {side} side's kernels (default: its checkout's default)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps)
    if args.before is None:
        parser.error("--before is required")
    ratios = compare(args.before, args.after, args.rounds, args.steps,
                     (args.before_kernels, args.after_kernels))
    print(f"{'row':36} after/before time: median (quartiles) over {args.rounds} rounds "
          f"of {args.steps}-step bursts")
    for name, r in ratios.items():
        q = statistics.quantiles(r, n=4, method="inclusive")
        print(f"{name:36} {statistics.median(r):.3f} ({q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
