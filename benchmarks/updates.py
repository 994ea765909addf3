"""Each optimiser's update, NumPy passes against the fused kernel, on best.yaml-sized arrays.

    python -m benchmarks.updates [--steps 20] [--hidden 1024,1024,1024]

Both updates run in this process, step by step in turn (the same load for both), over the same
gradients, from the same start; prints the median time per update of each, their ratio, the
fused update's effective GB/s (the bytes an update must move: read θ, g and the state, write θ
and the state) beside a plain copy's, and whether the two results are bit-identical.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> None:
    import numpy as np

    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import MLP, kernels
    from fmnist_mlp.nn.optim import OPTIMIZERS, make_optimizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", default="1024,1024,1024")
    args = parser.parse_args(argv)
    kernels.set_cache_dir(user_cache_dir() / "kernels")
    hidden = [int(h) for h in args.hidden.split(",")]
    rng = np.random.default_rng(0)
    size = MLP(hidden=hidden).params.flat.size
    src, dst = np.ones(size, np.float32), np.empty(size, np.float32)
    copies = []
    for _ in range(args.steps):
        start = time.perf_counter()
        np.copyto(dst, src)
        copies.append(time.perf_counter() - start)
    copy_gbs = 2 * src.nbytes / statistics.median(copies) / 1e9
    print(f"{size:,} float32 parameters; plain copy {copy_gbs:.1f} GB/s")
    print(f"{'optimizer':10} {'numpy ms':>9} {'fused ms':>9} {'fused/numpy':>12} {'fused GB/s':>11}  bits")
    for name in OPTIMIZERS:
        runs = {}
        for choice in ("numpy", "numba"):
            model = MLP(hidden=hidden, seed=0)
            runs[choice] = (model, make_optimizer(name, model.params, lr=1e-3, weight_decay=0.01,
                                                  kernels=choice), [])
        for step in range(args.steps):
            grad = rng.standard_normal(size, dtype=np.float32)
            for choice in (("numpy", "numba") if step % 2 == 0 else ("numba", "numpy")):
                model, opt, times = runs[choice]
                model.grads.flat[:] = grad
                start = time.perf_counter()
                opt.step(model.params, model.grads, 1e-3)
                times.append(time.perf_counter() - start)
        t = {c: statistics.median(r[2]) for c, r in runs.items()}
        moved = src.nbytes * (3 + 2 * len(runs["numba"][1].slots))
        same = (np.array_equal(runs["numpy"][0].params.flat, runs["numba"][0].params.flat)
                and all(np.array_equal(a, b) for a, b in zip(runs["numpy"][1]._flat_state,
                                                             runs["numba"][1]._flat_state)))
        print(f"{name:10} {1e3 * t['numpy']:9.2f} {1e3 * t['numba']:9.2f} "
              f"{t['numba'] / t['numpy']:12.2f} {moved / t['numba'] / 1e9:11.1f}  "
              f"{'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
