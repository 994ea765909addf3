"""One training run end to end: a checked config (or a run to resume) in, a finished run out.

The path a run takes: the config becomes objects (:mod:`fmnist_mlp.config.plan`), the run
directory is made (or reopened: :mod:`fmnist_mlp.rundir.resume`), the loop
(:mod:`fmnist_mlp.training.loop`) trains with its callbacks (the recorder,
:mod:`fmnist_mlp.rundir.recorder`, TensorBoard, the caller's), and the best checkpoint is scored
on the test split. What can be refused is refused before anything is written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from fmnist_mlp.config import plan
from fmnist_mlp.config.load import dump_config
from fmnist_mlp.config.schema import Config
from fmnist_mlp.errors import (
    TrainingDivergedError,
    TrainingInterrupted,
    TrainingPruned,
    require_extra,
)
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir import guard, layout
from fmnist_mlp.rundir.resume import ResumePoint, open_for_resume, restore
from fmnist_mlp.training.callbacks import CallbackList
from fmnist_mlp.training.loop import LoopData, TrainState, fit


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    config: Config              # the run's config (a resumed run's own)


@dataclass
class Prepared:
    """Everything a run needs before its directory is touched."""

    cfg: Config
    engine: plan.Engine
    data: LoopData
    streams: dict[str, np.random.Generator]
    state: TrainState
    splits: Any                 # the data.Splits: the test split and the normalisation
    resumed: bool


def run_training(cfg: Config | None, *, name: str | None = None, runs_dir: str | Path = "runs",
                 data_dir: str | Path | None = None, resume: str | Path | None = None,
                 callbacks: Iterable[Any] = (),
                 on_run_dir: Callable[[Path], None] | None = None) -> RunResult:
    """Train a new run (``cfg``, ``name``) or continue ``resume``; returns its directory, summary
    and config.

    ``callbacks`` hear the loop's events after the run recorder; ``on_run_dir`` is told the
    directory as soon as it exists. Raises TrainingInterrupted (run saved, marked interrupted),
    TrainingDivergedError (run marked failed, last good checkpoint kept) and, when a callback
    raises it, TrainingPruned (run marked pruned, checkpoints kept).
    """
    callbacks = list(callbacks)
    with contextlib.ExitStack() as held:      # the run's lock, held until training ends either way
        point = None
        if resume is not None:
            point = held.enter_context(open_for_resume(Path(resume)))
            cfg = point.cfg
        else:
            assert cfg is not None and name is not None
            runs.validate_run_name(name)
            runs.check_runs_dir_writable(runs_dir)
        prepared = prepare(cfg, data_dir, point, progress=bool(callbacks))
        run_dir = point.run_dir if point else _new_run_dir(runs_dir, name, cfg, held)
        if on_run_dir is not None:
            on_run_dir(run_dir)
        return _train(prepared, run_dir, callbacks)


def prepare(cfg: Config, data_dir: str | Path | None, point: ResumePoint | None,
            progress: bool = False) -> Prepared:
    """Check, load and build what the run needs, in that order, before any mkdir."""
    from fmnist_mlp.training.distill import distill_targets

    plan.check_fits(cfg, str(point.run_dir / layout.CONFIG) if point else "config")
    if cfg.train.tensorboard:               # a missing extra is a usage error: before any mkdir
        require_extra("tensorboardX", "tensorboard")
    splits = plan.load_splits(cfg, data_dir, progress=progress)
    targets, teacher = (distill_targets(cfg, splits, data_dir) if cfg.distill.teachers
                        else (None, None))
    streams = plan.make_streams(cfg.seed)
    steps = plan.steps_per_epoch(cfg, len(splits.train.y))
    engine = plan.build(cfg, steps, init_rng=streams["init"])
    # One contiguous array of the model's dtype: batches are gathered from it with np.take(out=).
    x_train = np.ascontiguousarray(splits.train.x, dtype=engine.model.params["layer0.W"].dtype)
    data = LoopData(x_train, splits.train.y, splits.val.x, splits.val.y, targets=targets,
                    teacher=teacher, augment=plan.build_augmenter(cfg))
    state = TrainState(**restore(point, engine, streams, steps)) if point else TrainState()
    return Prepared(cfg, engine, data, streams, state, splits, resumed=point is not None)


def _new_run_dir(runs_dir: str | Path, name: str, cfg: Config, held: contextlib.ExitStack) -> Path:
    """Make the run directory, lock it (released by ``held``) and write its config.yaml."""
    run_dir = runs.create_run_dir(runs_dir, name)
    lock = guard.RunLock(run_dir).acquire()
    held.callback(lock.release)
    runs.atomic_write_text(run_dir / layout.CONFIG, dump_config(cfg), base=run_dir)
    return run_dir


def _train(p: Prepared, run_dir: Path, callbacks: list) -> RunResult:
    """Fit with the recorder and the other callbacks, score the best checkpoint, mark the run."""
    from fmnist_mlp.rundir.recorder import RunRecorder

    recorder = RunRecorder(run_dir, p.cfg, p.engine, p.streams, p.state, resumed=p.resumed,
                           normalization={"mean": p.splits.mean, "std": p.splits.std})
    listeners = CallbackList([recorder, _tensorboard(p, run_dir), *callbacks])
    try:
        fit(p.engine, p.data, plan.loop_settings(p.cfg), p.streams, p.state, [listeners])
        scores = _test_scores(run_dir, p.splits.test, p.cfg)
    except BaseException as exc:
        error = _mark_stopped(recorder, run_dir, exc)
        _close_quietly(listeners)
        if error is exc:
            raise
        raise error from None
    summary = recorder.finish(scores)
    listeners.on_train_end(summary)
    return RunResult(run_dir, summary, p.cfg)


def _mark_stopped(recorder, run_dir: Path, exc: BaseException) -> BaseException:
    """Mark a run that did not finish (saving its last completed epoch); returns what to raise."""
    if isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)):
        return _interrupted(recorder, run_dir, str(exc) or "interrupted")
    if isinstance(exc, TrainingPruned):
        recorder.stop("pruned", str(exc))
        return exc
    if isinstance(exc, TrainingDivergedError):
        recorder.stop("failed", str(exc))
        return TrainingDivergedError(f"{exc} (run {run_dir} marked failed)")
    recorder.stop("failed", f"{type(exc).__name__}: {exc}")
    return exc


def _tensorboard(p: Prepared, run_dir: Path):
    """TensorBoard's callback when train.tensorboard, else None."""
    if not p.cfg.train.tensorboard:
        return None
    from fmnist_mlp.config.load import config_to_dict
    from fmnist_mlp.training.tensorboard import TensorBoardLogger

    # Resumed: events after the checkpoint's epoch are trained again, so TensorBoard drops the
    # earlier ones (purge_step) instead of drawing those epochs twice.
    return TensorBoardLogger(run_dir, p.engine.model, config_to_dict(p.cfg), p.cfg.train.epochs,
                             purge_step=p.state.epoch + 1 if p.resumed else None)


def _close_quietly(listeners: CallbackList) -> None:
    """A run that did not finish: callbacks close what they hold; the run's own error wins."""
    try:
        listeners.on_train_end(None)
    except Exception:           # noqa: BLE001 - the training error is the one to report
        pass


def _interrupted(recorder, run_dir: Path, what: str) -> TrainingInterrupted:
    """Save the last completed epoch, mark the run, and say how to continue."""
    if recorder.saved_epoch == 0 and recorder.snapshot is None:
        recorder.stop("interrupted", "interrupted before the first epoch ended")
        return TrainingInterrupted(f"{what}; no epoch had finished, so there is nothing to "
                                   f"resume: start a new run")
    resume = f"fmnist-mlp train --resume {run_dir}"
    recorder.stop("interrupted", f"interrupted; resume with: {resume}")
    return TrainingInterrupted(f"{what}; saved epoch {recorder.saved_epoch} in {run_dir}; "
                               f"resume with: {resume}")


def _test_scores(run_dir: Path, test, cfg: Config) -> dict[str, float]:
    """Test loss/accuracy of the *best* checkpoint, the model ``eval RUN_DIR`` also loads,
    scored as eval scores it (with the run's config, already checked)."""
    from fmnist_mlp.rundir.flips import scorer_for
    from fmnist_mlp.rundir.trained import read_network

    network, _, _ = read_network(run_dir)
    scorer = scorer_for(network, cfg.data.augment.test_flip)
    loss, acc = scorer.evaluate(test.x, test.y, batch_size=cfg.train.eval_batch_size)
    return {"test_loss": float(loss), "test_acc": float(acc)}
