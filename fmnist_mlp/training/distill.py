"""Knowledge distillation's soft targets (Hinton, Vinyals & Dean 2015): what a student learns from.

:func:`distill_targets` loads the teachers and makes a run's targets; the arithmetic under it is
pure functions (:func:`soften`, :func:`mean_softened`, :func:`mix_targets`).

A student learns from ``target = (1 − w)·labels + w·teachers``: ``labels`` the (smoothed) one-hot
rows, ``teachers`` the mean over teachers of each one's probabilities softened by a temperature
T. Softening p with T is softmax(log p / T), which for a single network equals softmax(logits / T);
working from probabilities lets a flip-averaged teacher be softened the same way.

The teachers score the student's training images either once, before training, on the images as
stored (:func:`mix_targets` of the fixed probabilities), or on every batch as the student sees it,
after its flips, shifts and mixup (:class:`ConsistentTeachers`: "function matching", Beyer et al.,
"Knowledge distillation: A good teacher is patient and consistent", CVPR 2022). Teachers that
memorised their training images give near-one-hot probabilities on them; on a shifted, mirrored
or mixed view they have to say what they think, which is what a student can learn from. The
other remedy is cross-fitting: each teacher leaves a part of the training rows out
(``data.fold``) and only the teachers that never saw an image score it (``unseen`` below).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fmnist_mlp.errors import CheckpointError, ConfigError


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(N, K) probabilities -> softmax(log p / T), row-wise; T > 1 flattens, T = 1 keeps p."""
    tiny = np.finfo(probs.dtype).tiny                 # log(0) guard for an underflowed class
    scaled = np.log(np.maximum(probs, tiny)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)       # the usual shift: exp() stays finite
    out = np.exp(scaled)
    out /= out.sum(axis=1, keepdims=True)
    return out


def mean_softened(teacher_probs: list[np.ndarray], temperature: float,
                  unseen: list[np.ndarray] | None = None) -> np.ndarray:
    """The teachers' softened probabilities averaged: (N, K) from a list of (N, K).

    ``unseen`` (one (N,) bool mask per teacher: rows it did not train on) makes each row the mean
    of only the teachers that never saw it, where there is one; rows every teacher trained on take
    the mean of all. Cross-fitted teachers (``data.fold``) so give each image a judgement of it
    as a new image, not a memory of its label.
    """
    if not teacher_probs:
        raise ValueError("distillation needs at least one teacher")
    n = teacher_probs[0].shape[0]
    if unseen is None:
        weights = np.ones((len(teacher_probs), n))
    else:
        if len(unseen) != len(teacher_probs):
            raise ValueError("one unseen-rows mask per teacher")
        weights = np.array(unseen, dtype=np.float64).reshape(len(teacher_probs), n)
        weights[:, weights.sum(axis=0) == 0] = 1.0   # seen by all: every teacher counts
    total = np.zeros_like(teacher_probs[0], dtype=np.float64)
    for probs, weight in zip(teacher_probs, weights):
        total += weight[:, None] * soften(probs.astype(np.float64), temperature)
    return total / weights.sum(axis=0)[:, None]


def mix_targets(labels: np.ndarray, teachers: np.ndarray, weight: float, dtype) -> np.ndarray:
    """(1 − weight)·labels + weight·teachers, both (N, K) with rows summing to one."""
    if labels.shape != teachers.shape:
        raise ValueError(f"labels {labels.shape} and teacher targets {teachers.shape} differ in shape")
    return ((1.0 - weight) * labels + weight * teachers).astype(dtype)


class ConsistentTeachers:
    """Soft targets for a batch the student is about to learn from, scored on that very batch.

    ``teachers`` are models with ``forward(x) -> (N, K)`` probabilities in evaluation mode;
    ``input_maps`` gives each one's (scale, shift) from the student's normalised inputs to its own
    (x·scale + shift: both standardise the same raw pixels, perhaps with other means and stds).
    Calling it with the batch x (B, D) and its label targets (B, K) returns
    ``(1 − weight)·labels + weight·mean_softened(teachers(x), temperature)`` in x's dtype.
    Each call costs one forward pass per teacher.
    """

    def __init__(self, teachers: Sequence[Any], input_maps: Sequence[tuple[float, float]],
                 weight: float, temperature: float) -> None:
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        if len(input_maps) != len(teachers):
            raise ValueError("one (scale, shift) input map per teacher")
        self.teachers, self.input_maps = list(teachers), list(input_maps)
        self.weight, self.temperature = weight, temperature

    def __call__(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        probs = []
        for teacher, (scale, shift) in zip(self.teachers, self.input_maps):
            seen = x if (scale, shift) == (1.0, 0.0) else x * scale + shift
            probs.append(teacher.forward(seen.astype(teacher.dtype, copy=False)))
        return mix_targets(labels, mean_softened(probs, self.temperature), self.weight, x.dtype)


def distill_targets(spec: Any, splits, data_dir: str | Path | None = None):
    """What the student learns from, as ``(targets, teacher)`` for the loop's ``LoopData``.

    ``spec`` is the plan's distillation spec (:class:`fmnist_mlp.config.plan.DistillSpec`: the
    teachers, weight, temperature, consistent, the student's label smoothing, output units and
    rows). Teachers scored once (the default): ``targets`` (N_train, K), the (smoothed) one-hot
    labels mixed with the teachers' averaged, temperature-softened probabilities, each
    teacher scoring the images as ``eval`` would (its flip averaging too); ``teacher`` None.
    ``distill.consistent``: ``targets`` None and ``teacher`` a :class:`ConsistentTeachers` that
    scores every batch as the student sees it.

    Each teacher is its best checkpoint. Its inputs are the student's, re-normalised with the
    teacher's own mean and std (from its checkpoint's metadata;
    :func:`fmnist_mlp.rundir.trained.load_trained` recomputes them only for checkpoints older
    than that metadata).
    """
    from fmnist_mlp.nn.losses import one_hot_targets
    from fmnist_mlp.rundir.trained import load_trained

    d = spec
    teachers = [load_trained(run, data_dir) for run in d.teachers]
    # x·std + mean is x/255 again; a teacher normalises that with its own mean and std.
    input_maps = [(splits.std / t.std, (splits.mean - t.mean) / t.std) for t in teachers]
    check_teachers_fit(d.teachers, [t.model for t in teachers], splits.train.x[:1])
    check_teacher_outputs(d.teachers, [t.model for t in teachers], d.output)
    if d.consistent:
        folded = [str(run) for run, t in zip(d.teachers, teachers) if t.cfg.data.fold is not None]
        if folded:
            raise ConfigError(f"distill.consistent: scores every batch with all teachers, which "
                              f"cross-fitted ones (data.fold) cannot: {', '.join(folded)}")
        return None, ConsistentTeachers([t.model for t in teachers], input_maps, d.weight,
                                        d.temperature)
    probs = []
    for teacher, (scale, shift) in zip(teachers, input_maps):
        x = (splits.train.x * scale + shift).astype(teacher.model.dtype, copy=False)
        probs.append(teacher.scorer.forward(x))
    labels = one_hot_targets(splits.train.y, probs[0].shape[1], d.label_smoothing, np.float64)
    unseen = unseen_rows(d.rows, [t.rows for t in teachers], data_dir)
    return mix_targets(labels, mean_softened(probs, d.temperature, unseen), d.weight,
                       splits.train.x.dtype), None


def unseen_rows(student_rows: Mapping[str, Any], teacher_rows: Sequence[Mapping[str, Any]],
                data_dir) -> list[np.ndarray]:
    """Per teacher, which of the student's training rows it did not train on: (N_train,) bools.
    Rows are redrawn from each run's row settings (``split_rows``' arguments), as
    ``make_splits`` drew them."""
    from fmnist_mlp.data import load_raw, split_rows

    labels = load_raw(data_dir, progress=False).train_labels
    student, _ = split_rows(labels, **student_rows)
    return [~np.isin(student, split_rows(labels, **rows)[0], assume_unique=True)
            for rows in teacher_rows]


def check_teachers_fit(runs_given, models, x: np.ndarray) -> None:
    """Each teacher must take the student's images and score its classes: one line if not."""
    from fmnist_mlp.data.facts import NUM_CLASSES

    for run, model in zip(runs_given, models):
        try:
            out = model.forward(x.astype(model.dtype))
        except ValueError as exc:
            raise CheckpointError(f"distill.teachers: {run}: cannot score the student's images "
                                  f"({exc})") from None
        if out.shape[1] != NUM_CLASSES:
            raise CheckpointError(f"distill.teachers: {run}: scores {out.shape[1]} classes, "
                                  f"not the dataset's {NUM_CLASSES}")


def check_teacher_outputs(runs_given, models, student_output: str) -> None:
    """Teachers' outputs are mixed into the student's targets as probabilities of its own output
    units, so they must share them (as an ensemble's runs must): a sigmoid teacher's scores are
    not a softmax student's distribution. ConfigError (exit 2) naming the teacher if not."""
    for run, model in zip(runs_given, models):
        output = model.spec()["output"]
        if output != student_output:
            raise ConfigError(f"distill.teachers: {run}: model.output is {output}, the student's "
                              f"is {student_output}; a teacher must share the student's output "
                              f"units (as an ensemble's runs must)")
