"""``fmnist-mlp eval``: one trained run, or several averaged as an ensemble, scored in one path.

Each member scores the split's raw pixels with its own input normalisation and test-time flips,
exactly as it would alone; several members' outputs (class probabilities for softmax) are
averaged. One member's loss is its own ``evaluate`` (from the logits, as training reported it);
an ensemble's is the loss of the averaged outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.rundir.trained import TrainedModel
from fmnist_mlp.scoring.ensemble import check_same_rows, load_members, mean_outputs, output_kind

SPLITS = ("train", "val", "test")


def evaluate(targets: Sequence[str | Path], split: str = "test",
             data_dir: str | Path | None = None) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy, precision, recall, F1, macro-F1, expected calibration
    error and confusion matrix of one saved model, or of the mean of several, on one split."""
    from fmnist_mlp.scoring.metrics import evaluation_report

    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: expected train, val or test")
    members = load_members(targets, data_dir)
    check_same_rows(members, split)
    pixels, y = split_pixels(members[0], split, data_dir)
    if len(members) == 1:
        (member,) = members
        loss, accuracy, outputs = _scores_of_one(member, pixels, y)
        where: dict[str, Any] = {"checkpoint": str(member.path)}
    else:
        loss, accuracy, outputs = _scores_of_ensemble(members, pixels, y)
        where = {"checkpoints": [str(m.path) for m in members]}
    return {**where, "split": split,
            **evaluation_report(y, outputs, output_kind(members), loss, accuracy)}


def split_pixels(member: TrainedModel, split: str,
                 data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 784) raw pixel rows and (N,) labels of a run's split, in make_splits' order."""
    from fmnist_mlp.config.plan import row_kwargs
    from fmnist_mlp.data import load_raw, split_rows

    raw = load_raw(data_dir)
    if split == "test":                         # all 10,000 rows, in order: no split to draw
        images, labels = raw.test_images, raw.test_labels
        rows = np.arange(labels.shape[0])
    else:                                       # one draw serves all: check_same_rows made sure
        images, labels = raw.train_images, raw.train_labels
        train_rows, val_rows = split_rows(labels, **row_kwargs(member.cfg))
        rows = train_rows if split == "train" else val_rows
    return images.reshape(labels.shape[0], -1)[rows], labels[rows].astype(np.int64)


def _scores_of_one(member: TrainedModel, pixels: np.ndarray, y: np.ndarray):
    """(loss, accuracy, outputs): two passes, the loss from the logits (as training reported
    it) and the outputs every other figure is read from."""
    batch_size = member.cfg.train.eval_batch_size
    x = member.inputs(pixels)
    loss, accuracy = member.scorer.evaluate(x, y, batch_size=batch_size)
    return loss, accuracy, member.scorer.forward(x, batch_size)


def _scores_of_ensemble(members: Sequence[TrainedModel], pixels: np.ndarray, y: np.ndarray):
    """(loss, accuracy, outputs) of the members' averaged outputs; the loss with the first
    run's settings (loss and label smoothing)."""
    from fmnist_mlp.nn.losses import loss_of_outputs, one_hot_targets

    averaged = mean_outputs([m.outputs(pixels, m.cfg.train.eval_batch_size) for m in members])
    first = members[0].model.spec()
    target = one_hot_targets(y, first["num_classes"], first["label_smoothing"], averaged.dtype)
    loss = float(loss_of_outputs(first["loss"], averaged, target).mean())
    accuracy = float(np.mean(averaged.argmax(axis=1) == y))
    return loss, accuracy, averaged
