"""Commands that make a model or check the engine: ``train``, ``gradcheck``, ``download``."""

from __future__ import annotations

from pathlib import Path

import click

from fmnist_mlp.io.printable import printable
from fmnist_mlp.cli.common import (
    EXIT_CODES_HELP,
    data_dir_option,
    json_dumps,
    json_option,
    sigterm_as_interrupt,
)


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Experiment YAML (see configs/). Every key is optional.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config key with a YAML value, e.g. --set optimizer.lr=0.01 "
                   "--set model.hidden=[512,256]. Repeatable.")
@click.option("--name", help="Run name (default: the config file's stem).")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where run directories are created.")
@data_dir_option
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Continue an interrupted run in its own directory (with its own config).")
@click.option("--quiet", "-q", is_flag=True, help="One plain line per epoch instead of progress bars.")
@click.option("--verbose", "-v", is_flag=True,
              help="Also say which kernels ran (numpy or numba; train.kernels in the config).")
@click.option("--tensorboard", is_flag=True,
              help="Write TensorBoard event files into the run directory (same as "
                   "--set train.tensorboard=true; needs pip install -e '.[tensorboard]').")
@json_option
def train(config_path, overrides, name, runs_dir, data_dir, resume_dir, quiet, verbose,
          tensorboard, as_json):
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
        with sigterm_as_interrupt():
            result = run_training(cfg, name=name, runs_dir=runs_dir, data_dir=data_dir,
                                  resume=resume_dir, callbacks=[reporter],
                                  on_run_dir=lambda d: reporter.message(f"run directory: {d}"))
    finally:
        reporter.close()            # an interrupted epoch's bar must not swallow the error line
    s = result.summary
    if verbose or s.get("kernels_before_resume"):
        reporter.message(_kernels_line(s))
    if result.config.train.plots:
        _write_plots(result.run_dir, data_dir, reporter)
    reporter.message(f"finished: best val acc {s['best_val_acc']:.4f} (epoch {s['best_epoch']}), "
                     f"test acc {s['test_acc']:.4f}, {s['wall_time']:.1f}s"
                     + (f"; {s['message']}" if s.get("message") else ""))
    click.echo(json_dumps(s) if as_json else str(result.run_dir))   # exact: scripts read it


@click.command()
@data_dir_option
@click.option("--source", "sources", multiple=True, metavar="URL_OR_DIR",
              help="Where to fetch the four files from (repeatable; default: Debian's "
                   "dataset folder if present, then the web mirrors).")
@click.option("--force", is_flag=True, help="Fetch again even if a verified copy is cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def download(data_dir, sources, force, quiet):
    """Fetch and verify the Fashion-MNIST files into the cache; prints the directory."""
    from fmnist_mlp.data import ensure_dataset

    path = ensure_dataset(data_dir, sources=list(sources) or None, force=force, progress=not quiet)
    click.echo(printable(path))


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Experiment YAML whose architecture is checked (default: the defaults).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config key with a YAML value, as in train. Repeatable.")
@click.option("--samples", default=4, show_default=True, type=click.IntRange(1, 64),
              help="How many inputs to check on.")
@click.option("--real", is_flag=True, help="Use real training images instead of random inputs.")
@data_dir_option
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


def _kernels_line(summary) -> str:
    """"kernels: layers numba, optimizer numba" (and what ran before a resume, if different)."""
    def show(kernels) -> str:
        return ", ".join(f"{part} {kind}" for part, kind in kernels.items())

    line = f"kernels: {show(summary['kernels'])}"
    if summary.get("kernels_before_resume"):
        line += (f" (before the resume: {show(summary['kernels_before_resume'])}; the run "
                 f"continued, not bit for bit)")
    return line


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
