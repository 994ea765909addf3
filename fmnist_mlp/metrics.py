"""Classification metrics: confusion matrix, per-class accuracy and a text table for the terminal.

Pure NumPy, no I/O: `eval` prints the table, `plots` draws the matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Count (true, predicted) label pairs.

    y_true, y_pred: (N,) integer labels in [0, num_classes).
    Returns cm: (num_classes, num_classes) int64 with cm[t, p] = #{i : y_true[i] = t, y_pred[i] = p};
    rows are true classes, columns predictions, so cm.sum(axis=1) is the class sizes.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix: y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"confusion_matrix: {name} must hold integer labels, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"confusion_matrix: {name} has labels outside [0, {num_classes}): "
                f"min {labels.min()}, max {labels.max()}"
            )
    # Each (t, p) pair becomes one flat index t*C + p; one bincount counts them all at once.
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class: the diagonal over the row sums.

    cm: (C, C) counts, rows true, columns predicted. Returns (C,) float64; a class with no
    samples (an empty row) gives nan rather than a division warning.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"per_class_accuracy: cm must be square (C, C), got shape {cm.shape}")
    class_sizes = cm.sum(axis=1).astype(np.float64)
    correct = np.diag(cm).astype(np.float64)
    accuracy = np.full(cm.shape[0], np.nan)
    np.divide(correct, class_sizes, out=accuracy, where=class_sizes > 0)
    return accuracy


def format_confusion_table(cm: np.ndarray, class_names: Sequence[str]) -> str:
    """Render cm as an aligned text table: one row per true class, one column per prediction,
    then the class size and that class's accuracy in percent ('-' for an empty class).

    cm: (C, C) counts; class_names: C names. Columns are headed by the class index so the table
    stays narrow; the row labels give index and full name.
    """
    cm = np.asarray(cm)
    num_classes = cm.shape[0]
    if cm.ndim != 2 or cm.shape[1] != num_classes:
        raise ValueError(f"format_confusion_table: cm must be square (C, C), got shape {cm.shape}")
    if len(class_names) != num_classes:
        raise ValueError(
            f"format_confusion_table: {len(class_names)} class names for a {num_classes}-class matrix"
        )
    accuracy = per_class_accuracy(cm)
    row_labels = [f"{i} {name}" for i, name in enumerate(class_names)]
    label_width = max(len("true \\ pred"), *(len(label) for label in row_labels))
    cell_width = max(len(str(num_classes - 1)), len(str(int(cm.max()) if cm.size else 0)))
    size_width = max(len("n"), len(str(int(cm.sum(axis=1).max()) if cm.size else 0)))

    header = "true \\ pred".ljust(label_width) + " " + " ".join(
        str(j).rjust(cell_width) for j in range(num_classes)
    )
    header += "  " + "n".rjust(size_width) + "  " + "acc %".rjust(6)
    lines = [header, "-" * len(header)]
    for i, label in enumerate(row_labels):
        cells = " ".join(str(int(v)).rjust(cell_width) for v in cm[i])
        acc = "-" if np.isnan(accuracy[i]) else f"{100 * accuracy[i]:.1f}"
        size = str(int(cm[i].sum())).rjust(size_width)
        lines.append(f"{label.ljust(label_width)} {cells}  {size}  {acc.rjust(6)}")
    total = int(cm.sum())
    overall = f"{100 * np.trace(cm) / total:.2f} %" if total else "-"
    lines.append("-" * len(header))
    lines.append(f"overall accuracy {overall} on {total} samples")
    return "\n".join(lines)


def most_confident_mistakes(y_true: np.ndarray, probs: np.ndarray, k: int = 25) -> np.ndarray:
    """Indices of the k misclassified examples the model was most sure of, most confident first.

    y_true: (N,) int labels; probs: (N, C) class scores (probabilities for softmax), the
    prediction being their argmax and the confidence its score. Returns (min(k, #wrong),) int64.
    Ties keep the lower index first (stable sort), so the choice is deterministic.
    """
    y_true = np.asarray(y_true).ravel()
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"most_confident_mistakes: probs must be (N, C) with N = {y_true.shape[0]}, got {probs.shape}"
        )
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = probs[wrong, y_pred[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order[: max(k, 0)]].astype(np.int64)
