"""Commands on trained models: ``eval``, ``predict``, ``export``, ``runs``, ``plot``."""

from __future__ import annotations

from pathlib import Path

import click

from fmnist_mlp.io.terminal import emit, show
from fmnist_mlp.cli.common import MODEL_EXIT_CODES_HELP, data_dir_option, json_dumps, json_option


@click.command("eval", epilog=MODEL_EXIT_CODES_HELP)
@click.argument("targets", metavar="RUN_DIR_OR_MODEL...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="Which split of the run's data to score.")
@data_dir_option
@json_option
def eval_command(targets, split, data_dir, as_json):
    """Loss, accuracy, per-class accuracy, precision, recall and F1, macro-F1, calibration error
    (ECE) and confusion matrix of a trained model.

    A run directory uses checkpoints/best.npz (else last.npz); a .npz or .safetensors file is
    used as given. Several runs are scored as an ensemble: the mean of their probabilities, each
    run with its own normalisation and test-time flips (val/train need runs that share seed,
    data.val_size, data.split and data.subset).
    """
    from fmnist_mlp.data.facts import CLASS_NAMES
    from fmnist_mlp.scoring.evaluate import evaluate
    from fmnist_mlp.scoring.metrics import format_evaluation

    result = evaluate(targets, split=split, data_dir=data_dir)
    if as_json:
        emit(json_dumps({**result, "class_names": list(CLASS_NAMES)}))
    else:
        show(format_evaluation(result, CLASS_NAMES), err=False)


@click.command(epilog=MODEL_EXIT_CODES_HELP)
@click.argument("model", metavar="RUN_DIR_OR_MODEL", type=click.Path(path_type=Path))
@click.argument("images", metavar="IMAGE_OR_DIR...", nargs=-1, required=True,
                type=click.Path(path_type=str))   # as typed: Path("") would be the current folder
@click.option("--model", "-m", "more_models", multiple=True, type=click.Path(path_type=Path),
              metavar="RUN_DIR_OR_MODEL",
              help="Another run to average with the first (an ensemble). Repeatable.")
@click.option("--top", "top_k", default=3, show_default=True, type=click.IntRange(1, 10),
              help="How many classes to show per image.")
@click.option("--save-preprocessed", "save_dir", type=click.Path(file_okay=False, path_type=str),
              help="Write the 28x28 images the network saw into this directory (as PNG).")
@data_dir_option
@json_option
def predict(model, images, more_models, top_k, save_dir, data_dir, as_json):
    """Classify image files (PNG, JPEG, BMP, GIF, WebP, TIFF) with a trained model.

    The first argument is the model (run directory, .npz or .safetensors); every further argument
    is an image file or a directory of them (sorted, not recursive). Photos are made to look like
    Fashion-MNIST: upright, grayscale, inverted when the background is light, cropped to the
    object, longest side 28 pixels, centred on black. A file that cannot be read is reported on
    stderr, the rest are still predicted, and the exit code is 1. Needs Pillow
    (pip install -e '.[image]').
    """
    from fmnist_mlp.data import CLASS_NAMES
    from fmnist_mlp.scoring.ensemble import load_members
    from fmnist_mlp.predict.images import require_pillow
    from fmnist_mlp.predict.run import as_json as predictions_json
    from fmnist_mlp.predict.run import as_text, error_lines, predict_files

    if "" in images:
        raise click.UsageError("an image argument is empty: give a file or a folder")
    require_pillow()
    members = load_members([model, *more_models], data_dir)
    result = predict_files(members, [Path(image) for image in images], save_dir)
    for line in error_lines(result):
        show(line)
    if as_json:
        emit(json_dumps(predictions_json(result, members, top_k, CLASS_NAMES)))
    elif result.files:
        show(as_text(result, top_k, CLASS_NAMES), err=False)
    if result.failures:
        raise SystemExit(1)


@click.command(epilog=MODEL_EXIT_CODES_HELP)
@click.argument("targets", metavar="RUN_DIR_OR_MODEL...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "safetensors"]), required=True,
              help="onnx: a graph from raw pixels to probabilities; safetensors: the weights.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str),  # as typed ("out/")
              help="Where to write (default: model.onnx / model.safetensors in the run "
                   "directory, or beside the model file). An existing file is not overwritten.")
@data_dir_option
def export(targets, fmt, output, data_dir):
    """Write a trained model as ONNX or safetensors; prints the file written.

    ONNX (opset 17, IR version 8): input "pixels" float32 (N, 784) raw values 0..255, outputs
    "logits" and "probabilities" (N, 10): what eval scores, normalisation and test-time flips
    included. Several runs give one graph averaging their probabilities ("logits" is then the log
    of the average). safetensors: parameters and batch-norm statistics, with config, class names
    and normalisation as metadata; eval, predict and export accept it as a model. Needs the
    export extra (pip install -e '.[export]').
    """
    from fmnist_mlp.export.write import export_models

    show(export_models(targets, fmt, output, data_dir), err=False)   # names: escapes shown


@click.command("runs", epilog=MODEL_EXIT_CODES_HELP)
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="The directory whose runs are listed.")
@click.option("--sort", "sort_key", metavar="KEY",
              help="Sort by a column (e.g. best_val_acc, test_acc, optimizer.lr, wall_time); "
                   "accuracies sort best first.")
@click.option("--reverse", is_flag=True, help="Reverse the sort order.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the rows as one JSON array (one object per run) on stdout and nothing "
                   "else there.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--group-seeds", is_flag=True,
              help="One row per recipe: finished runs that differ only in their seed (e.g. "
                   "train --seeds), with their count and the mean and std of their accuracies.")
def runs_command(runs_dir, sort_key, reverse, as_json, as_csv, group_seeds):
    """One row per run: name, the hyperparameters that differ between runs, best validation
    accuracy, test accuracy, epochs, wall time and status.

    Status is finished, running, interrupted, failed or pruned (stopped early by a sweep's
    pruner); "stale" marks a run still flagged running whose process on this host is gone
    (killed): continue it with train --resume RUN_DIR.
    """
    from fmnist_mlp.rundir.table import collect_runs, format_csv, format_text, sort_rows
    from fmnist_mlp.rundir.table import group_seeds as grouped

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    rows, differing = collect_runs(runs_dir)
    if group_seeds:
        rows = grouped(rows, differing)
    rows = sort_rows(rows, sort_key, reverse)
    if as_json:
        emit(json_dumps(rows))
    elif as_csv:
        show(format_csv(rows), err=False)
    else:
        show(format_text(rows) if rows else f"no runs in {runs_dir}", err=False)


@click.command(epilog=MODEL_EXIT_CODES_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@data_dir_option
def plot(run_dir, data_dir):
    """Learning curves, confusion matrix, first-layer weights, confident mistakes and a
    reliability diagram (softmax outputs) as PNGs in RUN_DIR/plots/ (needs matplotlib:
    pip install -e '.[plot]')."""
    from fmnist_mlp.plots import plot_run

    for path in plot_run(run_dir, data_dir=data_dir):
        show(path, err=False)
