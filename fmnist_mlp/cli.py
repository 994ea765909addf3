"""The ``fmnist-mlp`` command line: thin click glue over the package.

Each command parses its options, calls one function and prints; package errors become one line on
stderr and an exit code in :func:`main`. Heavy modules (numpy, tqdm, requests) are imported inside
the commands so that ``fmnist-mlp --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    other errors (data, checkpoint, I/O)
  2    usage or config error (nothing is created on disk)
  3    training diverged (NaN/inf loss): the run is marked failed
  130  interrupted (Ctrl-C / SIGTERM): the run is saved and can be resumed
  141  stdout was closed early (e.g. piped into head): nothing more is printed
"""

_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Dataset cache directory (default: $FMNIST_MLP_DATA_DIR, else "
         "$XDG_CACHE_HOME/fmnist-mlp, else ~/.cache/fmnist-mlp).")
_json_option = click.option("--json", "as_json", is_flag=True,
                            help="Print one JSON object on stdout and nothing else there.")


class _StdoutClosed(Exception):
    """Raised instead of BrokenPipeError, which click would turn into a silent exit 1."""


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise _StdoutClosed from None


@click.group(cls=_Group, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fmnist-mlp", prog_name="fmnist-mlp")
def cli() -> None:
    """Train multi-layer perceptrons on Fashion-MNIST with hand-written NumPy backprop."""


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Experiment YAML (see configs/). Every key is optional.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config key with a YAML value, e.g. --set optimizer.lr=0.01 "
                   "--set model.hidden=[512,256]. Repeatable.")
@click.option("--name", help="Run name (default: the config file's stem).")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where run directories are created.")
@_data_dir_option
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Continue an interrupted run in its own directory (with its own config).")
@click.option("--quiet", "-q", is_flag=True, help="One plain line per epoch instead of progress bars.")
@click.option("--tensorboard", is_flag=True,
              help="Write TensorBoard event files into the run directory (same as "
                   "--set train.tensorboard=true; needs pip install -e '.[tensorboard]').")
@_json_option
def train(config_path, overrides, name, runs_dir, data_dir, resume_dir, quiet, tensorboard,
          as_json):
    """Train one model; prints the run directory (or, with --json, the summary) on stdout.

    The run directory runs/<timestamp>-<name>-<id>/ gets the resolved config.yaml, metrics.jsonl,
    summary.json, train.log and checkpoints/{last,best}.npz.
    """
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.rundir.files import validate_run_name
    from fmnist_mlp.training.progress import ProgressReporter
    from fmnist_mlp.training.session import run_training

    if resume_dir is not None and (config_path or overrides or name):
        raise click.UsageError("--resume continues a run with its own config; "
                               "do not combine it with --config, --set or --name")
    if resume_dir is not None and tensorboard:
        raise click.UsageError("--resume uses the run's own config: --tensorboard applies to new "
                               "runs (train.tensorboard in the config)")
    if resume_dir is None and config_path is None and not overrides:
        raise click.UsageError("give --config FILE (e.g. configs/default.yaml) or --resume RUN_DIR")
    if tensorboard:
        overrides = (*overrides, "train.tensorboard=true")
    cfg = None                      # read and checked once, here; a resumed run reads its own
    if resume_dir is None:
        cfg = load_config(config_path, overrides)
        name = validate_run_name(name or _name_from(config_path))
    reporter = ProgressReporter(quiet=quiet)      # learns the epochs from the loop's settings
    try:
        with _sigterm_as_interrupt():
            result = run_training(cfg, name=name, runs_dir=runs_dir, data_dir=data_dir,
                                  resume=resume_dir, callbacks=[reporter],
                                  on_run_dir=lambda d: reporter.message(f"run directory: {d}"))
    finally:
        reporter.close()            # an interrupted epoch's bar must not swallow the error line
    s = result.summary
    if result.config.train.plots:
        _write_plots(result.run_dir, data_dir, reporter)
    reporter.message(f"finished: best val acc {s['best_val_acc']:.4f} (epoch {s['best_epoch']}), "
                     f"test acc {s['test_acc']:.4f}, {s['wall_time']:.1f}s"
                     + (f"; {s['message']}" if s.get("message") else ""))
    click.echo(_json_dumps(s) if as_json else str(result.run_dir))


def _json_dumps(obj) -> str:
    """Strict JSON: NaN and infinities (a diverged loss, an empty class) become null."""
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), allow_nan=False)


@cli.command("eval", epilog=EXIT_CODES_HELP)
@click.argument("targets", metavar="RUN_DIR_OR_MODEL...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="Which split of the run's data to score.")
@_data_dir_option
@_json_option
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
        click.echo(_json_dumps({**result, "class_names": list(CLASS_NAMES)}))
    else:
        click.echo(format_evaluation(result, CLASS_NAMES))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("model", metavar="RUN_DIR_OR_MODEL", type=click.Path(path_type=Path))
@click.argument("images", metavar="IMAGE_OR_DIR...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--model", "-m", "more_models", multiple=True, type=click.Path(path_type=Path),
              metavar="RUN_DIR_OR_MODEL",
              help="Another run to average with the first (an ensemble). Repeatable.")
@click.option("--top", "top_k", default=3, show_default=True, type=click.IntRange(1, 10),
              help="How many classes to show per image.")
@click.option("--save-preprocessed", "save_dir", type=click.Path(file_okay=False, path_type=str),
              help="Write the 28x28 images the network saw into this directory (as PNG).")
@_data_dir_option
@_json_option
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

    require_pillow()
    members = load_members([model, *more_models], data_dir)
    result = predict_files(members, images, save_dir)
    for line in error_lines(result):                 # names made printable
        click.echo(line, err=True)
    if as_json:
        click.echo(_json_dumps(predictions_json(result, members, top_k, CLASS_NAMES)))
    elif result.files:
        click.echo(as_text(result, top_k, CLASS_NAMES))
    if result.failures:
        raise SystemExit(1)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("targets", metavar="RUN_DIR_OR_MODEL...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "safetensors"]), required=True,
              help="onnx: a graph from raw pixels to probabilities; safetensors: the weights.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=str),  # as typed ("out/")
              help="Where to write (default: model.onnx / model.safetensors in the run "
                   "directory, or beside the model file). An existing file is not overwritten.")
@_data_dir_option
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
    from fmnist_mlp.io.printable import printable

    click.echo(printable(export_models(targets, fmt, output, data_dir)))   # names: escapes shown


@cli.command("runs")
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
def runs_command(runs_dir, sort_key, reverse, as_json, as_csv):
    """One row per run: name, the hyperparameters that differ between runs, best validation
    accuracy, test accuracy, epochs, wall time and status.

    Status is finished, running, interrupted, failed or pruned (stopped early by a sweep's
    pruner); "stale" marks a run still flagged running whose process on this host is gone
    (killed): continue it with train --resume RUN_DIR.
    """
    from fmnist_mlp.rundir.table import collect_runs, format_csv, format_text, sort_rows

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    rows, _ = collect_runs(runs_dir)
    rows = sort_rows(rows, sort_key, reverse)
    if as_json:
        click.echo(_json_dumps(rows))
    elif as_csv:
        click.echo(format_csv(rows))
    else:
        click.echo(format_text(rows) if rows else f"no runs in {runs_dir}")


@cli.command()
@_data_dir_option
@click.option("--source", "sources", multiple=True, metavar="URL_OR_DIR",
              help="Where to fetch the four files from (repeatable; default: Debian's "
                   "dataset folder if present, then the web mirrors).")
@click.option("--force", is_flag=True, help="Fetch again even if a verified copy is cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def download(data_dir, sources, force, quiet):
    """Fetch and verify the Fashion-MNIST files into the cache; prints the directory."""
    from fmnist_mlp.data import ensure_dataset

    path = ensure_dataset(data_dir, sources=list(sources) or None, force=force, progress=not quiet)
    click.echo(str(path))


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Experiment YAML whose architecture is checked (default: the defaults).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config key with a YAML value, as in train. Repeatable.")
@click.option("--samples", default=4, show_default=True, type=click.IntRange(1, 64),
              help="How many inputs to check on.")
@click.option("--real", is_flag=True, help="Use real training images instead of random inputs.")
@_data_dir_option
@click.option("--tolerance", default=1e-5, show_default=True, type=float,
              help="Largest acceptable relative error.")
@click.option("--max-entries", default=50, show_default=True, type=click.IntRange(1),
              help="Entries checked per parameter array (a random sample for larger ones).")
def gradcheck(config_path, overrides, samples, real, data_dir, tolerance, max_entries):
    """Compare backprop with central differences in float64 for the config's architecture.

    Prints the max relative error per parameter and exits 1 if any exceeds the tolerance.
    """
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.gradcheck import run_gradcheck

    errors = run_gradcheck(load_config(config_path, overrides), samples=samples, real=real,
                           data_dir=data_dir, max_entries=max_entries)
    for name, err in errors.items():
        click.echo(f"{name:<12} {err:.3e}")
    worst = max(errors.values())
    passed = worst <= tolerance     # False for a NaN error or a NaN tolerance: never "ok"
    verdict = "ok" if passed else "FAILED"
    click.echo(f"max relative error {worst:.3e} ({verdict}, tolerance {tolerance:g})")
    if not passed:
        raise SystemExit(1)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_data_dir_option
def plot(run_dir, data_dir):
    """Learning curves, confusion matrix, first-layer weights, confident mistakes and a
    reliability diagram (softmax outputs) as PNGs in RUN_DIR/plots/ (needs matplotlib:
    pip install -e '.[plot]')."""
    from fmnist_mlp.plots import plot_run

    for path in plot_run(run_dir, data_dir=data_dir):
        click.echo(str(path))


@cli.group()
def sweep() -> None:
    """Hyperparameter sweeps with Optuna (random, TPE or grid search, pruning), on this machine
    or as a Slurm job array; resumable. Needs: pip install -e '.[sweep]'."""


@sweep.command("run", epilog=EXIT_CODES_HELP)
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dir", "sweep_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The sweep directory: study, run directories, report. Run again to continue.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1),
              help="Workers on this machine (BLAS threads are split between them).")
@click.option("--storage", metavar="URL",
              help="Any Optuna storage URL (default: DIR/study.journal, a journal file).")
@click.option("--slurm", is_flag=True, help="Submit one Slurm job array of --workers workers.")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1),
              help="With --slurm: how many workers the job array runs (also the number of "
                   "lines of --slurm --dry-run).")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
              help="Extra sbatch argument, e.g. --sbatch-arg=--time=2:00:00 (repeatable).")
@click.option("--wait", is_flag=True, help="With --slurm: block until the array ends.")
@click.option("--dry-run", is_flag=True,
              help="Print one worker command per line (for GNU parallel) and exit.")
@click.option("--trials", type=click.IntRange(1), default=None,
              help="The budget, overriding the spec's trials: above a sweep's budget, extends it "
                   "(the rest of the spec must match).")
@_data_dir_option
def sweep_run(spec_file, sweep_dir, jobs, storage, slurm, workers, sbatch_args, wait, dry_run,
              trials, data_dir):
    """Run (or continue) the sweep described by SPEC in DIR; see sweeps/example.yaml.

    Finished and pruned trials are kept; an interrupted trial resumes from its checkpoint; a
    sweep whose budget is spent exits 0 at once. Many machines: docs/many-machines.md.
    """
    from fmnist_mlp.sweep import launch

    if (wait or sbatch_args) and not slurm:
        raise click.UsageError("--wait and --sbatch-arg go with --slurm")
    if not slurm and (click.get_current_context().get_parameter_source("workers")
                      is not click.core.ParameterSource.DEFAULT):
        raise click.UsageError("--workers goes with --slurm (on this machine, --jobs sets how "
                               "many workers)")
    raise SystemExit(launch.run_sweep(
        spec_file, sweep_dir, jobs=jobs, storage=storage, slurm=slurm, workers=workers,
        sbatch_args=sbatch_args, wait=wait, dry_run=dry_run, data_dir=data_dir, trials=trials,
        echo=click.echo, note=lambda m: click.echo(m, err=True)))


@sweep.command("status")
@click.argument("sweep_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@_json_option
def sweep_status(sweep_dir, as_json):
    """Every trial (state, parameters, best val acc, epochs, run dir), the best so far and the
    budget left. A trial whose worker is gone shows as interrupted until it is resumed."""
    from fmnist_mlp.sweep.status import format_status
    from fmnist_mlp.sweep.status import sweep_status as status_of
    from fmnist_mlp.sweep.study import open_sweep

    status = status_of(open_sweep(sweep_dir, read_only=True))
    click.echo(_json_dumps(status) if as_json else format_status(status))


@sweep.command("report")
@click.argument("sweep_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--top", default=10, show_default=True, type=click.IntRange(1),
              help="How many trials the table shows.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write best.yaml and the PNGs here instead of DIR (a sweep you may only read).")
def sweep_report(sweep_dir, top, out):
    """Write DIR/best.yaml (the base config with the best trial's parameters, for train
    --config) and PNGs in DIR/report/; print the top trials. Needs matplotlib. The study is
    only read."""
    from fmnist_mlp.sweep.report import write_report
    from fmnist_mlp.sweep.study import open_sweep

    table, paths = write_report(open_sweep(sweep_dir, read_only=True), top=top, out=out)
    click.echo(table)
    for path in paths:
        click.echo(str(path))


def _name_from(config_path: Path | None) -> str:
    """The config file's stem, made safe for a directory name ("my exp.yaml" -> "my-exp")."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._+=-]+", "-", config_path.stem).strip("-.") if config_path else ""
    return stem[:80] or "run"


def _write_plots(run_dir: Path, data_dir: Path | None, reporter) -> None:
    """``train.plots: true``: write the plots; a missing matplotlib is a warning, not a failure
    (the trained run is fine, and ``fmnist-mlp plot`` can draw them later)."""
    from fmnist_mlp.errors import FmnistMlpError

    try:
        from fmnist_mlp.plots import plot_run

        paths = plot_run(run_dir, data_dir=data_dir)
    except FmnistMlpError as exc:
        reporter.message(f"warning: plots skipped: {exc}")
        return
    reporter.message(f"plots: {', '.join(str(p) for p in paths)}")


class _sigterm_as_interrupt:
    """SIGTERM (Slurm pre-emption, ``kill``) is handled like Ctrl-C: save, mark, exit 130."""

    def __enter__(self):
        import signal
        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return self

    def __exit__(self, *exc_info):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point: package errors become one line on stderr and their exit code."""
    from fmnist_mlp.errors import FmnistMlpError
    from fmnist_mlp.io.printable import printable

    # SIGTERM is Ctrl-C for every command (exit 130, "interrupted"), as the exit-code table says;
    # train also saves its run first (_sigterm_as_interrupt keeps this handler in place).
    sigterm = _sigterm_as_interrupt().__enter__()
    try:
        code = cli.main(args=argv, prog_name="fmnist-mlp", standalone_mode=False)
    except (BrokenPipeError, _StdoutClosed):
        code = _stdout_closed()
    except click.ClickException as exc:          # usage errors: exit 2
        exc.show()
        code = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = _interrupted()
    except FmnistMlpError as exc:
        # printable: paths and names in messages come from the user's files and must not
        # send escape sequences to the terminal.
        text = printable(exc, keep_newlines=True)
        click.echo(f"error: {text}" if exc.exit_code != 130 else text, err=True)
        code = exc.exit_code
    except OSError as exc:
        click.echo(f"error: {printable(exc)}", err=True)
        code = 1
    except MemoryError:                 # anywhere not estimated beforehand: one line, not a traceback
        click.echo("error: out of memory (use smaller layers or batches, fewer files, or a "
                   "machine with more memory)", err=True)
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _stdout_closed()
    except KeyboardInterrupt:           # SIGTERM while stdout's reader is not reading
        code = _interrupted()
    sigterm.__exit__(None, None, None)  # (main may be called in-process, e.g. by tests)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> int:
    """Ctrl-C or SIGTERM: say so and exit 130. Output not yet written is dropped, so that a
    stdout nobody reads cannot keep an interrupted process alive."""
    import os

    try:
        click.echo("interrupted", err=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, KeyboardInterrupt):
        pass
    return 130


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``, ``| true``): stop quietly, as a process killed
    by SIGPIPE would, and keep Python from complaining about the unflushed buffer at exit."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141
