"""Pictures of a run: learning curves, confusion matrix, first-layer weights, confident mistakes
and (for softmax outputs) a reliability diagram.

Each ``plot_*`` function takes arrays and a path, writes one PNG atomically and returns the path.
:func:`plot_run` gathers the arrays from a run directory and writes them into ``<run>/plots/``.

matplotlib is an optional extra, imported only inside these functions. We draw on a bare
``matplotlib.figure.Figure`` rendered by the Agg canvas instead of going through pyplot: that
needs no display, keeps no global registry of open figures, and leaves the process-wide backend
and rcParams exactly as the caller had them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fmnist_mlp.data.facts import CLASS_NAMES, IMAGE_SIDE
from fmnist_mlp.errors import CheckpointError, FmnistMlpError, require_extra
from fmnist_mlp.scoring.metrics import (
    confusion_matrix,
    expected_calibration_error,
    most_confident_mistakes,
    per_class_accuracy,
)

DPI = 100
MAX_WEIGHT_MAPS = 100      # beyond ~100 maps each one gets too small to read
MAX_MISTAKES = 25          # a 5x5 grid of misclassified test images
LEARNING_CURVES_SIZE = (12.0, 4.5)   # inches; two panels side by side
CONFUSION_SIZE = (8.5, 8.0)
RELIABILITY_SIZE = (6.0, 6.0)
RELIABILITY_BINS = 15      # the bins eval's expected calibration error uses
GRID_CELL_INCHES = 1.3     # per map in the weight and mistake grids
GRID_TITLE_INCHES = 0.8    # room above a grid for its title
GRID_MIN_WIDTH_INCHES = 5.5   # so a grid of a few maps still has room for its two-line title


def require_matplotlib() -> None:
    """Raise the one-line install hint when the optional plotting extra is missing.

    Public so that training with ``train.plots: true`` can fail before it starts, not after.
    """
    home = os.environ.get("HOME")
    if home is not None and (not os.path.isabs(home) or home.rstrip("/") == "") \
            and "MPLCONFIGDIR" not in os.environ:
        # HOME="": matplotlib would put its config and font cache under / (or the current folder).
        # A private folder for this process, removed when it exits (one per plot would pile up).
        import atexit
        import shutil
        import tempfile

        os.environ["MPLCONFIGDIR"] = config_dir = tempfile.mkdtemp(prefix="fmnist-mlp-matplotlib-")
        atexit.register(shutil.rmtree, config_dir, ignore_errors=True)
    require_extra("matplotlib", "plot", feature="plotting")


def _new_figure(figsize: tuple[float, float]):
    """A headless Figure of exactly figsize inches at DPI (no pyplot, no global state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Write fig as PNG atomically (:func:`fmnist_mlp.io.files.atomic_write`), so a reader never
    sees half a file and a planted link at the PNG's name is replaced, not followed. A
    :class:`~fmnist_mlp.io.files.DirEntry` is written through its open directory: a folder
    swapped for a link after it was checked is never written through."""
    from fmnist_mlp.io.files import DirEntry, atomic_write

    def draw(out):
        fig.savefig(out, format="png", dpi=DPI, facecolor="white")

    if isinstance(path, DirEntry):
        return path.write(draw, fsync=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, draw, fsync=False)


def _grid_shape(count: int, max_cols: int = 10) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding count cells, at most max_cols wide."""
    cols = min(max_cols, max(1, math.ceil(math.sqrt(count))))
    return math.ceil(count / cols), cols


def _grid_figure(rows: int, cols: int):
    """A figure of rows x cols image cells plus a title band; returns (fig, axes (rows, cols))."""
    height = rows * GRID_CELL_INCHES + GRID_TITLE_INCHES
    fig = _new_figure((max(cols * GRID_CELL_INCHES, GRID_MIN_WIDTH_INCHES), height))
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - GRID_TITLE_INCHES / height,
                        wspace=0.08, hspace=0.35)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def plot_learning_curves(metrics: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Loss (left) and accuracy (right) per epoch, training against validation.

    metrics: one dict per epoch as in metrics.jsonl ("epoch", "train_loss", "train_acc",
    "val_loss", "val_acc"); a missing or null value leaves a gap. The best validation epoch is marked.
    """
    if not metrics:
        raise FmnistMlpError("no epochs to plot: the metrics list is empty")
    # A hand-edited metrics.jsonl may hold anything: what is not a finite number is a gap.
    epochs = np.array([_number(m.get("epoch"), i + 1) for i, m in enumerate(metrics)], dtype=float)

    def series(key):
        return np.array([_number(m.get(key), np.nan) for m in metrics], dtype=float)

    fig = _new_figure(LEARNING_CURVES_SIZE)
    from matplotlib.ticker import MaxNLocator  # safe: _new_figure has checked matplotlib is there
    loss_ax, acc_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88, wspace=0.22)
    for ax, what, scale in ((loss_ax, "loss", 1.0), (acc_ax, "acc", 100.0)):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = series(f"{split}_{what}") * scale
            if np.isfinite(values).any():
                label = "training" if split == "train" else "validation"
                ax.plot(epochs, values, style, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("Accuracy")
    val_acc = series("val_acc")
    if np.isfinite(val_acc).any():
        best = int(np.nanargmax(val_acc))
        acc_ax.axvline(epochs[best], color="grey", linestyle=":", linewidth=1)
        acc_ax.annotate(f"best val {100 * val_acc[best]:.2f} % (epoch {epochs[best]:g})",
                        xy=(0.98, 0.04), xycoords="axes fraction", ha="right", fontsize=9)
    for ax in (loss_ax, acc_ax):
        if ax.lines:
            ax.legend(loc="best", fontsize=9)
    fig.suptitle(f"Learning curves over {len(metrics)} epochs")
    return _save(fig, path)


def _number(value, default: float) -> float:
    """``value`` as a finite float, else ``default`` (strings, lists, booleans, NaN, 1e999)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    value = float(value)
    return value if math.isfinite(value) else default


def plot_confusion_matrix(cm: np.ndarray, path: str | os.PathLike,
                          class_names: Sequence[str] = CLASS_NAMES, title: str = "Confusion matrix") -> Path:
    """The (C, C) confusion matrix (rows true, columns predicted) annotated with its counts.

    Cells are coloured by the fraction of their true class (row-normalised), so a rare class's
    errors are as visible as a common one's; the counts are written in each cell.
    """
    cm = np.asarray(cm)
    num_classes = cm.shape[0]
    if cm.shape != (num_classes, num_classes) or len(class_names) != num_classes:
        raise ValueError(f"plot_confusion_matrix: cm {cm.shape} does not match "
                         f"{len(class_names)} class names")
    row_sums = cm.sum(axis=1, keepdims=True)
    fractions = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)

    fig = _new_figure(CONFUSION_SIZE)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.19, right=0.99, bottom=0.17, top=0.94)
    ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    for t in range(num_classes):
        for p in range(num_classes):
            # Dark cells get white text so every count stays readable.
            color = "white" if fractions[t, p] > 0.5 else "black"
            ax.text(p, t, str(int(cm[t, p])), ha="center", va="center", fontsize=8, color=color)
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=[f"{name} ({100 * a:.0f} %)" if np.isfinite(a) else name
                                 for name, a in zip(class_names, per_class_accuracy(cm))])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (per-class accuracy)")
    total = int(cm.sum())
    accuracy = f"{100 * np.trace(cm) / total:.2f} %" if total else "n/a"
    ax.set_title(f"{title}: accuracy {accuracy} on {total} images")
    return _save(fig, path)


def plot_first_layer_weights(W: np.ndarray, path: str | os.PathLike,
                             class_names: Sequence[str] | None = None,
                             max_units: int = MAX_WEIGHT_MAPS) -> Path:
    """Each first-layer unit's 784 incoming weights as a 28x28 map, in a grid.

    W: (784, H). Colour is the sign (red positive, blue negative, white zero) and intensity the
    size, each map scaled to its own max |w| so weak units stay visible. With class_names (the
    no-hidden-layer model, H = C) the maps are the class templates, titled by class.
    Only the first max_units maps are drawn; the title says so.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != IMAGE_SIDE * IMAGE_SIDE:
        raise ValueError(f"plot_first_layer_weights: W must be (784, H), got shape {W.shape}")
    units = W.shape[1]
    shown = min(units, max_units)
    if class_names is not None and len(class_names) != units:
        raise ValueError(f"plot_first_layer_weights: {len(class_names)} class names for {units} maps")

    # Ten class templates read best as two rows of five; hidden units as a near-square grid.
    rows, cols = (math.ceil(shown / 5), min(shown, 5)) if class_names is not None else _grid_shape(shown)
    fig, axes = _grid_figure(rows, cols)
    for unit, ax in zip(range(shown), axes.flat):
        weights = W[:, unit].reshape(IMAGE_SIDE, IMAGE_SIDE)
        limit = float(np.abs(weights).max()) or 1.0   # symmetric limits keep 0 at white
        ax.imshow(weights, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(class_names[unit] if class_names is not None else f"unit {unit}", fontsize=8)
    if class_names is not None:
        title = f"Class templates: weights of the {units} output units"
    elif shown < units:
        title = f"First-layer weights: first {shown} of {units} units"
    else:
        title = f"First-layer weights of all {units} units" if units > 1 else "First-layer weights"
    fig.suptitle(f"{title}\nred = positive, blue = negative; each map scaled to its own max |w|",
                 fontsize=10)
    return _save(fig, path)


def plot_confident_mistakes(images: np.ndarray, y_true: np.ndarray, probs: np.ndarray,
                            path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES,
                            max_images: int = MAX_MISTAKES, score_name: str = "probability") -> Path:
    """The misclassified images the model was most sure of, titled 'true → pred (p)'.

    images: (N, 784) or (N, 28, 28) in any affine scaling (each is shown with its own grey range);
    y_true: (N,) int; probs: (N, C) class probabilities (or other scores: say which in score_name).
    Draws a note instead if nothing is wrong.
    """
    images = np.asarray(images).reshape(len(images), IMAGE_SIDE, IMAGE_SIDE)
    probs = np.asarray(probs)
    chosen = most_confident_mistakes(y_true, probs, max_images)
    if chosen.size == 0:
        fig = _new_figure((6.0, 2.0))
        fig.text(0.5, 0.5, f"No mistakes among {len(images)} images", ha="center", va="center",
                 fontsize=14)
        return _save(fig, path)

    rows, cols = _grid_shape(chosen.size, max_cols=5)
    fig, axes = _grid_figure(rows, cols)
    predicted = probs[chosen].argmax(axis=1)
    for ax, index, pred in zip(axes.flat, chosen, predicted):
        ax.imshow(images[index], cmap="gray", interpolation="nearest")
        ax.set_title(f"{class_names[int(y_true[index])]} →\n{class_names[int(pred)]} "
                     f"({probs[index, pred]:.2f})", fontsize=7)
    wrong = int((probs.argmax(axis=1) != np.asarray(y_true)).sum())
    fig.suptitle(f"Most confident mistakes: {chosen.size} of {wrong} wrong out of {len(images)}\n"
                 f"true → predicted ({score_name})", fontsize=10)
    return _save(fig, path)


def plot_reliability_diagram(probs: np.ndarray, y_true: np.ndarray, path: str | os.PathLike,
                             num_bins: int = RELIABILITY_BINS) -> Path:
    """Accuracy against confidence in equal-width bins, with the diagonal a calibrated model
    would follow; bars are bin accuracies, the gap to the diagonal is shaded, ECE in the title.

    probs: (N, C) class probabilities (softmax outputs); y_true: (N,) labels.
    """
    ece, bins = expected_calibration_error(probs, y_true, num_bins)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / num_bins
    filled = bins["count"] > 0
    fig = _new_figure(RELIABILITY_SIZE)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.92)
    ax.bar(centres[filled], bins["accuracy"][filled], width=width, edgecolor="black",
           color="tab:blue", label="accuracy")
    gap_low = np.minimum(bins["accuracy"], bins["confidence"])[filled]
    gap = np.abs(bins["accuracy"] - bins["confidence"])[filled]
    ax.bar(centres[filled], gap, bottom=gap_low, width=width, color="tab:red", alpha=0.35,
           hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram: ECE {ece:.4f} ({num_bins} bins, {len(y_true)} images)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write every picture of a run into <run_dir>/plots/ and return the PNG paths.

    Uses the run's metrics.jsonl, its best checkpoint (falling back to last) and the exact test
    split it was trained with. The test set is only looked at here, after training.
    """
    require_matplotlib()
    # Imported here: they pull in the data and config layers, which a caller of the pure
    # plotting functions above does not need.
    from fmnist_mlp.config.plan import load_splits
    from fmnist_mlp.rundir import layout
    from fmnist_mlp.rundir.files import read_metrics
    from fmnist_mlp.rundir.trained import load_trained

    run_dir = Path(run_dir)
    if not run_dir.is_dir():   # a checkpoint file has no plots/ folder to write into
        raise CheckpointError(f"{run_dir}: not a run directory")
    from fmnist_mlp.io.files import OpenDir

    metrics = read_metrics(run_dir)
    trained = load_trained(run_dir, data_dir)
    model = trained.model
    test = load_splits(trained.cfg, data_dir=data_dir).test
    probs = trained.scorer.forward(test.x)   # (N, C), batched inside the model, as eval scores
    # Only softmax outputs are probabilities; sigmoid/linear outputs are labelled as scores.
    score_name = "probability" if model.spec().get("output", "softmax") == "softmax" else "score"
    cm = confusion_matrix(test.y, probs.argmax(axis=1), num_classes=probs.shape[1])
    weights = model.params["layer0.W"]
    single_layer = sum(key.endswith(".W") for key in model.params) == 1
    with OpenDir(run_dir, layout.PLOTS) as plots_dir:  # opened once; a link there is refused
        return _plot_all(plots_dir, metrics, cm, weights, single_layer, test, probs, score_name)


def _plot_all(plots_dir, metrics, cm, weights, single_layer, test, probs, score_name) -> list[Path]:
    written = []
    if metrics:
        written.append(plot_learning_curves(metrics, plots_dir / "learning_curves.png"))
    written.append(plot_confusion_matrix(cm, plots_dir / "confusion_matrix.png",
                                         title="Test-set confusion matrix"))
    written.append(plot_first_layer_weights(weights, plots_dir / "first_layer_weights.png",
                                            class_names=CLASS_NAMES if single_layer else None))
    written.append(plot_confident_mistakes(test.x, test.y, probs, plots_dir / "confident_mistakes.png",
                                           score_name=score_name))
    if score_name == "probability":     # calibration is a property of probabilities only
        written.append(plot_reliability_diagram(probs, test.y,
                                                plots_dir / "reliability_diagram.png"))
    return written
