"""Follow one piece of data from the command line down the package: where it goes, how often it
climbs back up and how often it returns to a module it had left.

    python -m benchmarks.call_path train        # train's config, from the CLI to the loop's fit
    python -m benchmarks.call_path sweep-run    # sweep run's directory, to its trial's loop

Runs the command in-process (one epoch of a tiny net on a 600-image subset of the cached data;
the sweep: a grid of one such trial) under a profile hook that follows data, not calls. The data
starts as the command's argument (the config file's path; the sweep directory's path), paths compared
by value; a call that takes a followed object as an argument (or inside a list, tuple or
``**kwargs``) is on the walk, and what such calls return is followed from then on, with its
fields, items and values two levels deep (what ``__init__`` makes, too, and what ``copy.deepcopy``
makes of a followed object: a copy is the same data, as ``Path(p)`` is). Numbers, strings, None
and arrays are not followed (their identities are shared or say nothing), nor dtypes and NumPy's
scalar types (NumPy interns them: every float32 array has the same one).

A *stay* is a run of consecutive calls on the walk in one module (a call on the walk made after
its caller got back control from another module is a stay of the caller first); a stay in a
module ranked higher than the one before *climbs back up* (ranks: the package map, cli at the
top); a stay in a module the walk had stayed in before is a *return*. ``-v`` prints each stay.
Run from a checkout's root.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path, PurePath
from types import FrameType
from typing import Any

LAYERS = (("fmnist_mlp.cli", "fmnist_mlp.__main__"),
          ("fmnist_mlp.api",),
          ("fmnist_mlp.sweep", "fmnist_mlp.export", "fmnist_mlp.predict", "fmnist_mlp.serve",
           "fmnist_mlp.plots"),
          ("fmnist_mlp.scoring",), ("fmnist_mlp.training", "fmnist_mlp.rundir"), ("fmnist_mlp.config",),
          ("fmnist_mlp.nn", "fmnist_mlp.data", "fmnist_mlp.optim"), ("fmnist_mlp.io",),
          ("fmnist_mlp.errors", "fmnist_mlp"))
SCALARS = (int, float, complex, str, bytes, bool, type(None))


def _numpy_owned(value: Any) -> bool:
    """An array, a dtype or a NumPy scalar type (``np.float32`` itself, which a kernel takes to
    name its dtype): NumPy's own, shared by every array of its kind, so it says nothing."""
    kind = value if isinstance(value, type) else type(value)
    return kind.__module__.partition(".")[0] == "numpy"


def layer(module: str) -> int:
    """0 for the CLI, growing downwards (the package map's order)."""
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return len(LAYERS)


class Walk:
    """The profile hook: which calls the data reaches, grouped into stays."""

    def __init__(self, seeds: list[Any], stop: tuple[str, str] | None) -> None:
        self.followed: dict[int, Any] = {}      # id -> object (kept alive, so ids stay unique)
        self.paths: set[str] = set()            # paths are followed by value
        for seed in seeds:
            self.follow(seed)
        self.stop, self.done = stop, False
        self.stack: list[FrameType] = []        # frames of calls on the walk (their returns follow)
        self.copies: list[FrameType] = []       # copy.deepcopy of followed data (its copy follows)
        self.stays: list[str] = []

    def stay(self, module: str) -> None:
        if not self.stays or self.stays[-1] != module:
            self.stays.append(module)

    def follow(self, value: Any, depth: int = 0) -> None:
        if isinstance(value, PurePath):         # by value: Path(p) is the same data as p
            self.paths.add(str(value))
        if isinstance(value, SCALARS) or depth > 2 or _numpy_owned(value):
            return
        if id(value) in self.followed:
            return
        self.followed[id(value)] = value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                self.follow(getattr(value, f.name, None), depth + 1)
        elif isinstance(value, (tuple, list)):
            for item in value:
                self.follow(item, depth + 1)
        elif isinstance(value, dict):
            for item in value.values():
                self.follow(item, depth + 1)

    def is_followed(self, value: Any) -> bool:
        if isinstance(value, PurePath):
            return str(value) in self.paths
        return id(value) in self.followed and not isinstance(value, SCALARS)

    def takes_followed(self, frame: FrameType) -> bool:
        code = frame.f_code
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount
                                 + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)]
        for name in names:
            value = frame.f_locals.get(name)
            if self.is_followed(value):
                return True
            if isinstance(value, (tuple, list)) and any(map(self.is_followed, value)):
                return True
            if isinstance(value, dict) and name in ("kwargs", "kw") and any(
                    map(self.is_followed, value.values())):
                return True
        return False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.done:
            return
        module = frame.f_globals.get("__name__", "")
        if event == "call" and module == "copy" and frame.f_code.co_name == "deepcopy" \
                and self.is_followed(frame.f_locals.get("x")):
            self.copies.append(frame)
            return
        if event == "return":
            if self.copies and self.copies[-1] is frame:
                self.copies.pop()
                self.follow(arg)
                return
            if self.stack and self.stack[-1] is frame:
                self.stack.pop()
                self.follow(arg)
                if frame.f_code.co_name == "__init__" and frame.f_code.co_argcount:
                    made = frame.f_locals.get(frame.f_code.co_varnames[0])
                    for value in getattr(made, "__dict__", {}).values():    # its fields, now set
                        self.follow(value, 1)
            return
        if event != "call" or not module.startswith("fmnist_mlp"):
            return
        if not self.takes_followed(frame):
            return
        if self.stack:              # back in the caller first (a return is a stay of its own)
            self.stay(self.stack[-1].f_globals["__name__"])
        self.stack.append(frame)
        self.stay(module)
        if frame.f_code.co_name == "__init__" and frame.f_code.co_argcount:
            self.follow(frame.f_locals.get(frame.f_code.co_varnames[0]))   # what it makes
        if self.stop and (module, frame.f_code.co_name) == self.stop:
            self.done = True


def summarise(stays: list[str]) -> dict[str, Any]:
    climbs = sum(layer(b) < layer(a) for a, b in zip(stays, stays[1:]))
    seen: set[str] = set()
    returns = 0
    for module in stays:
        returns += module in seen
        seen.add(module)
    entries = {m: stays.count(m) for m in dict.fromkeys(stays)}
    return {"stays": len(stays), "modules": len(seen), "climbs": climbs, "returns": returns,
            "entries": entries}


def run(argv: list[str], seeds: list[Any], stop: tuple[str, str] | None) -> list[str]:
    from fmnist_mlp.cli import main

    walk = Walk(seeds, stop)
    code = 0
    sys.setprofile(walk)
    try:
        main(argv)
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.setprofile(None)
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:2])} exited {code}")
    return walk.stays


TINY = ["--set", "train.epochs=1", "--set", "model.hidden=[8]", "--set", "data.subset=600"]


def walk_train(config: str, tmp: Path) -> list[str]:
    config_path = Path(config)
    argv = ["train", "--config", config_path, "--runs-dir", str(tmp), "-q", *TINY]
    return run(argv, [config_path], ("fmnist_mlp.training.loop", "fit"))


def walk_sweep_run(config: str, tmp: Path) -> list[str]:
    spec = tmp / "spec.yaml"
    spec.write_text(f"base: {Path(config).resolve()}\n"
                    "set: {train.epochs: 1, model.hidden: [8], data.subset: 600}\n"
                    "metric: best_val_acc\nmethod: grid\n"
                    "space:\n  optimizer.lr: {choice: [0.002]}\n", encoding="utf-8")
    sweep_dir = tmp / "sweep"
    return run(["sweep", "run", str(spec), "--dir", sweep_dir], [sweep_dir],
               ("fmnist_mlp.training.loop", "fit"))


WALKS = {"train": walk_train, "sweep-run": walk_sweep_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("walk", choices=sorted(WALKS), nargs="?", default="train")
    parser.add_argument("--config", default="configs/fast.yaml")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each stay")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stays = WALKS[args.walk](args.config, Path(tmp))
    s = summarise(stays)
    if args.verbose:
        for module in stays:
            print(f"{layer(module)}  {module}")
    busiest = ", ".join(f"{m.removeprefix('fmnist_mlp.')} {n}" for m, n in
                        sorted(s["entries"].items(), key=lambda kv: -kv[1])[:3])
    print(f"{args.walk}: {s['stays']} stays in {s['modules']} modules, climbs back up "
          f"{s['climbs']} times, returns to a module it had left {s['returns']} times "
          f"(most entered: {busiest})")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
