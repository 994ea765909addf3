"""The feature-major batch sums: the fused kernels' pairwise sums against NumPy's own.

    python -m benchmarks.sums [--units 1024] [--batches 128,512] [--repeats 300]

For each batch size N, an array whose memory is (units, N), as a feature-major layer's work
array lies, summed over each unit's row: by ``np.sum(axis=1)`` and by
:func:`fmnist_mlp.nn.kernels.batchnorm.pairwise_row_sums` (four units at a time in 8-lane
vectors), then the sum of products Σ a·b (batch norm's variance and dγ), NumPy's as its
temporary product and a sum. One thread, a warm cache, median of five bursts. Each kernel result
is checked bit for bit against NumPy's before it is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time


def _per_call(fn, repeats: int) -> float:
    """Median microseconds per call over five bursts of ``repeats`` calls."""
    fn()
    bursts = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        bursts.append((time.perf_counter() - start) / repeats * 1e6)
    return statistics.median(bursts)


def main(argv=None) -> None:
    import numpy as np

    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import kernels

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args(argv)
    kernels.set_cache_dir(user_cache_dir() / "kernels")
    from fmnist_mlp.nn.kernels.batchnorm import pairwise_row_sums

    rng = np.random.default_rng(0)
    for n in (int(b) for b in args.batches.split(",")):
        a = (rng.standard_normal((args.units, n)) * 3 + 1).astype(np.float32)
        b = rng.standard_normal((args.units, n)).astype(np.float32)
        total, product = np.empty(args.units, np.float32), np.empty_like(a)
        for with_b, want in ((False, np.sum(a, axis=1)), (True, np.sum(a * b, axis=1))):
            pairwise_row_sums(a, b if with_b else a, with_b, 0, args.units, total)
            if not np.array_equal(total.view(np.int32), want.view(np.int32)):
                raise SystemExit(f"N={n}: the kernel's sums differ from NumPy's")
        numpy_sum = _per_call(lambda: np.sum(a, axis=1, out=total), args.repeats)
        kernel_sum = _per_call(lambda: pairwise_row_sums(a, a, False, 0, args.units, total),
                               args.repeats)

        def numpy_dot():
            np.multiply(a, b, out=product)
            np.sum(product, axis=1, out=total)

        numpy_dots = _per_call(numpy_dot, args.repeats)
        kernel_dots = _per_call(lambda: pairwise_row_sums(a, b, True, 0, args.units, total),
                                args.repeats)
        print(f"{args.units} units x {n}: sum NumPy {numpy_sum:.0f} us, kernel {kernel_sum:.0f} us; "
              f"sum of products NumPy {numpy_dots:.0f} us, kernel {kernel_dots:.0f} us "
              f"(bit-identical)")


if __name__ == "__main__":
    main()
