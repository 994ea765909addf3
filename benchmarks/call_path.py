"""Follow `fmnist-mlp train --config X` from the CLI to the training loop: which modules it enters.

    python -m benchmarks.call_path [--config configs/fast.yaml] [--loop fmnist_mlp.training.loop]

Runs the command in-process on synthetic data (one epoch of a tiny net) with a profile hook and
prints, in order, each fmnist_mlp module the calls enter before the loop's `fit` is
called, and how often the path returns to a module it had already left (a reader going back to a
file they had closed). Run from a checkout's root; works on older checkouts with --loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def trace(argv: list[str], loop_module: str) -> tuple[list[str], int]:
    from fmnist_mlp.cli import main

    entered: list[str] = []
    returns = 0
    done = False
    last = None

    def hook(frame, event, arg):
        nonlocal returns, done, last
        if done or event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("fmnist_mlp"):
            return
        if module == loop_module and frame.f_code.co_name == "fit":
            done = True
        if module != last:
            if module in entered and module != entered[-1]:
                returns += 1
            if module not in entered:
                entered.append(module)
            last = module

    code = 0
    sys.setprofile(hook)
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.setprofile(None)
    if code != 0:
        raise SystemExit(f"train exited {code}")
    return entered, returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fast.yaml")
    parser.add_argument("--loop", default="fmnist_mlp.training.loop", help="module of the training loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        argv = ["train", "--config", args.config, "--runs-dir", runs, "-q",
                "--set", "train.epochs=1", "--set", "model.hidden=[8]", "--set", "data.subset=600"]
        entered, returns = trace(argv, args.loop)
    for name in entered:
        print(name)
    print(f"{len(entered)} modules entered before the loop; {returns} returns to a module already left")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
