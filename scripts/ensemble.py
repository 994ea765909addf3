#!/usr/bin/env python
"""Score an ensemble: the mean of several runs' class probabilities on one split.

    python scripts/ensemble.py RUN_A RUN_B RUN_C [--split test]

Each run is scored as ``eval`` scores it (its best checkpoint, its own normalisation, its own
flip averaging), each member's accuracy is printed, then the ensemble's. A stand-in until
``fmnist-mlp eval RUN_A RUN_B ...`` lands. The test split is the same for every seed (checked:
the members must agree on its labels); the validation split is drawn by seed, so an ensemble of
several seeds has no clean validation score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from fmnist_mlp.experiment import load_model, load_splits_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args()
    if args.split == "val" and len(args.runs) > 1:
        print("note: the validation split depends on each run's seed; members of different "
              "seeds were trained on each other's validation images", file=sys.stderr)
    total, labels = None, None
    for run in args.runs:
        scorer, config = load_model(run)
        data = getattr(load_splits_for(config), args.split)
        if labels is not None and not np.array_equal(labels, data.y):
            raise SystemExit(f"{run}: its {args.split} split differs from the first run's")
        labels = data.y
        probs = scorer.forward(data.x)                        # (N, 10)
        print(f"{run}: {np.mean(probs.argmax(1) == labels):.4f}")
        total = probs.astype(np.float64) if total is None else total + probs
    acc = float(np.mean(total.argmax(1) == labels))
    print(f"ensemble of {len(args.runs)} on {args.split}: {acc:.4f}")


if __name__ == "__main__":
    main()
