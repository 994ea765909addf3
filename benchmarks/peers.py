"""The engine against its peers (PyTorch, JAX) in alternating bursts: ratios a busy machine keeps.

    python -m benchmarks.peers [--rounds 8] [--steps 30] [--kernels auto]

The full benchmark runs each engine in its own process one after the other, so on a shared
machine a load that comes and goes lands on one engine and not the other (its numbers moved by
2-3x within one run here). This tool keeps one long-lived worker per engine, each holding every
row's model, optimiser and random batches, and asks them in turn, the order rotated each round,
for a burst of ``steps`` training steps of one row: all engines see the same load. Between bursts
it waits ``--settle`` seconds, so the last worker's threads have stopped spinning: OpenBLAS's
worker spins for about 0.1 s after its last product (2^28 cycles), and a burst started inside that
time shares a core with it (measured: the engine's 784-256-128 momentum step 0.75-0.79 ms right
after another worker's burst, 0.47 ms after a pause; JAX's and PyTorch's steps move less). It prints each
engine's median time per step and the engine's throughput over each peer's (above 1: the engine
is faster). Rows: the issue's four (batch 128; momentum; Adam with dropout 0.2; 784-256-128 and
784-1024-512) and best.yaml's shape (3 x 1024, batch norm, dropout, Adam). The steps are the full
benchmark's (:mod:`benchmarks.worker`, :mod:`benchmarks.jax_loop`) on random inputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = ("784-256-128-10_b128_momentum_d0", "784-256-128-10_b128_adam_d0.2",
        "784-1024-512-10_b128_momentum_d0", "784-1024-512-10_b128_adam_d0.2",
        "784-1024-1024-1024-10_b128_adam_d0.2_bn")


def _cases() -> dict[str, dict]:
    from benchmarks.run import benchmark_cases

    return {c["name"]: c for c in benchmark_cases() if c["name"] in ROWS}


def _random_data(batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20 * batch, 784), dtype=np.float32)
    return x, rng.integers(0, 10, len(x)), [rng.permutation(len(x)) for _ in range(4)]


def _burst(engine: str, case: dict, kernels: str):
    """A callable running ``n`` training steps of ``case`` on ``engine``."""
    from benchmarks import worker

    job = {**case, "seed": 0, "kernels": kernels, "threads": int(os.environ.get("OMP_NUM_THREADS", "2"))}
    x, y, orders = _random_data(case["batch_size"])
    order = orders[0]
    batch = case["batch_size"]
    steps_done = [0]

    def indices():
        start = (steps_done[0] % 20) * batch
        steps_done[0] += 1
        return order[start:start + batch]

    if engine == "numpy":
        import numpy as np

        model, optimizer, lr = worker._numpy_model_and_optimizer(job)
        xb, yb = np.empty((batch, 784), np.float32), np.empty(batch, np.int64)
        drop_rng = np.random.default_rng(1)

        def run(n):
            for _ in range(n):
                idx = indices()
                np.take(x, idx, axis=0, out=xb, mode="clip")
                np.take(y, idx, out=yb, mode="clip")
                model.loss_and_grad(xb, yb, rng=drop_rng)
                optimizer.step(model.params, model.grads, lr)
        return run
    if engine == "torch":
        import torch

        torch.set_num_threads(job["threads"])
        net = worker._torch_net(job).train()
        s = worker.OPTIMIZER_SETTINGS[case["optimizer"]]
        opt = (torch.optim.SGD(net.parameters(), lr=s["lr"], momentum=s["momentum"])
               if case["optimizer"] == "momentum" else
               torch.optim.Adam(net.parameters(), lr=s["lr"], eps=s["eps"], betas=(s["beta1"], s["beta2"])))
        xt, yt, loss_fn = torch.from_numpy(x), torch.from_numpy(y), torch.nn.CrossEntropyLoss()

        def run(n):
            for _ in range(n):
                idx = torch.from_numpy(indices())
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(xt.index_select(0, idx)), yt.index_select(0, idx))
                loss.backward()
                opt.step()
                loss.item()
        return run
    import jax
    import jax.numpy as jnp

    from benchmarks.jax_loop import _init, _make_step

    params = jax.tree.map(jnp.asarray, _init(case["hidden"], case.get("batchnorm", False), 0))
    slots = ("v",) if case["optimizer"] == "momentum" else ("m", "v")
    held = {"params": params, "state": {k: jax.tree.map(jnp.zeros_like, params) for k in slots},
            "key": jax.random.PRNGKey(0), "t": 0}
    step, xa, ya = _make_step(case), jnp.asarray(x), jnp.asarray(y.astype("int32"))

    def run(n):
        loss_sum = jnp.zeros((), jnp.float32)
        for _ in range(n):
            held["t"] += 1
            held["params"], held["state"], held["key"], loss_sum = step(
                held["params"], held["state"], xa, ya, jnp.asarray(indices().astype("int32")),
                held["key"], jnp.float32(held["t"]), loss_sum)
        float(loss_sum)                 # waits for the burst's last step
    return run


def worker_main(engine: str, kernels: str, steps: int) -> None:
    """Build every row, warm each up, then answer row names on stdin with seconds per burst.
    The engine's worker runs with the thread pool its training loop installs (for the fused
    kernels: :func:`fmnist_mlp.nn.kernels.blas_pool.pool_for_training`), one for the process."""
    from contextlib import ExitStack

    held, cases = ExitStack(), _cases()
    bursts = {name: _burst(engine, case, kernels) for name, case in cases.items()}
    if engine == "numpy":
        from fmnist_mlp.nn.kernels import resolve_kernels

        if resolve_kernels(kernels) == "numba":
            from fmnist_mlp.nn.kernels.blas_pool import pool_for_training

            first = next(iter(cases.values()))      # one pool serves every row's model
            held.enter_context(pool_for_training(first["hidden"], "numba"))
    for run in bursts.values():
        run(max(3, steps // 3))                 # compile, allocate, wake the threads
    print(json.dumps(sorted(bursts)), flush=True)
    with held:
        for line in sys.stdin:
            start = time.perf_counter()
            bursts[line.strip()](steps)
            print((time.perf_counter() - start) / steps, flush=True)


def compare(rounds: int, steps: int, kernels: str, threads: int, settle: float = 0.2) -> dict:
    engines = ["numpy"] + [e for e in ("torch", "jax") if importlib.util.find_spec(e)]
    # Every engine gets `threads`: BLAS and OpenMP pools, torch, and XLA's CPU thread pool. With
    # more than one, an idle worker's BLAS threads spin for a while after each burst and slow
    # the others down: --threads 1 gives the cleanest ratios on a shared machine.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
           "XLA_FLAGS": (f"--xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'} "
                         f"intra_op_parallelism_threads={threads}")}
    procs = {e: subprocess.Popen([sys.executable, "-m", "benchmarks.peers", "--worker", e,
                                  "--kernels", kernels, "--steps", str(steps)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                 cwd=REPO_ROOT) for e in engines}
    names = [json.loads(p.stdout.readline()) for p in procs.values()][0]
    seconds = {(name, e): [] for name in names for e in engines}
    for r in range(rounds):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for name in names:
            for e in order:
                time.sleep(settle)          # the last burst's threads stop spinning
                procs[e].stdin.write(name + "\n")
                procs[e].stdin.flush()
                seconds[name, e].append(float(procs[e].stdout.readline()))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return {"engines": engines, "rows": {name: {e: statistics.median(seconds[name, e])
                                                for e in engines} for name in names},
            "rounds": {f"{n}|{e}": v for (n, e), v in seconds.items()}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="training steps per burst")
    parser.add_argument("--kernels", default="auto", choices=("auto", "numpy", "numba"))
    parser.add_argument("--threads", type=int, default=1, help="threads per engine (default 1)")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds of pause before each burst (default 0.2; 0: none)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.kernels, args.steps)
    result = compare(args.rounds, args.steps, args.kernels, args.threads, args.settle)
    engines = result["engines"]
    print(f"median ms per step over {args.rounds} rounds of {args.steps}-step bursts, "
          f"{args.settle:g} s apart; "
          f"{args.threads} thread(s) each; engine kernels {args.kernels}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'row':42}" + "".join(f"{e + ' ms':>11}" for e in engines)
          + "".join(f"{'engine/' + e:>14}" for e in engines[1:]))
    for name in ROWS:
        if name in result["rows"]:
            t = result["rows"][name]
            print(f"{name:42}" + "".join(f"{1e3 * t[e]:11.3f}" for e in engines)
                  + "".join(f"{t[e] / t['numpy']:14.2f}" for e in engines[1:]))


if __name__ == "__main__":
    main()
