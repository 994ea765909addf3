"""Where a fused training step's microseconds go, measured inside the step as the loop runs it.

    python -m benchmarks.step_parts --hidden 256,128 --optimizer momentum --batch-size 128
    python -m benchmarks.step_parts --hidden 256,128 --optimizer adamw --batch-size 512 \\
        --batchnorm --label-smoothing 0.1          # fast.yaml's step

The step is the products benchmark's (:mod:`benchmarks.products`): batches sliced from a shuffled
order over 54,000 rows of pixel bytes, gathered by the fused gather, inside the engine's thread
pool. Each part is timed where it runs (a timer around each call: about 0.1 µs each), so it
shows what a part costs in the step, with the caches as the step leaves them, and not alone:
the matrix products, the fused passes, the head, the update (then a second update straight
after, at learning rate 0, which shows what the first paid for its cold state), and the Python
left over in ``loss_and_grad`` and around it. Unlike ``benchmarks.profile_step`` (cProfile,
one thread) nothing else is slowed down. The parts are those of rounds that gather each next
batch ahead on the pool's idle worker, as the training loop does without augmentation; rounds
without it, alternated with them, give the step's time the other way.
"""

from __future__ import annotations

import argparse
import collections
import time


def main(argv=None) -> dict[str, float]:
    """Prints the parts; returns them (µs a step, and ``step`` itself)."""
    import numpy as np

    from fmnist_mlp.data.dataset import EncodedRows
    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import MLP, kernels, layers
    from fmnist_mlp.nn.kernels.batches import FusedBatches
    from fmnist_mlp.nn.optim import make_optimizer
    from fmnist_mlp.training.loop import blas_pool_for

    from benchmarks.products import MEAN, STD, TRAIN_ROWS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="256,128")
    parser.add_argument("--optimizer", default="momentum")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batchnorm", action="store_true")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    kernels.set_cache_dir(user_cache_dir() / "kernels")
    model = MLP(hidden=[int(h) for h in args.hidden.split(",")], batchnorm=args.batchnorm,
                label_smoothing=args.label_smoothing, seed=0, kernels="numba")
    optimizer = make_optimizer(args.optimizer, model.params, lr=1e-3, kernels="numba")
    if model.kernels != "numba":
        raise SystemExit("step_parts times the fused kernels: install the fast extra")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (TRAIN_ROWS, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, TRAIN_ROWS)
    rows, batches = EncodedRows(pixels, MEAN, STD, np.float32), FusedBatches(np.float32)
    batch = args.batch_size
    buffers, yb = [np.empty((batch, 784), np.float32) for _ in range(2)], np.empty(batch, np.int64)
    spent: collections.Counter = collections.Counter()

    def timed(owner, name: str, label: str) -> None:
        call = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return call(*a, **k)
            finally:
                spent[label] += time.perf_counter() - start
        setattr(owner, name, wrapper)

    timed(layers, "dense_forward", "products, forward")
    timed(layers, "dense_backward", "products, backward")
    timed(layers, "batchnorm_update_running", "batch norm's running averages (NumPy)")
    for name, label in (("hidden_forward", "chains, forward"), ("hidden_backward", "chains, backward"),
                        ("batchnorm_forward_train", "batch norm, forward"),
                        ("batchnorm_backward", "batch norm, backward")):
        timed(model._fused, name, label)
    timed(model._fused_head, "loss_and_dlogits", "the head")
    timed(batches, "fill", "the gather")
    timed(batches, "start", "the next batch's gather started")
    shuffled, position = rng.permutation(TRAIN_ROWS), [0]

    def step() -> None:
        if position[0] + batch > TRAIN_ROWS:
            shuffled[:], position[0] = rng.permutation(TRAIN_ROWS), 0
        idx = shuffled[position[0]:position[0] + batch]
        position[0] += batch
        xb, spent["steps"] = buffers[spent["steps"] % 2], spent["steps"] + 1
        batches.fill(xb, rows, idx)
        if ahead[0] and position[0] + batch <= TRAIN_ROWS:  # the next batch, on the idle core
            batches.start(buffers[spent["steps"] % 2], rows,
                          shuffled[position[0]:position[0] + batch])
        np.take(labels, idx, out=yb, mode="clip")
        start = time.perf_counter()
        model.loss_and_grad(xb, yb)
        middle = time.perf_counter()
        optimizer.step(model.params, model.grads, 1e-3)
        end = time.perf_counter()
        optimizer.step(model.params, model.grads, 0.0)
        spent["loss_and_grad"] += middle - start
        spent["the update"] += end - middle
        spent["a second update straight after (not in the step)"] += time.perf_counter() - end

    # Rounds with the next batch gathered ahead (as the loop does without augmentation) and,
    # alternated with them in ABBA order, rounds without: the gather then in each step.
    ahead, results = [True], {True: [], False: []}
    with blas_pool_for(model):
        for _ in range(50):
            step()
        for r in range(2 * args.rounds):
            ahead[0] = r % 4 in (0, 3)
            spent.clear()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            total = time.perf_counter() - start
            batches.finish()
            results[ahead[0]].append(
                (total - spent["a second update straight after (not in the step)"], dict(spent)))
    without = sorted(total for total, _ in results[False])[len(results[False]) // 2]
    total, parts = sorted(results[True], key=lambda r: r[0])[len(results[True]) // 2]
    parts.pop("steps")
    per_step = {name: seconds / args.steps * 1e6 for name, seconds in parts.items()}
    inside = [name for name in per_step if name not in
              ("loss_and_grad", "the update", "the gather", "the next batch's gather started",
               "a second update straight after (not in the step)")]
    python_inside = per_step["loss_and_grad"] - sum(per_step[name] for name in inside)
    outside = (total / args.steps * 1e6 - per_step["loss_and_grad"] - per_step["the update"]
               - per_step["the gather"] - per_step.get("the next batch's gather started", 0.0))
    print(f"784-{args.hidden.replace(',', '-')}-10, batch {batch}, {args.optimizer}"
          f"{', batch norm' if args.batchnorm else ''}: step {total / args.steps * 1e6:.1f} µs "
          f"(the median of {args.rounds} rounds of {args.steps} steps, the next batch gathered "
          f"ahead)")
    for name in sorted(per_step, key=lambda n: -per_step[n]):
        if name != "loss_and_grad":
            print(f"  {per_step[name]:8.1f} µs  {name}")
    print(f"  {python_inside:8.1f} µs  Python in loss_and_grad")
    print(f"  {outside:8.1f} µs  Python around it (the batch's slice, the labels, the calls)")
    print(f"without the next batch gathered ahead: step {without / args.steps * 1e6:.1f} µs "
          f"(with / without {total / without:.3f}, rounds alternated)")
    return {**per_step, "Python in loss_and_grad": python_inside, "Python around it": outside,
            "step": total / args.steps * 1e6, "step without ahead": without / args.steps * 1e6}


if __name__ == "__main__":
    main()
