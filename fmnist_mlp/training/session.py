"""One training run end to end: a run's plan (or a run to resume) in, a finished run out.

The path a run takes: the plan (:func:`fmnist_mlp.config.plan.make_plan`, made once from the
checked config) says what to load and build; the run directory is opened in one call
(:func:`fmnist_mlp.rundir.start.start_run`: made, locked, its config written, its recorder made; or
reopened by :mod:`fmnist_mlp.rundir.resume`); the loop (:mod:`fmnist_mlp.training.loop`) trains
with its callbacks (the recorder, :mod:`fmnist_mlp.rundir.recorder`, TensorBoard, the caller's),
scores the best checkpoint on the test split and ends the callbacks. What can be refused is refused
before anything is written. Below this module nothing reads a ``Config``: the loop, the recorder,
TensorBoard and distillation take the plan's plain values.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fmnist_mlp.config.plan import STREAMS, Plan, make_plan
from fmnist_mlp.config.schema import Config
from fmnist_mlp.errors import (
    DataError,
    TrainingDivergedError,
    TrainingInterrupted,
    require_extra,
)
from fmnist_mlp.nn.engine import Engine, build_engine
from fmnist_mlp.rundir import layout
from fmnist_mlp.rundir.resume import ResumePoint, open_for_resume, restore
from fmnist_mlp.rundir.start import check_new_run, start_run
from fmnist_mlp.training.loop import LoopData, TrainState, fit


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    plan: Plan                  # the run's plan (a resumed run's own)


@dataclass
class Prepared:
    """Everything a run needs before its directory is touched."""

    plan: Plan
    engine: Engine
    data: LoopData
    streams: dict[str, np.random.Generator]
    state: TrainState
    splits: Any                 # the data.Splits: the test split and the normalisation
    resumed: bool


def run_training(plan: Plan | Config | None, *, name: str | None = None,
                 runs_dir: str | Path = "runs", data_dir: str | Path | None = None,
                 resume: str | Path | None = None, callbacks: Iterable[Any] = ()) -> RunResult:
    """Train a new run (``plan``, ``name``) or continue ``resume``; returns its directory, summary
    and plan. A checked ``Config`` is planned here, once (a sweep's trial comes planned:
    :meth:`fmnist_mlp.sweep.spec.SweepSpec.trial_plan`).

    ``callbacks`` hear the loop's events after the run recorder (``on_train_start``'s event
    carries the run directory). Raises TrainingInterrupted (run saved, marked interrupted),
    TrainingDivergedError (run marked failed, last good checkpoint kept) and, when a callback
    raises it, TrainingPruned (run marked pruned, checkpoints kept).
    """
    callbacks = list(callbacks)
    with contextlib.ExitStack() as held:      # the run's lock, held until training ends either way
        point = where = None
        if resume is not None:
            point = held.enter_context(open_for_resume(Path(resume)))
            plan = make_plan(point.cfg, point.run_dir / layout.CONFIG)
        else:
            assert plan is not None and name is not None
            plan = make_plan(plan) if isinstance(plan, Config) else plan
            where = check_new_run(runs_dir, name)      # said before any data is loaded
        prepared = prepare(plan, data_dir, point, progress=bool(callbacks))
        # The run directory, in one call: made, locked and given its config (or the resumed
        # one), and its recorder listening.
        recorder = start_run(where or point.run_dir, held, plan.record, plan.loop.epochs,
                             plan.checkpoint_every, prepared.engine, prepared.streams,
                             prepared.state, {"mean": prepared.splits.mean,
                                              "std": prepared.splits.std})
        return _train(prepared, recorder, callbacks)


def prepare(plan: Plan, data_dir: str | Path | None, point: ResumePoint | None,
            progress: bool = False) -> Prepared:
    """Load the data and build the engine the run needs (with the fused kernels, the engine on a
    thread while the data loads; a data error is raised first), before any mkdir."""
    from fmnist_mlp.data import load_raw, make_splits
    from fmnist_mlp.data.augment import make_augmenter
    from fmnist_mlp.nn.rng import spawn_streams
    from fmnist_mlp.training.distill import distill_targets

    if plan.tensorboard:                    # a missing extra is a usage error: before any mkdir
        require_extra("tensorboardX", "tensorboard")
    # With numba's kernels the training split stays as pixel bytes, each batch decoded as it is
    # gathered (a quarter of the memory), and the engine is built (its kernels loaded) on a
    # thread while the data loads: the loads wait on the disk and on NumPy's copies, which
    # release the GIL.
    fused = plan.engine.kernels == "numba" and plan.distill is None
    streams = spawn_streams(plan.seed, STREAMS)
    building = _Building(plan.engine, streams["init"]) if fused else None
    splits = make_splits(load_raw(data_dir, progress=progress), **plan.data.splits,
                         encode_train=fused)
    if len(splits.train.y) != plan.data.train_rows:
        raise DataError(f"the training split has {len(splits.train.y)} rows, the plan counted "
                        f"{plan.data.train_rows} from the dataset's facts")
    targets, teacher = (distill_targets(plan.distill, splits, data_dir) if plan.distill
                        else (None, None))
    engine, batches = (building.result() if building is not None
                       else (build_engine(plan.engine, init_rng=streams["init"]), None))
    dtype = engine.model.params["layer0.W"].dtype
    # Float rows: one contiguous array of the model's dtype, batches gathered with np.take(out=).
    x_train = splits.train.x if fused else np.ascontiguousarray(splits.train.x, dtype=dtype)
    data = LoopData(x_train, splits.train.y, splits.val.x, splits.val.y, targets=targets,
                    teacher=teacher, augment=make_augmenter(**plan.data.augment),
                    batches=batches)
    state = (TrainState(**restore(point, engine, streams, plan.loop.epochs, plan.steps_per_epoch))
             if point else TrainState())
    return Prepared(plan, engine, data, streams, state, splits, resumed=point is not None)


class _Building:
    """The engine and the fused batch gather, built on a thread from the start (``result`` joins
    it and returns them, or raises what the build raised). numba's set-up and every kernel's
    load from the cache took 0.21-0.23 s of a fast.yaml process, the data 0.15-0.17 s beside it
    (docs/performance.md, round 6)."""

    def __init__(self, spec: Any, init_rng: np.random.Generator) -> None:
        self._spec, self._rng = spec, init_rng
        self._built: tuple[Engine, Any] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, name="engine-build", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        from fmnist_mlp.nn.kernels.batches import FusedBatches

        try:
            engine = build_engine(self._spec, init_rng=self._rng)
            self._built = engine, FusedBatches(engine.model.params["layer0.W"].dtype)
        except BaseException as exc:    # noqa: BLE001 - raised again on the caller's thread
            self._error = exc

    def result(self) -> tuple[Engine, Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._built is not None
        return self._built


def _train(p: Prepared, recorder: Any, callbacks: list) -> RunResult:
    """Fit with the recorder and the other callbacks; the loop scores the best checkpoint and
    ends them all, the recorder marking the run."""
    plan, run_dir = p.plan, recorder.run_dir
    try:
        listeners = [recorder, _tensorboard(p, run_dir), *callbacks]
    except BaseException:
        recorder.stop("failed", "TensorBoard could not start")
        raise
    try:
        fit(p.engine, p.data, plan.loop, p.streams, p.state, listeners,
            score=lambda: _test_scores(run_dir, p.splits.test, plan), run_dir=run_dir)
    except TrainingDivergedError as exc:
        raise TrainingDivergedError(f"{exc} (run {run_dir} marked failed)") from None
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        raise _interrupted(recorder, run_dir, str(exc) or "interrupted") from None
    return RunResult(run_dir, dict(recorder.summary), plan)


def _tensorboard(p: Prepared, run_dir: Path):
    """TensorBoard's callback when train.tensorboard, else None."""
    if not p.plan.tensorboard:
        return None
    from fmnist_mlp.training.tensorboard import TensorBoardLogger

    # Resumed: events after the checkpoint's epoch are trained again, so TensorBoard drops the
    # earlier ones (purge_step) instead of drawing those epochs twice.
    return TensorBoardLogger(run_dir, p.engine.model, p.plan.record.hparams, p.plan.loop.epochs,
                             purge_step=p.state.epoch + 1 if p.resumed else None)


def _interrupted(recorder, run_dir: Path, what: str) -> TrainingInterrupted:
    """The error of a run the recorder has saved and marked interrupted: how to continue."""
    if recorder.saved_epoch == 0:
        return TrainingInterrupted(f"{what}; no epoch had finished, so there is nothing to "
                                   f"resume: start a new run")
    return TrainingInterrupted(f"{what}; saved epoch {recorder.saved_epoch} in {run_dir}; "
                               f"resume with: {recorder.resume_command}")


def _test_scores(run_dir: Path, test, plan: Plan) -> dict[str, float]:
    """Test loss/accuracy of the *best* checkpoint, the model ``eval RUN_DIR`` also loads,
    scored as eval scores it (with the run's test-time flips)."""
    from fmnist_mlp.rundir.flips import scorer_for
    from fmnist_mlp.rundir.trained import read_network

    network, _, _ = read_network(run_dir)
    scorer = scorer_for(network, plan.data.test_flip)
    loss, acc = scorer.evaluate(test.x, test.y, batch_size=plan.loop.eval_batch_size)
    return {"test_loss": float(loss), "test_acc": float(acc)}
