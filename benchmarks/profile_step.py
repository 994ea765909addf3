"""Where one training step's time goes: cProfile over the benchmark's loop, on random batches.

    OMP_NUM_THREADS=1 python -m benchmarks.profile_step --hidden 256,128 --optimizer adam \\
        --dropout 0.2 --kernels numba [--steps 300]

Prints the functions with the most time of their own: the matrix products show as
``dense_forward``/``dense_backward``, the fused kernels under ``nn/kernels``, the NumPy update as
``_update``. One thread keeps BLAS's own threads out of the picture.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats


def main(argv=None) -> None:
    import numpy as np

    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import MLP, kernels
    from fmnist_mlp.nn.optim import make_optimizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="256,128")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--batchnorm", action="store_true")
    parser.add_argument("--kernels", default="auto", choices=("auto", "numpy", "numba"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    kernels.set_cache_dir(user_cache_dir() / "kernels")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7500, 784), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    model = MLP(hidden=[int(h) for h in args.hidden.split(",")], dropout=args.dropout,
                batchnorm=args.batchnorm, seed=0, kernels=args.kernels)
    opt = make_optimizer(args.optimizer, model.params, lr=1e-3, kernels=args.kernels)
    xb = np.empty((args.batch_size, 784), np.float32)
    yb = np.empty(args.batch_size, np.int64)
    drop_rng = np.random.default_rng(0)

    def steps(n: int) -> None:
        for _ in range(n):
            idx = rng.integers(0, len(x), args.batch_size)
            np.take(x, idx, axis=0, out=xb, mode="clip")
            np.take(y, idx, out=yb, mode="clip")
            model.loss_and_grad(xb, yb, drop_rng)
            opt.step(model.params, model.grads)

    steps(20)
    profile = cProfile.Profile()
    profile.runcall(steps, args.steps)
    print(f"kernels: layers {model.kernels}, optimizer {opt.kernels}")
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
