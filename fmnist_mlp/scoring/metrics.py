"""Classification metrics: confusion matrix, per-class accuracy and a text table for the terminal.

Pure NumPy, no I/O: `eval` prints the table, `plots` draws the matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fmnist_mlp.data.facts import NUM_CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
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


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision tp/(tp+fp), recall tp/(tp+fn) and F1 = 2pr/(p+r), each (C,) float64.

    cm: (C, C) counts, rows true, columns predicted, so tp is the diagonal, tp+fp the column sums
    and tp+fn the row sums. An undefined ratio (no predictions of a class, no samples of it, or
    p = r = 0) is 0.0, as most reports give it, so a macro average stays a number.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"precision_recall_f1: cm must be square (C, C), got shape {cm.shape}")
    tp = np.diag(cm)
    precision, recall, f1 = (np.zeros(cm.shape[0]) for _ in range(3))
    np.divide(tp, cm.sum(axis=0), out=precision, where=cm.sum(axis=0) > 0)
    np.divide(tp, cm.sum(axis=1), out=recall, where=cm.sum(axis=1) > 0)
    np.divide(2 * precision * recall, precision + recall, out=f1, where=precision + recall > 0)
    return precision, recall, f1


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray,
                               num_bins: int = 15) -> tuple[float, dict[str, np.ndarray]]:
    """ECE = Σ_b (n_b / N)·|accuracy_b − confidence_b| over equal-width confidence bins.

    probs: (N, C) class probabilities; the prediction is the argmax and its probability the
    confidence. Bin b holds confidences in (b/B, (b+1)/B] (the first bin includes 0), as in
    Guo et al. (2017). Returns (ece, bins) with bins' "count", "accuracy", "confidence" (B,)
    arrays (nan for an empty bin): what a reliability diagram draws.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true).ravel()
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(f"expected_calibration_error: probs must be (N, C) with N = "
                         f"{y_true.shape[0]}, got {probs.shape}")
    if num_bins < 1:
        raise ValueError(f"expected_calibration_error: num_bins must be >= 1, got {num_bins}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    # ceil(c·B) − 1 puts c = b/B into bin b−1 (right-closed bins); c = 0 goes to bin 0.
    index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    acc_sum = np.bincount(index, weights=correct, minlength=num_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=num_bins)
    accuracy, mean_conf = np.full(num_bins, np.nan), np.full(num_bins, np.nan)
    np.divide(acc_sum, count, out=accuracy, where=count > 0)
    np.divide(conf_sum, count, out=mean_conf, where=count > 0)
    n = max(1, y_true.shape[0])
    ece = float(np.abs(acc_sum - conf_sum).sum() / n)   # Σ n_b |acc_b − conf_b| / N
    return ece, {"count": count, "accuracy": accuracy, "confidence": mean_conf}


def classification_report(y_true: np.ndarray, outputs: np.ndarray, output: str = "softmax",
                          num_bins: int = 15) -> dict:
    """Per-class precision/recall/F1, macro-F1 and (for softmax probabilities) the ECE, as
    plain lists and floats. outputs: (N, C) network outputs, the prediction being their argmax."""
    outputs = np.asarray(outputs)
    cm = confusion_matrix(y_true, outputs.argmax(axis=1), num_classes=outputs.shape[1])
    precision, recall, f1 = precision_recall_f1(cm)
    report = {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
              "macro_f1": float(f1.mean()), "ece": None, "ece_bins": num_bins}
    if output == "softmax":      # only softmax outputs are probabilities to calibrate
        report["ece"] = expected_calibration_error(outputs, y_true, num_bins)[0]
    return report


def evaluation_report(y_true: np.ndarray, outputs: np.ndarray, output: str, loss: float,
                      accuracy: float) -> dict:
    """What ``eval`` reports of one split, from the scored outputs (N, C) and the loss and
    accuracy computed beside them: those two plus per-class accuracy, the confusion matrix and
    :func:`classification_report`."""
    cm = confusion_matrix(y_true, np.asarray(outputs).argmax(axis=1), num_classes=outputs.shape[1])
    return {"loss": float(loss), "accuracy": float(accuracy), "num_samples": int(len(y_true)),
            "per_class_accuracy": [float(a) for a in per_class_accuracy(cm)],
            "confusion_matrix": cm.tolist(), **classification_report(y_true, outputs, output)}


def format_classification_report(report: dict, class_names: Sequence[str]) -> str:
    """Per-class precision, recall and F1 as an aligned text table, macro averages last."""
    width = max(len("macro avg"), *(len(n) for n in class_names))
    lines = [f"{'':<{width}}  precision  recall      f1"]
    for name, p, r, f in zip(class_names, report["precision"], report["recall"], report["f1"]):
        lines.append(f"{name:<{width}}  {p:9.4f}  {r:6.4f}  {f:6.4f}")
    macro_p, macro_r = float(np.mean(report["precision"])), float(np.mean(report["recall"]))
    lines.append(f"{'macro avg':<{width}}  {macro_p:9.4f}  {macro_r:6.4f}  {report['macro_f1']:6.4f}")
    return "\n".join(lines)


def format_evaluation(result: dict, class_names: Sequence[str]) -> str:
    """``eval``'s text report of the dict :func:`fmnist_mlp.scoring.evaluate.evaluate` (one run or an
    ensemble's evaluation, which names ``checkpoints``) returns."""
    if "checkpoints" in result:
        lines = [f"ensemble of {len(result['checkpoints'])}: " + ", ".join(result["checkpoints"])]
    else:
        lines = [f"checkpoint: {result['checkpoint']}"]
    lines += [f"split: {result['split']} ({result['num_samples']} images)",
              f"loss: {result['loss']:.4f}", f"accuracy: {result['accuracy']:.4f}",
              f"macro-F1: {result['macro_f1']:.4f}"]
    if result["ece"] is not None:
        lines.append(f"expected calibration error: {result['ece']:.4f} ({result['ece_bins']} bins)")
    lines += ["", "per-class accuracy (= recall), precision and F1:",
              format_classification_report(result, class_names),
              "", "confusion matrix (rows: true, columns: predicted):",
              format_confusion_table(np.array(result["confusion_matrix"]), class_names)]
    return "\n".join(lines)
