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


LAYERS = (("fmnist_mlp.cli", "fmnist_mlp.__main__"),
          ("fmnist_mlp.sweep", "fmnist_mlp.export", "fmnist_mlp.predict", "fmnist_mlp.plots"),
          ("fmnist_mlp.scoring",), ("fmnist_mlp.training", "fmnist_mlp.rundir"), ("fmnist_mlp.config",),
          ("fmnist_mlp.nn", "fmnist_mlp.data", "fmnist_mlp.optim"), ("fmnist_mlp.io",), ("fmnist_mlp.errors",))
MOVED = {"augment": "data.augment", "build": "config.plan", "checkpoint_check": "rundir.checkpoint_check",
         "config": "config.schema", "config_validate": "config.validate", "distill": "training.distill",
         "ensemble": "scoring.ensemble", "experiment": "training.session", "memory": "nn.memory",
         "metrics": "scoring.metrics", "optim": "nn.optim", "progress": "training.progress",
         "recorder": "rundir.recorder", "rng": "nn.rng", "run_guard": "rundir.guard", "runs": "rundir.files",
         "runs_table": "rundir.table", "safe_io": "io.files", "safe_yaml": "io.yaml_file",
         "schedules": "nn.schedules", "tensorboard": "training.tensorboard", "terminal": "io.printable",
         "train": "training.loop", "trained": "rundir.trained", "data.lock": "io.lock"}


def layer(module: str, flat: bool) -> int:
    """0 for the CLI, growing downwards; ``flat``: a module name from before the move."""
    if flat:
        short = module.removeprefix("fmnist_mlp.")
        module = "fmnist_mlp." + MOVED.get(short, short)
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return len(LAYERS)


def trace(argv: list[str], loop_module: str) -> tuple[list[str], int]:
    """The modules entered before ``loop_module.fit``, and the calls that climb a layer."""
    from fmnist_mlp.cli import main

    flat = loop_module == "fmnist_mlp.train"
    entered: list[str] = []
    climbs = 0
    done = False

    def hook(frame, event, arg):
        nonlocal climbs, done
        if done or event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("fmnist_mlp"):
            return
        if module == loop_module and frame.f_code.co_name == "fit":
            done = True
        if module not in entered:
            entered.append(module)
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if caller.startswith("fmnist_mlp") and layer(module, flat) < layer(caller, flat):
            climbs += 1
            if os.environ.get("CALL_PATH_VERBOSE"):
                print(f"climb: {caller} -> {module}.{frame.f_code.co_name}", file=sys.stderr)

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
    return entered, climbs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fast.yaml")
    parser.add_argument("--loop", default="fmnist_mlp.training.loop",
                        help="module of the training loop (fmnist_mlp.train before the move)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        argv = ["train", "--config", args.config, "--runs-dir", runs, "-q",
                "--set", "train.epochs=1", "--set", "model.hidden=[8]", "--set", "data.subset=600"]
        entered, climbs = trace(argv, args.loop)
    for name in entered:
        print(name)
    print(f"{len(entered)} modules entered before the loop; {climbs} calls climb back to a higher layer")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
