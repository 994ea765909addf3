"""Several trained runs scored as one: the mean of their outputs (class probabilities).

Each member keeps its own input normalisation and its own test-time flip averaging, so a member
contributes exactly what ``eval`` scores for it alone. Members must share their output units
(averaging softmax probabilities with sigmoid scores means nothing) and, to be scored on the
validation or training split, the keys that choose those rows; the test split is the same
10,000 images for every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.rundir.trained import TrainedModel, load_trained


def load_members(targets: Sequence[str | Path], data_dir: str | Path | None = None
                 ) -> list[TrainedModel]:
    members = [load_trained(t, data_dir) for t in targets]
    output_kind(members)
    return members


def output_kind(members: Sequence[TrainedModel]) -> str:
    """The members' common output units (softmax, sigmoid or linear); a mix is a ConfigError."""
    kinds = {m.model.spec()["output"] for m in members}
    if len(kinds) != 1:
        raise ConfigError("an ensemble's runs must share model.output; got "
                          + ", ".join(f"{m.path}: {m.model.spec()['output']}" for m in members))
    return kinds.pop()


def check_same_rows(members: Sequence[TrainedModel], split: str) -> None:
    """Validation and training rows depend on the split seed and the row settings
    (:func:`fmnist_mlp.config.plan.row_kwargs`): the members must agree on them."""
    if split == "test" or len(members) < 2:
        return
    first = _row_settings(members[0].config)
    for other in members[1:]:
        theirs = _row_settings(other.config)
        for key, value in first.items():
            if theirs[key] != value:
                raise ConfigError(
                    f"--split {split}: the runs disagree on {key} ({members[0].path}: {value!r}, "
                    f"{other.path}: {theirs[key]!r}), so their {split} rows differ; score an "
                    f"ensemble of such runs on the test split")


def _row_settings(config: dict) -> dict[str, Any]:
    from fmnist_mlp.config.plan import row_kwargs

    kwargs = row_kwargs(config)
    return {"the split seed (data.split_seed, else seed)": kwargs.pop("seed"),
            **{f"data.{key}": value for key, value in kwargs.items()}}


def mean_outputs(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """(N, K) mean of the members' (N, K) outputs; one member's are returned unchanged."""
    if len(outputs) == 1:
        return outputs[0]
    total = np.array(outputs[0], dtype=np.result_type(*outputs))
    for out in outputs[1:]:
        total += out
    total /= len(outputs)
    return total


def ensemble_outputs(members: Sequence[TrainedModel], pixels: np.ndarray) -> np.ndarray:
    """(N, K) averaged outputs of raw pixel rows (N, 784), each member as ``eval`` scores it."""
    return mean_outputs([m.outputs(pixels) for m in members])


def logits_of_outputs(kind: str, outputs: np.ndarray) -> np.ndarray:
    """Scores whose output nonlinearity gives back ``outputs``: what an averaged model calls its
    logits. softmax: log p (softmax(log p) = p as rows sum to 1); sigmoid: log(p / (1 − p));
    linear: the outputs. Probabilities are clipped to the dtype's tiny so the logs stay finite."""
    tiny = np.finfo(outputs.dtype).tiny
    if kind == "softmax":
        return np.log(np.maximum(outputs, tiny))
    if kind == "sigmoid":
        return np.log(np.maximum(outputs, tiny)) - np.log(np.maximum(1 - outputs, tiny))
    return outputs.copy()


def evaluate_ensemble(targets: Sequence[str | Path], split: str = "test",
                      data_dir: str | Path | None = None) -> dict[str, Any]:
    """What ``eval`` reports for one run, for the mean of several runs' outputs."""
    from fmnist_mlp.config.plan import row_kwargs
    from fmnist_mlp.data import load_raw, split_rows
    from fmnist_mlp.scoring.metrics import evaluation_report
    from fmnist_mlp.nn.losses import loss_of_outputs, one_hot_targets

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split!r}: expected train, val or test")
    members = load_members(targets, data_dir)
    check_same_rows(members, split)
    raw = load_raw(data_dir)                    # once: the members differ in their rows' scaling
    images, labels = ((raw.test_images, raw.test_labels) if split == "test"
                      else (raw.train_images, raw.train_labels))
    if split == "test":                         # all 10,000 rows, in order: no split to draw
        rows = np.arange(labels.shape[0])
    else:                                       # one draw serves all: check_same_rows made sure
        train_rows, val_rows = split_rows(labels, **row_kwargs(members[0].config))
        rows = train_rows if split == "train" else val_rows
    pixels = images.reshape(labels.shape[0], -1)[rows]
    outputs = [member.outputs(pixels, member.config["train"]["eval_batch_size"])
               for member in members]
    y = labels[rows].astype(np.int64)
    averaged = mean_outputs(outputs)
    first = members[0].model.spec()   # the averaged outputs' loss: the first run's settings
    target = one_hot_targets(y, first["num_classes"], first["label_smoothing"], averaged.dtype)
    loss = float(loss_of_outputs(first["loss"], averaged, target).mean())
    accuracy = float(np.mean(averaged.argmax(axis=1) == y))
    return {"checkpoints": [str(m.path) for m in members], "split": split,
            **evaluation_report(y, averaged, output_kind(members), loss, accuracy)}
