"""A run directory's file names and the format of its own name: spelled here and nowhere else.

    <runs_dir>/<YYYYmmdd-HHMMSS>-<name>-<6 hex>/
        config.yaml     the resolved config (every key), written once before training
        summary.json    status, best and final metrics, wall time, versions; rewritten atomically
        metrics.jsonl   one JSON line per epoch, appended
        train.log       timestamped human-readable lines, appended
        .lock           held (flock) by the one process training the run
        checkpoints/    last.npz (the latest saved epoch), best.npz (best validation accuracy)
        plots/          PNGs from ``fmnist-mlp plot`` (or train.plots)
        events.out.tfevents.*   TensorBoard event files (train.tensorboard), in the run itself
        model.onnx, model.safetensors   ``fmnist-mlp export``'s default outputs
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LOG = "train.log"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
LAST = f"{CHECKPOINTS}/last.npz"          # relative to the run directory
BEST = f"{CHECKPOINTS}/best.npz"
PLOTS = "plots"
TENSORBOARD_PREFIX = "events.out.tfevents."
EXPORT_NAMES = {"onnx": "model.onnx", "safetensors": "model.safetensors"}

RUN_FILES = (CONFIG, SUMMARY, METRICS, LOG)      # regular files a run writes at its top level
RUN_DIRS = (CHECKPOINTS, PLOTS)                  # the folders it makes
BOOKKEEPING = frozenset({*RUN_FILES, LOCK})      # what a run holds before its first checkpoint
MODEL_FILES = (BEST, LAST)                       # what eval, predict and export load, in order

# <YYYYmmdd>-<HHMMSS>-<name>-<6 hex>: the name may itself contain dashes.
STAMP_FORMAT = "%Y%m%d-%H%M%S"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,79}$")   # a run name (see files.validate_run_name)


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / LAST


def best_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / BEST


def run_dir_name(stamp: str, name: str, token: str) -> str:
    """The directory name of a run: its start time, its name and a random hex token."""
    return f"{stamp}-{name}-{token}"


def run_name_of(run_dir: str | Path) -> str:
    """The run name back from a directory :func:`run_dir_name` made; any other name as is."""
    dirname = Path(run_dir).name
    parts = dirname.split("-")
    return "-".join(parts[2:-1]) if len(parts) >= 4 else dirname
