"""Why a thread split of the elementwise work gains nothing right after a matrix product.

    python -m benchmarks.blas_spin [--size 4000000] [--seconds 1]

Two measurements, in this process (Linux: it reads each thread's CPU time from /proc):

1. Each thread's CPU time while the main thread alternates a product (NumPy's BLAS, on its own
   threads) with single-threaded elementwise passes. OpenBLAS's worker threads do not sleep between
   products: they spin, waiting for the next one, so they hold the second core through the whole
   elementwise phase.
2. One elementwise pass (a compiled kernel over ``--size`` floats) on one thread and split over
   two by the engine's runner (:class:`fmnist_mlp.nn.workspace.SplitRunner`), standing alone and
   right after a product ("alone": half a second after the last product, when BLAS's threads
   have gone to sleep). Alone, the split's second part runs on a free core; after a product it
   shares a core with a spinning BLAS thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time


def thread_cpu_seconds() -> dict[int, float]:
    """{thread id: user + system CPU seconds} of this process's threads (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:                 # the thread ended meanwhile
            continue
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def main(argv=None) -> None:
    import numpy as np

    from fmnist_mlp.data.download import user_cache_dir
    from fmnist_mlp.nn import kernels

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4_000_000, help="floats per elementwise pass")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of measurement 1")
    parser.add_argument("--repeats", type=int, default=50, help="passes per timing in measurement 2")
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        raise SystemExit("blas_spin: needs Linux's /proc to read each thread's CPU time")
    kernels.set_cache_dir(user_cache_dir() / "kernels")
    from fmnist_mlp.nn.kernels import jit
    from fmnist_mlp.nn.workspace import SplitRunner

    @jit.kernel
    def scale_shift(x, y, lo, hi):
        for i in range(lo, hi):
            y[i] = x[i] * np.float32(1.0001) + np.float32(0.5)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 1024), dtype=np.float32)
    w = rng.standard_normal((1024, 1024), dtype=np.float32)
    c = np.empty((512, 1024), np.float32)
    x = rng.standard_normal(args.size, dtype=np.float32)
    y = np.empty_like(x)
    scale_shift(x, y, 0, 16)
    np.matmul(a, w, out=c)              # BLAS starts its threads

    main_thread = threading.get_native_id()
    before, start, in_products = thread_cpu_seconds(), time.perf_counter(), 0.0
    while time.perf_counter() - start < args.seconds:
        t0 = time.perf_counter()
        np.matmul(a, w, out=c)
        in_products += time.perf_counter() - t0
        for _ in range(10):
            scale_shift(x, y, 0, x.size)
    wall = time.perf_counter() - start
    after = thread_cpu_seconds()
    print(f"1. {wall:.2f} s of products ({in_products / wall:.0%} of it) and single-threaded "
          f"passes; each thread's CPU time / wall time:")
    for tid, cpu in sorted(after.items()):
        used = (cpu - before.get(tid, 0.0)) / wall
        print(f"   thread {tid}{' (main)' if tid == main_thread else ''}: {used:.2f}")

    class Owner:                        # the runner's pool lives as long as its owner
        pass

    owner = Owner()
    runner = SplitRunner(owner, threads=2)
    one = lambda: scale_shift(x, y, 0, x.size)                         # noqa: E731
    two = lambda: runner.run(lambda lo, hi: scale_shift(x, y, lo, hi), x.size)  # noqa: E731
    two()
    print(f"2. one compiled pass over {x.size:,} floats, median of {args.repeats}, microseconds:")
    for after_product in (False, True):
        if not after_product:
            time.sleep(0.5)             # BLAS's threads stop spinning about 0.1 s after a product
        times = {}
        for name, run in (("one thread", one), ("split over two", two)):
            samples = []
            for _ in range(args.repeats):
                if after_product:
                    np.matmul(a, w, out=c)
                t0 = time.perf_counter()
                run()
                samples.append(time.perf_counter() - t0)
            times[name] = statistics.median(samples) * 1e6
        where = "right after a product" if after_product else "standing alone"
        print(f"   {where}: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
              + f" (split / one thread {times['split over two'] / times['one thread']:.2f})")


if __name__ == "__main__":
    main()
