"""``fmnist-mlp sweep run|status|report``: hyperparameter sweeps with Optuna."""

from __future__ import annotations

from pathlib import Path

import click

from fmnist_mlp.io.terminal import emit, show
from fmnist_mlp.cli.common import EXIT_CODES_HELP, data_dir_option, json_dumps, json_option


@click.group()
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
@data_dir_option
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
        echo=emit, note=show))


@sweep.command("status")
@click.argument("sweep_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@json_option
def sweep_status(sweep_dir, as_json):
    """Every trial (state, parameters, best val acc, epochs, run dir), the best so far and the
    budget left. A trial whose worker is gone shows as interrupted until it is resumed."""
    from fmnist_mlp.sweep.status import format_status
    from fmnist_mlp.sweep.status import sweep_status as status_of
    from fmnist_mlp.sweep.study import open_sweep

    status = status_of(open_sweep(sweep_dir, read_only=True))
    if as_json:
        emit(json_dumps(status))
    else:
        show(format_status(status), err=False)


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
    show(table, err=False)
    for path in paths:
        show(path, err=False)
