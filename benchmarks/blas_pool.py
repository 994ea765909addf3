"""A training step with NumPy's BLAS running its parallel work on a pool of ours, not on its own.

    python -m benchmarks.blas_pool [--hidden 1024,1024] [--batch-size 512] [--batchnorm]
        [--dropout 0.2] [--optimizer adamw] [--steps 200] [--rounds 3]

OpenBLAS's worker threads spin between products (:mod:`benchmarks.blas_spin`), so the fused
kernels' thread splits, which run between products, find the second core taken. NumPy's bundled
OpenBLAS (0.3.27 and later) exports ``openblas_set_threads_callback_function``: given a
callback, it hands each product's parallel jobs to it instead of to its own threads. This tool
installs one before the process's first product (OpenBLAS's threads then never run) and times
the same training step (the engine's, fused kernels) with and without it, one process a side,
the sides alternated, split into the batch's gather, ``loss_and_grad`` and the optimiser's step.
The results are the same bits either way (the jobs are OpenBLAS's own; the tool compares the
weights' hashes). Two pools:

- ``--pool native`` (the default), :mod:`fmnist_mlp.nn.kernels.blas_pool`: a compiled callback hands job
  i to worker i through atomic words, the workers spin about 5 ms, then sleep on a futex.
- ``--pool python``: job 0 on the calling thread, the others on a ``ThreadPoolExecutor``. Its
  callback runs Python code inside the product, where a Ctrl-C's KeyboardInterrupt, raised
  between two jobs and swallowed by ctypes, would leave the other job waiting for ever.

The training loop installs the native one where it pays (:func:`fmnist_mlp.nn.kernels.blas_pool.pool_for_training`).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

_DOJOB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t,
                             ctypes.c_void_p, ctypes.c_int)


def _setter():
    """NumPy's OpenBLAS ``set_threads_callback_function``, or None where it has none (the
    engine's own lookup, :func:`fmnist_mlp.nn.kernels.blas_pool.openblas`)."""
    from fmnist_mlp.nn.kernels.blas_pool import openblas

    found = openblas()
    return None if found is None else found[0]


class PythonPool:
    """The callback: job 0 on the calling thread, jobs 1.. on the pool's threads, all at once
    (a product's jobs wait on each other's packed panels, so they cannot run one after another)."""

    def __init__(self, threads: int = 1) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="blas-pool")
        self.products = 0
        self.callback = _CALLBACK(self._run)

    def _run(self, sync, dojob, jobs, size, data, extra) -> None:
        self.products += 1
        job = _DOJOB(dojob)
        others = [self.pool.submit(job, i, data + i * size, extra) for i in range(1, jobs)]
        job(0, data, extra)
        for other in others:
            other.result()


def measure(args) -> dict:
    """One side, in this process: ``args.side`` "own" (BLAS's threads) or "pool" (ours)."""
    import hashlib

    import numpy as np

    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import MLP, kernels
    from fmnist_mlp.nn.optim import make_optimizer

    pool = None
    if args.side == "pool":                 # before the first product: BLAS's threads never run
        setter = _setter()
        if setter is None:
            raise SystemExit("this NumPy's BLAS has no set_threads_callback_function")
        if args.pool == "native":
            from fmnist_mlp.nn.kernels.blas_pool import NativePool

            pool = NativePool()
            pool.install()
        else:
            pool = PythonPool()
            setter(pool.callback)
    kernels.set_cache_dir(user_cache_dir() / "kernels")
    batch = args.batch_size
    pick, drop_rng = np.random.default_rng(1), np.random.default_rng(0)
    x = pick.standard_normal((20 * batch, 784), dtype=np.float32)
    y = pick.integers(0, 10, len(x))
    xb, yb = np.empty((batch, 784), np.float32), np.empty(batch, np.int64)
    model = MLP(hidden=[int(h) for h in args.hidden.split(",")], dropout=args.dropout,
                batchnorm=args.batchnorm, seed=0, kernels="auto")
    optimizer = make_optimizer(args.optimizer, model.params, lr=1e-3, kernels="auto")
    spent = [0, 0, 0]
    for step in range(args.steps + 10):
        t0 = time.perf_counter_ns()
        idx = pick.integers(0, len(x), batch)
        np.take(x, idx, axis=0, out=xb, mode="clip")
        np.take(y, idx, out=yb, mode="clip")
        t1 = time.perf_counter_ns()
        model.loss_and_grad(xb, yb, drop_rng)
        t2 = time.perf_counter_ns()
        optimizer.step(model.params, model.grads)
        t3 = time.perf_counter_ns()
        if step >= 10:                      # the first steps load the kernels and warm up
            spent = [spent[0] + t1 - t0, spent[1] + t2 - t1, spent[2] + t3 - t2]
    served = pool.products if pool else 0
    if args.pool == "native" and pool:
        pool.close()
    return {"microseconds": [t / args.steps / 1e3 for t in spent],
            "weights": hashlib.sha256(model.params.flat.tobytes()).hexdigest(),
            "products_through_pool": served}


def main(argv=None) -> None:
    import json
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="1024,1024")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batchnorm", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per side, alternated")
    parser.add_argument("--pool", choices=("native", "python"), default="native",
                        help="the pool: the engine's compiled one (nn/kernels/blas_pool.py) or Python threads")
    parser.add_argument("--side", choices=("own", "pool"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(measure(args)))
        return
    if _setter() is None:
        raise SystemExit("this NumPy's BLAS has no set_threads_callback_function")
    names = {"own": "BLAS's own threads", "pool": f"a {args.pool} pool"}
    results = {side: [] for side in names}
    forwarded = ["--hidden", args.hidden, "--batch-size", str(args.batch_size), "--dropout",
                 str(args.dropout), "--optimizer", args.optimizer, "--steps", str(args.steps),
                 "--pool", args.pool,
                 *(["--batchnorm"] if args.batchnorm else [])]
    for r in range(args.rounds):
        for side in (("own", "pool") if r % 2 == 0 else ("pool", "own")):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.blas_pool", *forwarded,
                                   "--side", side], capture_output=True, text=True, check=True)
            results[side].append(json.loads(proc.stdout))
    print(f"{args.hidden}, batch {args.batch_size}, {args.optimizer}, dropout {args.dropout}, "
          f"batch norm {args.batchnorm}, {args.pool} pool: microseconds a step, median of "
          f"{args.rounds} processes "
          f"of {args.steps} steps each, alternated")
    for side, name in names.items():
        gather, forward_backward, update = (
            statistics.median(run["microseconds"][i] for run in results[side]) for i in range(3))
        print(f"  {name:20} gather {gather:6.0f}  loss_and_grad {forward_backward:7.0f}  "
              f"update {update:6.0f}  step {gather + forward_backward + update:7.0f}")
    hashes = {run["weights"] for runs in results.values() for run in runs}
    print(f"  products through the pool: {results['pool'][0]['products_through_pool']} a "
          f"process; the weights after the steps: "
          f"{'bit-identical' if len(hashes) == 1 else 'DIFFER'} on both sides")


if __name__ == "__main__":
    main()
