#!/usr/bin/env python
"""Benchmark the engine against the identical PyTorch CPU loop and JAX: print tables, keep JSON.

    python -m benchmarks                    # the full grid on the real data (minutes; quiet machine)
    python -m benchmarks --quick            # smoke run: 3 cases, 1 epoch each
    python -m benchmarks --cases '784-1024-512-10_b128_*' --epochs 2 --threads 2

Run from the repository root (``make bench`` does), so that ``benchmarks`` and the working tree's
``fmnist_mlp`` are what gets imported.

Progress goes to stderr; the tables to stdout; the JSON to --out.
"""

from __future__ import annotations

import argparse
import sys

SKIPPABLE = ("inference", "products", "overhead", "cli", "cache", "rss")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, 1 epoch, fewer repeats (smoke run)")
    parser.add_argument("--cases", help="comma-separated globs over case names, e.g. '784-256-128-10_b128_*'")
    parser.add_argument("--epochs", type=int, help="timed epochs per case (default 3, --quick 1)")
    parser.add_argument("--threads", type=int, help="BLAS/torch threads (default: CPUs available)")
    parser.add_argument("--out", help="JSON path (default bench-results/bench-<timestamp>.json)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N random rows instead of the real data")
    parser.add_argument("--data-dir", help="dataset directory (default: the tool's data directory)")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX side")
    parser.add_argument("--kernels", choices=("auto", "numpy", "numba"), default="auto",
                        help="the engine's kernels (train.kernels; default auto: numba where installed)")
    parser.add_argument("--torch-optimizer-impl", choices=("default", "foreach", "fused"), default="default",
                        help="torch optimiser kernels (default: torch's own choice)")
    parser.add_argument("--skip", action="append", default=[], choices=SKIPPABLE,
                        help="leave out an extra section (repeatable)")
    parser.add_argument("--peak-size", type=int, default=2048, metavar="N",
                        help="N x N matmul for the peak (default 2048; smaller only for tests)")
    args = parser.parse_args(argv)
    for name in ("epochs", "threads", "synthetic", "peak_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Imported after parsing so that --help is instant.
    from benchmarks.run import default_output_path, format_report, run_benchmark, write_results
    from fmnist_mlp.errors import FmnistMlpError

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    try:
        results = run_benchmark(quick=args.quick, cases=args.cases, epochs=args.epochs, threads=args.threads,
                                use_torch=not args.no_torch, synthetic=args.synthetic, data_dir=args.data_dir,
                                skip=tuple(args.skip), peak_size=args.peak_size,
                                torch_optimizer_impl=args.torch_optimizer_impl,
                                use_jax=not args.no_jax, kernels=args.kernels, progress=progress)
    except (FmnistMlpError, ValueError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    print(format_report(results))
    path = write_results(results, args.out or default_output_path())
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
