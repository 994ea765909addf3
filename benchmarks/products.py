"""A training step against its own matrix products timed alone: how much of a step is not BLAS.

In one process, alternating bursts: ``steps`` full training steps (gather the batch, forward,
backward, update, as the training loop runs them: batches are slices of a shuffled order over
a split of the training split's size, gathered for the model's kernels as the loop gathers
them, the fused gather from pixel bytes, the next batch gathered ahead on the pool's idle
worker, or ``np.take`` from float rows) and ``steps``
repetitions of the same step's matrix products alone (forward x·W per layer, backward xᵀ·dz and dz·Wᵀ, none for the first layer's
input), into the model's own work arrays, so the memory layouts are the engine's. Reported per
step: the median over rounds of each, and ``share`` = products / step, each round's pair of
bursts divided, the median over rounds (1.0 would mean everything around the products is free). The update's memory traffic is reported beside a plain copy's.
The step and the products run with the training loop's BLAS pool where it installs one
(:func:`fmnist_mlp.nn.kernels.blas_pool.pool_for_training`).
"""

from __future__ import annotations

import statistics
import time


TRAIN_ROWS = 54_000                 # the training split's rows (60,000 less the validation split)
MEAN, STD = 0.2860, 0.3530          # about Fashion-MNIST's; any values make the same work


def _products(model, x, work, logits, dlogits):
    """A callable running the step's matrix products alone into the model's arrays."""
    import numpy as np

    p, g = model.params, model.grads
    last = len(model.hidden)
    outs = [layer.h for layer in work.layers] + [logits]
    douts = [layer.dh for layer in work.layers] + [dlogits]

    def run():
        a = x
        for i in range(last + 1):
            np.matmul(a, p[f"layer{i}.W"], out=outs[i])
            a = outs[i]
        for i in range(last, -1, -1):
            below = outs[i - 1] if i > 0 else x
            np.matmul(below.T, douts[i], out=g[f"layer{i}.W"])
            if i > 0:
                np.matmul(douts[i], p[f"layer{i}.W"].T, out=douts[i - 1])
    return run


def _per_step(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure_products(job: dict, build) -> dict:
    """``build(job) -> (model, optimizer, lr)``: the benchmark's engine for this case."""
    import numpy as np

    model, optimizer, lr = build(job)
    batch, steps, rounds = job["batch_size"], job.get("steps", 20), job.get("rounds", 10)
    rng = np.random.default_rng(0)
    # The training split's size, its pixel bytes and labels, gathered as the training loop
    # gathers them for the model's kernels: decoded in the fused gather from the bytes (numba),
    # or np.take from float rows (NumPy); batches are slices of a shuffled order.
    n_rows, dtype = job.get("rows", TRAIN_ROWS), model.params.flat.dtype
    pixels = rng.integers(0, 256, (n_rows, 784), dtype=np.uint8)
    y_all = rng.integers(0, 10, n_rows)
    if model.kernels == "numba":
        from fmnist_mlp.data.dataset import EncodedRows
        from fmnist_mlp.nn.kernels.batches import FusedBatches

        rows, batches = EncodedRows(pixels, MEAN, STD, dtype), FusedBatches(dtype)
        gather = lambda idx, out: batches.fill(out, rows, idx)              # noqa: E731
        # As the loop does, the next batch is gathered ahead on the pool's idle worker.
        ahead = lambda idx, out: batches.start(out, rows, idx)              # noqa: E731
    else:
        from fmnist_mlp.data.dataset import pixels_to_inputs

        rows = pixels_to_inputs(pixels, MEAN, STD, dtype.name)
        gather = lambda idx, out: np.take(rows, idx, axis=0, out=out, mode="clip")  # noqa: E731
        ahead = None
    buffers, yb = [np.empty((batch, 784), dtype) for _ in range(2)], np.empty(batch, np.int64)
    drop_rng, counter = np.random.default_rng(1), [0]
    shuffled, position = rng.permutation(n_rows), [0]

    def step():
        if position[0] + batch > n_rows:    # a new epoch: a new order
            shuffled[:], position[0] = rng.permutation(n_rows), 0
        idx = shuffled[position[0]:position[0] + batch]
        position[0] += batch
        xb = buffers[counter[0] % 2]
        gather(idx, xb)
        if ahead is not None and position[0] + batch <= n_rows:
            ahead(shuffled[position[0]:position[0] + batch], buffers[(counter[0] + 1) % 2])
        np.take(y_all, idx, out=yb, mode="clip")
        model.loss_and_grad(xb, yb, rng=drop_rng)
        optimizer.step(model.params, model.grads, lr)
        counter[0] += 1

    step()
    work = model._workspace.for_batch(batch, training=True)   # the arrays the step just used
    # Zeros, not np.empty: garbage there (inf, NaN) would flow into the gradients the update
    # bursts apply, and from them into the weights.
    logits, dlogits = (np.zeros((batch, 10), np.float32) for _ in range(2))
    products = _products(model, buffers[0], work, logits, dlogits)
    # The update alone runs at lr 0: the same arithmetic, without a fixed gradient applied
    # hundreds of times moving the weights the steps train.
    update = lambda: optimizer.step(model.params, model.grads, 0.0)     # noqa: E731
    copy_src, copy_dst = model.params.flat.copy(), np.empty_like(model.params.flat)
    copy = lambda: np.copyto(copy_dst, copy_src)                        # noqa: E731
    times = {"step": [], "products": [], "update": [], "copy": []}
    from fmnist_mlp.training.loop import blas_pool_for

    with blas_pool_for(model):          # as the training loop runs the step, where it pays
        for r in range(rounds):
            order = [("step", step), ("products", products), ("update", update), ("copy", copy)]
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                times[name].append(_per_step(fn, steps))
                if ahead is not None:
                    batches.finish()        # the batch the last step started: not in the next
    med = {name: statistics.median(t) for name, t in times.items()}
    n_bytes = model.params.flat.nbytes
    # Bytes an update must move at least: read θ, g and each state array, write θ and the state.
    update_bytes = n_bytes * (3 + 2 * len(getattr(optimizer, "slots", ())))
    return {"step_seconds": med["step"], "products_seconds": med["products"],
            # Each round's products over its own step (adjacent bursts, one state of the
            # machine), the median over rounds: a machine that changes speed between rounds
            # moves both sides of a round together, and the medians of each side apart.
            "share": statistics.median(p / s for p, s in zip(times["products"], times["step"])),
            "step_rounds": times["step"], "products_rounds": times["products"],
            "update_seconds": med["update"],
            "update_gb_per_s": update_bytes / med["update"] / 1e9,
            "copy_gb_per_s": 2 * n_bytes / med["copy"] / 1e9, "parameters": model.params.flat.size,
            "kernels": {"layers": model.kernels, "optimizer": optimizer.kernels}}


def main(argv=None) -> None:
    """The step-vs-products rows, one fresh process per row (as ``python -m benchmarks`` runs
    them, with more rounds to choose)::

        python -m benchmarks.products --hidden 256,128 --hidden 1024,512 \\
            --hidden 1024,1024,1024 --optimizer momentum --optimizer adam --rounds 30
    """
    import argparse

    from benchmarks.run import run_child

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", action="append", help="hidden widths, e.g. 256,128 (repeat)")
    parser.add_argument("--optimizer", action="append", help="momentum, adam, ... (repeat)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20, help="steps in each burst")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for hidden in args.hidden or ["256,128"]:
        for optimizer in args.optimizer or ["momentum"]:
            job = {"epochs": 1, "seed": 0, "warmup_batches": 20, "kernels": "auto",
                   "torch_optimizer_impl": "default", "kind": "products", "engine": "numpy",
                   "hidden": [int(h) for h in hidden.split(",")], "batch_size": args.batch_size,
                   "optimizer": optimizer, "dropout": 0.0, "rounds": args.rounds,
                   "steps": args.steps}
            r = run_child(job, args.threads)
            if "error" in r:
                raise SystemExit(f"784-{hidden.replace(',', '-')}-10, {optimizer}: {r['error']}")
            print(f"784-{hidden.replace(',', '-')}-10, batch {args.batch_size}, {optimizer}: "
                  f"step {r['step_seconds'] * 1e3:.3f} ms, products {r['products_seconds'] * 1e3:.3f}"
                  f" ms, share {r['share']:.3f}, update {r['update_seconds'] * 1e3:.3f} ms "
                  f"(kernels {r['kernels']['layers']})", flush=True)


if __name__ == "__main__":
    main()
