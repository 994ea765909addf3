"""Commands that make a model or check the engine: ``train``, ``gradcheck``, ``download``,
and ``test-images`` (a few test images as PNG, to try ``predict`` on)."""

from __future__ import annotations

from pathlib import Path

import click

from fmnist_mlp.io.printable import printable
from fmnist_mlp.io.terminal import emit, show
from fmnist_mlp.cli.common import (
    EXIT_CODES_HELP,
    MODEL_EXIT_CODES_HELP,
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
@click.option("--dry-run", is_flag=True,
              help="Print the resolved config (YAML and --set), the model's size, the memory "
                   "estimate and the steps it would take; train nothing, write nothing.")
@click.option("--seeds", metavar="N,N,...",
              help="Train one run per seed (e.g. --seeds 0,1,2; each run named NAME-seedN) and "
                   "print each test accuracy and their mean ± std.")
@json_option
def train(config_path, overrides, name, runs_dir, data_dir, resume_dir, quiet, verbose,
          tensorboard, dry_run, seeds, as_json):
    """Train one model; prints the run directory (or, with --json, the summary) on stdout.

    The run directory runs/<timestamp>-<name>-<id>/ gets the resolved config.yaml, metrics.jsonl,
    summary.json, train.log and checkpoints/{last,best}.npz. With --seeds, one run directory per
    line (with --json, one object: the runs' summaries and the test accuracies' mean and std).
    """
    from fmnist_mlp.config.load import plan_from
    from fmnist_mlp.rundir.files import validate_run_name

    if resume_dir is not None and (config_path or overrides or name or seeds):
        raise click.UsageError("--resume continues a run with its own config; "
                               "do not combine it with --config, --set, --name or --seeds")
    if resume_dir is not None and (click.get_current_context().get_parameter_source("runs_dir")
                                   is not click.core.ParameterSource.DEFAULT):
        raise click.UsageError("--resume continues the run in its own directory: --runs-dir "
                               "does not apply to it")
    if resume_dir is not None and (tensorboard or dry_run):
        raise click.UsageError("--resume uses the run's own config: --tensorboard and --dry-run "
                               "apply to new runs")
    if resume_dir is None and config_path is None and not overrides:
        raise click.UsageError("give --config FILE (e.g. configs/default.yaml) or --resume RUN_DIR")
    if resume_dir is not None:
        _train_runs([None], [None], runs_dir, data_dir, resume_dir, quiet, as_json,
                    verbose=verbose)
        return
    if tensorboard:
        overrides = (*overrides, "train.tensorboard=true")
    # read, checked and planned once, here: one plan per seed
    plans = plan_from(config_path, overrides, _parse_seeds(seeds) if seeds else None)
    name = validate_run_name(name or plans[0].name)
    names = [validate_run_name(f"{name}-seed{p.seed}") for p in plans] if seeds else [name]
    if dry_run:
        show(_dry_run_text(plans, names), err=False)      # names: escapes shown
        return
    _train_runs(plans, names, runs_dir, data_dir, None, quiet, as_json, seeds=bool(seeds),
                verbose=verbose)


def _train_runs(plans, names, runs_dir, data_dir, resume_dir, quiet, as_json, seeds=False,
                verbose=False):
    """Train each plan (or resume one run) in turn; stdout gets each run directory (or JSON)."""
    from fmnist_mlp.training.progress import ProgressReporter
    from fmnist_mlp.training.session import run_training

    results = []
    for i, (plan, name) in enumerate(zip(plans, names)):
        reporter = ProgressReporter(quiet=quiet)      # learns the epochs from the loop's settings
        if seeds:
            reporter.message(f"seed {plan.seed} ({i + 1} of {len(plans)})")
        try:
            with sigterm_as_interrupt():
                result = run_training(plan, name=name, runs_dir=runs_dir, data_dir=data_dir,
                                      resume=resume_dir, callbacks=[reporter])
        finally:
            reporter.close()        # an interrupted epoch's bar must not swallow the error line
        s = result.summary
        if verbose or s.get("kernels_before_resume"):
            reporter.message(_kernels_line(s))
        if result.plan.plots:
            _write_plots(result.run_dir, data_dir, reporter)
        reporter.message(f"finished: best val acc {s['best_val_acc']:.4f} (epoch "
                         f"{s['best_epoch']}), test acc {s['test_acc']:.4f}, {s['wall_time']:.1f}s"
                         + (f"; {s['message']}" if s.get("message") else ""))
        results.append(result)
        if not seeds:
            emit(json_dumps(s) if as_json else result.run_dir)   # exact: scripts read it
        elif not as_json:
            emit(result.run_dir)
    if seeds:
        _seeds_report(results, as_json, reporter)


def _seeds_report(results, as_json: bool, reporter) -> None:
    """Each seed's test accuracy and their mean ± sample std (stderr; --json: stdout)."""
    import statistics

    accs = [r.summary["test_acc"] for r in results]
    mean = statistics.fmean(accs)
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    for r, acc in zip(results, accs):
        reporter.message(f"seed {r.plan.seed}: test acc {acc:.4f}  {r.run_dir}")
    reporter.message(f"test acc over {len(accs)} seeds: {mean:.4f} ± {std:.4f} (mean ± sample "
                     f"std; {' / '.join(f'{100 * a:.2f}' for a in accs)} %)")
    if as_json:
        emit(json_dumps({"runs": [r.summary for r in results],
                               "seeds": [r.plan.seed for r in results],
                               "test_acc": {"mean": mean, "std": std, "values": accs}}))


def _parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]: distinct non-negative integers, else a usage error."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not part.isascii():
            raise click.BadParameter(f"{printable(part)!r} is not a non-negative integer "
                                     f"(e.g. --seeds 0,1,2)", param_hint="--seeds")
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter("a seed is given twice", param_hint="--seeds")
    return seeds


def _dry_run_text(plans, names) -> str:
    """The resolved config of the first plan, then each run's size, memory and steps."""
    first = plans[0]
    lines = ["# the resolved config (every key; --set applied)", first.record.yaml.rstrip(), ""]
    if len(plans) > 1:
        lines.append(f"runs: {len(plans)} ({', '.join(names)}), each as below with its own "
                     f"seed: {', '.join(str(p.seed) for p in plans)}")
    lines += [first.describe(), "dry run: nothing trained, nothing written"]
    return "\n".join(lines)


@click.command(epilog=MODEL_EXIT_CODES_HELP)
@data_dir_option
@click.option("--source", "sources", multiple=True, metavar="URL_OR_DIR",
              help="Where to fetch the four files from (repeatable; default: Debian's "
                   "dataset folder if present, then the web mirrors).")
@click.option("--force", is_flag=True, help="Fetch again even if a verified copy is cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def download(data_dir, sources, force, quiet):
    """Fetch and verify the Fashion-MNIST files into the cache, and check (or rebuild) their
    decoded arrays; prints the directory."""
    from fmnist_mlp.data import ensure_dataset
    from fmnist_mlp.data.dataset import load_raw

    path = ensure_dataset(data_dir, sources=list(sources) or None, force=force, progress=not quiet)
    load_raw(path, sources=[], progress=False)      # a damaged decoded array is decoded again
    show(path, err=False)


@click.command("test-images", epilog=MODEL_EXIT_CODES_HELP)
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--index", "indices", multiple=True, type=click.IntRange(0),
              help="Which test image (0..9999; repeatable). Default: 0, 4 and 18, an ankle boot, "
                   "a shirt and a bag.")
@data_dir_option
def test_images(folder, indices, data_dir):
    """Write a few Fashion-MNIST test images into FOLDER as PNG (<class>-<index>.png), to try
    predict on; prints each file. Needs Pillow (pip install -e '.[image]')."""
    from fmnist_mlp.predict.images import require_pillow
    from fmnist_mlp.predict.samples import TOUR_IMAGES, write_test_images

    require_pillow()
    for path in write_test_images(folder, indices or TOUR_IMAGES, data_dir):
        show(path, err=False)


@click.command(epilog=MODEL_EXIT_CODES_HELP)
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
        show(f"{name:<12} {err:.3e}", err=False)
    worst = max(errors.values())
    passed = worst <= tolerance     # False for a NaN error or a NaN tolerance: never "ok"
    verdict = "ok" if passed else "FAILED"
    show(f"max relative error {worst:.3e} ({verdict}, tolerance {tolerance:g})", err=False)
    if not passed:
        raise SystemExit(1)


def _kernels_line(summary) -> str:
    """"kernels: layers numba, optimizer numba" (and what ran before a resume, if different)."""
    def named(kernels) -> str:
        return ", ".join(f"{part} {kind}" for part, kind in kernels.items())

    line = f"kernels: {named(summary['kernels'])}"
    if summary.get("kernels_before_resume"):
        line += (f" (before the resume: {named(summary['kernels_before_resume'])}; the run "
                 f"continued, not bit for bit)")
    return line


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
