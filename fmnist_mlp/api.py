"""The Python front door: train a model, load one, predict and score, from a notebook.

    import fmnist_mlp
    run = fmnist_mlp.train("configs/fast.yaml", set={"train.epochs": 3})
    model = fmnist_mlp.load(run.run_dir)
    model.predict(images)                 # (N,) classes of raw 0..255 pixels, (N, 28, 28) or (N, 784)

:func:`train` does what ``fmnist-mlp train`` does (the same checks, the same errors, the same
run directory) and :func:`load` what ``eval`` and ``predict`` load: a run directory, a model
file (``.npz``, ``.safetensors``) or several of them as an ensemble. Errors are the package's
own (:mod:`fmnist_mlp.errors`): a bad key is a ``ConfigError`` naming it, as on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fmnist_mlp.data.facts import CLASS_NAMES, IMAGE_SHAPE, NUM_FEATURES
from fmnist_mlp.errors import ConfigError

PathLike = str | Path


@dataclass(frozen=True)
class Run:
    """A finished training run: its directory and its ``summary.json`` (test_acc, best_val_acc,
    best_epoch, wall_time, ...)."""

    run_dir: Path
    summary: dict[str, Any]

    def load(self, data_dir: PathLike | None = None) -> "Model":
        """The run's best checkpoint as a :class:`Model`."""
        return load(self.run_dir, data_dir=data_dir)


def train(config: PathLike | Mapping[str, Any], *,
          set: Mapping[str, Any] | Iterable[str] | None = None,    # noqa: A002 - the CLI's --set
          runs_dir: PathLike = "runs", name: str | None = None,
          data_dir: PathLike | None = None, progress: bool = True) -> Run:
    """Train one model as ``fmnist-mlp train`` does; returns the finished :class:`Run`.

    ``config``: a YAML file's path or a mapping (``{"model": {"hidden": [256]}, "seed": 1}``;
    every key is optional). ``set``: overrides, ``{"optimizer.lr": 3e-3}`` or ``--set``
    strings. ``name``: the run's name (default: the config file's stem, else "run").
    ``progress``: one line per epoch on stderr. Raises ConfigError before anything is written
    when the config is wrong; TrainingInterrupted (the run saved, with the command that
    resumes it) on Ctrl-C; TrainingDivergedError when the loss becomes NaN.
    """
    from fmnist_mlp.config.load import plan_from
    from fmnist_mlp.rundir.files import validate_run_name
    from fmnist_mlp.training.progress import ProgressReporter
    from fmnist_mlp.training.session import run_training

    (plan,) = plan_from(config, set if set is not None else ())
    name = validate_run_name(name or plan.name)
    reporter = [ProgressReporter(quiet=True)] if progress else []
    result = run_training(plan, name=name, runs_dir=runs_dir, data_dir=data_dir,
                          callbacks=reporter)
    return Run(result.run_dir, result.summary)


def load(path_or_paths: PathLike | Sequence[PathLike], *,
         data_dir: PathLike | None = None) -> "Model":
    """A trained model: a run directory (its best checkpoint), a ``.npz`` checkpoint or a
    ``.safetensors`` export; several give an ensemble (the mean of their probabilities), as
    ``eval`` and ``predict`` score them. Every file is checked before its arrays are read."""
    from fmnist_mlp.scoring.ensemble import load_members

    paths = ([path_or_paths] if isinstance(path_or_paths, (str, Path))
             else list(path_or_paths))
    if not paths:
        raise ConfigError("load: give a run directory or model file (or several)")
    return Model(paths, load_members(paths, data_dir), data_dir)


class Model:
    """One trained network or an ensemble, scoring raw pixels as ``predict`` and ``eval`` do:
    each member with its own input normalisation and test-time flips."""

    classes = CLASS_NAMES           # class index -> name

    def __init__(self, paths: Sequence[PathLike], members: Sequence[Any],
                 data_dir: PathLike | None = None) -> None:
        self.paths, self.members, self.data_dir = [Path(p) for p in paths], list(members), data_dir

    def __repr__(self) -> str:
        what = str(self.paths[0]) if len(self.paths) == 1 else f"ensemble of {len(self.paths)}"
        return f"<fmnist_mlp.Model {what}>"

    @property
    def config(self) -> dict[str, Any]:
        """The (first) run's resolved config, as a plain dict."""
        return self.members[0].config

    def predict_proba(self, x: Any) -> np.ndarray:
        """(N, 10) class probabilities (sigmoid or linear outputs for such runs) of raw pixels
        0..255: (N, 28, 28) or (N, 784), or one image as (28, 28) or (784,)."""
        from fmnist_mlp.scoring.ensemble import ensemble_outputs

        return ensemble_outputs(self.members, pixel_rows(x))

    def predict(self, x: Any) -> np.ndarray:
        """(N,) class indices (names: ``Model.classes``) of raw pixels, as :meth:`predict_proba`."""
        return self.predict_proba(x).argmax(axis=1)

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """``eval``'s report on a split of the run's data (test, val or train): loss, accuracy,
        per-class precision, recall and F1, macro-F1, calibration error, confusion matrix."""
        from fmnist_mlp.scoring.evaluate import evaluate

        return evaluate(self.paths, split=split, data_dir=self.data_dir)


def pixel_rows(x: Any) -> np.ndarray:
    """Raw pixels as (N, 784) float32 rows, values 0..255; refused in one line otherwise."""
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pixels: not an array of numbers ({exc})") from None
    if array.dtype.kind not in "uif":
        raise ConfigError(f"pixels: expected numbers 0..255, got an array of {array.dtype}")
    shape = array.shape
    if shape in (IMAGE_SHAPE, (NUM_FEATURES,)):
        array = array.reshape(1, NUM_FEATURES)
    elif array.ndim == 3 and shape[1:] == IMAGE_SHAPE or array.ndim == 2 and shape[1] == NUM_FEATURES:
        array = array.reshape(shape[0], NUM_FEATURES)
    else:
        raise ConfigError(f"pixels: shape {shape}; expected (N, 28, 28), (N, 784), (28, 28) or "
                          f"(784,) raw values 0..255")
    rows = array.astype(np.float32)
    if rows.size and not (np.isfinite(rows).all() and rows.min() >= 0 and rows.max() <= 255):
        raise ConfigError("pixels: values must be finite and within 0..255 (raw pixels, as "
                          "Fashion-MNIST stores them)")
    return rows
