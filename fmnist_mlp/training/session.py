"""Runs one training end to end, and loads and scores what a run saved.

Config keys become objects in :mod:`fmnist_mlp.config.plan` (the one path from config to engine); this
module wires them to the data, the run directory and the loop. Public helpers used elsewhere:
:func:`load_model`, :func:`load_splits_for`, :func:`run_training`, :func:`evaluate_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fmnist_mlp.rundir import guard as run_guard
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.config.plan import (
    build,
    build_augmenter,
    build_model,
    build_scorer,
    loop_settings,
    make_streams,
    row_kwargs,
    split_kwargs,
    steps_per_epoch,
)
from fmnist_mlp.config.schema import Config, config_from_dict, config_to_dict, dump_config
from fmnist_mlp.errors import (
    CheckpointError,
    ConfigError,
    TrainingDivergedError,
    TrainingInterrupted,
    TrainingPruned,
)
from fmnist_mlp.training.loop import TrainState, fit


def load_splits_for(config: Config | Mapping[str, Any], data_dir: str | Path | None = None,
                    progress: bool = False):
    """The exact train/val/test splits a run with this config used (as ``Splits``)."""
    from fmnist_mlp.data import load_raw, make_splits

    kwargs = split_kwargs(config)              # validates before any I/O
    return make_splits(load_raw(data_dir, progress=progress), **kwargs)


# ---------------------------------------------------------------------------------------------
# Loading trained models


def load_model(run_dir_or_checkpoint: str | Path):
    """``(model, config dict)`` from a run directory (its best.npz, else last.npz), a .npz
    checkpoint or a .safetensors export."""
    path = runs.find_checkpoint(run_dir_or_checkpoint)
    model, config = model_from(*read_model_file(path), path)
    return build_scorer(model, config), config


def read_model_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(named arrays, metadata) of a .npz checkpoint, or of a .safetensors file (by suffix)."""
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path}: an ONNX export is run with ONNX Runtime; give fmnist-mlp "
                              f"the run directory, a .npz checkpoint or a .safetensors export")
    if path.suffix == ".safetensors":
        from fmnist_mlp.export.safetensors import read_safetensors

        return read_safetensors(path)
    ckpt = runs.load_checkpoint(path)
    return ckpt.params, ckpt.meta


def model_from(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], path: Path):
    """``(MLP, config dict)`` rebuilt from a model file's arrays and its spec and config."""
    from fmnist_mlp.nn import MLP

    spec, config = meta.get("model_spec"), meta.get("config")
    if not isinstance(spec, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its model spec or config")
    try:
        model = MLP(**spec)
        model.load_state_dict(arrays)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: parameters do not fit the stored model spec ({exc})") from None
    # Training never saves a non-finite epoch (a NaN loss stops the run first), so one here is
    # damage: scored, it gives NaN everywhere and screens of NumPy warnings.
    for name, array in arrays.items():
        if np.issubdtype(np.asarray(array).dtype, np.floating) and not np.isfinite(array).all():
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values (a damaged "
                                  f"model); use another checkpoint")
    return model, config


def evaluate_checkpoint(run_dir_or_checkpoint: str | Path, split: str = "test",
                        data_dir: str | Path | None = None) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy, precision, recall, F1, macro-F1, expected calibration
    error and confusion matrix of a saved model on one split."""
    from fmnist_mlp.scoring.metrics import evaluation_report

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split!r}: expected train, val or test")
    path = runs.find_checkpoint(run_dir_or_checkpoint)
    model, config = load_model(path)
    data = getattr(load_splits_for(config, data_dir), split)
    batch_size = config_from_dict(config).train.eval_batch_size
    # Two passes over the split: the loss from the logits (as training reported it), and the
    # outputs every other figure is read from.
    loss, accuracy = model.evaluate(data.x, data.y, batch_size=batch_size)
    outputs = model.forward(data.x, batch_size)
    return {"checkpoint": str(path), "split": split,
            **evaluation_report(data.y, outputs, model.spec()["output"], loss, accuracy)}


def distill_targets(cfg: Config, splits, data_dir: str | Path | None = None):
    """What the student learns from, as ``(targets, teacher)`` for :func:`fmnist_mlp.training.loop.fit`.

    Teachers scored once (the default): ``targets`` (N_train, K), the (smoothed) one-hot labels
    mixed with the teachers' averaged, temperature-softened probabilities (``cfg.distill``), each
    teacher scoring the images as ``eval`` would (its flip averaging too); ``teacher`` None.
    ``distill.consistent``: ``targets`` None and ``teacher`` a
    :class:`~fmnist_mlp.training.distill.ConsistentTeachers` that scores every batch as the student sees it.

    Each teacher is its best checkpoint. Its inputs are the student's, re-normalised with the
    teacher's own mean and std (from its checkpoint's metadata; :func:`fmnist_mlp.rundir.trained.load_trained`
    recomputes them only for checkpoints older than that metadata).
    """
    from fmnist_mlp.training.distill import ConsistentTeachers, mean_softened, mix_targets
    from fmnist_mlp.nn.losses import one_hot_targets
    from fmnist_mlp.rundir.trained import load_trained

    d = cfg.distill
    teachers = [load_trained(run, data_dir) for run in d.teachers]
    # x·std + mean is x/255 again; a teacher normalises that with its own mean and std.
    input_maps = [(splits.std / t.std, (splits.mean - t.mean) / t.std) for t in teachers]
    _check_teachers_fit(d.teachers, [t.model for t in teachers], splits.train.x[:1])
    if d.consistent:
        folded = [str(run) for run, t in zip(d.teachers, teachers)
                  if row_kwargs(t.config)["fold"] is not None]
        if folded:
            raise ConfigError(f"distill.consistent: scores every batch with all teachers, which "
                              f"cross-fitted ones (data.fold) cannot: {', '.join(folded)}")
        return None, ConsistentTeachers([t.model for t in teachers], input_maps, d.weight,
                                        d.temperature)
    probs = []
    for teacher, (scale, shift) in zip(teachers, input_maps):
        x = (splits.train.x * scale + shift).astype(teacher.model.dtype, copy=False)
        probs.append(teacher.scorer.forward(x))
    labels = one_hot_targets(splits.train.y, probs[0].shape[1], cfg.loss.label_smoothing,
                             np.float64)
    unseen = _unseen_rows(cfg, [t.config for t in teachers], data_dir)
    return mix_targets(labels, mean_softened(probs, d.temperature, unseen), d.weight,
                       splits.train.x.dtype), None


def _unseen_rows(cfg: Config, teacher_configs, data_dir) -> list[np.ndarray]:
    """Per teacher, which of the student's training rows it did not train on: (N_train,) bools.
    Rows are redrawn from each run's config, as ``make_splits`` drew them."""
    from fmnist_mlp.data import load_raw, split_rows

    labels = load_raw(data_dir, progress=False).train_labels
    student_rows, _ = split_rows(labels, **row_kwargs(cfg))
    return [~np.isin(student_rows, split_rows(labels, **row_kwargs(c))[0], assume_unique=True)
            for c in teacher_configs]


def _check_teachers_fit(runs_given, models, x: np.ndarray) -> None:
    """Each teacher must take the student's images and score its classes: one line if not."""
    from fmnist_mlp.data.idx import NUM_CLASSES

    for run, model in zip(runs_given, models):
        try:
            out = model.forward(x.astype(model.dtype))
        except ValueError as exc:
            raise CheckpointError(f"distill.teachers: {run}: cannot score the student's images "
                                  f"({exc})") from None
        if out.shape[1] != NUM_CLASSES:
            raise CheckpointError(f"distill.teachers: {run}: scores {out.shape[1]} classes, "
                                  f"not the dataset's {NUM_CLASSES}")


# ---------------------------------------------------------------------------------------------
# One training run


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def run_training(cfg: Config | None, *, name: str | None = None, runs_dir: str | Path = "runs",
                 data_dir: str | Path | None = None, resume: str | Path | None = None,
                 callback: Any = None, on_run_dir: Callable[[Path], None] | None = None) -> RunResult:
    """Train a new run (``cfg``, ``name``) or continue ``resume``; returns its directory and summary.

    ``callback`` receives the loop's progress events; ``on_run_dir`` is told the directory as soon
    as it exists. Raises TrainingInterrupted (run saved, marked interrupted),
    TrainingDivergedError (run marked failed, last good checkpoint kept) and, when the callback
    raises it, TrainingPruned (run marked pruned, checkpoints kept).
    """
    locks: list = []          # the run's lock, held until training ends either way
    if resume is not None:
        run_dir, cfg, ckpt, lock = _open_for_resume(Path(resume))
        locks.append(lock)
    else:
        assert cfg is not None and name is not None
        runs.validate_run_name(name)
        runs.check_runs_dir_writable(runs_dir)
        run_dir, ckpt = None, None
    try:
        return _train(cfg, name, runs_dir, data_dir, run_dir, ckpt, locks, callback, on_run_dir)
    finally:
        for lock in locks:
            lock.release()


def check_before_writing(cfg: Config, what: str = "config") -> None:
    """What can be refused from the config alone is refused before anything is written:
    a subset larger than the training set, a model that does not fit in memory."""
    from fmnist_mlp.nn import memory
    from fmnist_mlp.data.idx import NUM_CLASSES, NUM_FEATURES, TEST_IMAGES, TRAIN_IMAGES

    d, m, t = cfg.data, cfg.model, cfg.train
    most = TRAIN_IMAGES - d.val_size
    if d.subset is not None and d.subset > most:
        raise ConfigError(f"{what}: data.subset: {d.subset} is more than the {most} training "
                          f"images left after data.val_size={d.val_size}")
    itemsize = np.dtype(m.dtype).itemsize
    memory.check_fits(memory.training_bytes(NUM_FEATURES, m.hidden, NUM_CLASSES, t.batch_size,
                                            t.eval_batch_size, itemsize, batchnorm=m.batchnorm,
                                            data_rows=TRAIN_IMAGES + TEST_IMAGES),
                      f"{what}: model.hidden={list(m.hidden)}, train.batch_size={t.batch_size}")


def _train(cfg, name, runs_dir, data_dir, run_dir, ckpt, locks, callback, on_run_dir) -> RunResult:
    from fmnist_mlp.rundir.recorder import RunRecorder

    check_before_writing(cfg, str(run_dir / "config.yaml") if run_dir else "config")
    if cfg.train.tensorboard:               # a missing extra is a usage error: before any mkdir
        from fmnist_mlp.training.tensorboard import require_tensorboardx

        require_tensorboardx()
    splits = load_splits_for(cfg, data_dir, progress=callback is not None)  # before any mkdir
    targets, teacher = (distill_targets(cfg, splits, data_dir) if cfg.distill.teachers
                        else (None, None))
    streams = make_streams(cfg.seed)
    y_train = splits.train.y
    steps = steps_per_epoch(cfg, len(y_train))
    engine = build(cfg, steps, init_rng=streams["init"])
    model, optimizer = engine.model, engine.optimizer
    # One contiguous array of the model's dtype: batches are gathered from it with np.take(out=).
    x_train = np.ascontiguousarray(splits.train.x, dtype=model.params["layer0.W"].dtype)
    state = TrainState()
    if ckpt is not None:
        state = _restore(ckpt, model, optimizer, streams, cfg, steps, run_dir)
    if run_dir is None:
        run_dir = runs.create_run_dir(runs_dir, name)
        locks.append(run_guard.RunLock(run_dir).acquire())
        runs.atomic_write_text(run_dir / "config.yaml", dump_config(cfg), base=run_dir)
    if on_run_dir is not None:
        on_run_dir(run_dir)

    recorder = RunRecorder(run_dir, cfg, model, optimizer, streams, state, forward=callback,
                           resumed=ckpt is not None,
                           normalization={"mean": splits.mean, "std": splits.std})
    try:
        fit(model, optimizer, engine.lr_at, x_train, y_train, splits.val.x, splits.val.y,
            loop_settings(cfg), streams, build_augmenter(cfg), state, recorder, targets, teacher)
        scores = _test_scores(run_dir, splits.test, cfg)
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        raise _interrupted(recorder, run_dir, str(exc) or "interrupted") from None
    except TrainingPruned as exc:
        recorder.stop("pruned", str(exc))
        raise
    except TrainingDivergedError as exc:
        recorder.stop("failed", str(exc))
        raise TrainingDivergedError(f"{exc} (run {run_dir} marked failed)") from None
    except BaseException as exc:
        recorder.stop("failed", f"{type(exc).__name__}: {exc}")
        raise
    return RunResult(run_dir, recorder.finish(scores))


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
    """Test loss/accuracy of the *best* checkpoint, the model ``eval RUN_DIR`` also loads."""
    model, _ = load_model(run_dir)
    loss, acc = model.evaluate(test.x, test.y, batch_size=cfg.train.eval_batch_size)
    return {"test_loss": float(loss), "test_acc": float(acc)}


def _open_for_resume(run_dir: Path):
    """Lock the run (one of two resumes started together wins), then check everything it holds
    before anything in it is touched: a refused resume leaves the run exactly as it was."""
    if not runs.is_run_dir(run_dir):
        raise CheckpointError(f"--resume {run_dir}: not a run directory (needs config.yaml and "
                              f"summary.json)")
    lock = run_guard.RunLock(run_dir).acquire()
    try:
        return (*_check_resumable(run_dir), lock)
    except BaseException:
        lock.release()
        raise


def _check_resumable(run_dir: Path):
    from fmnist_mlp.io import files as safe_io

    run_guard.check_run_entries(run_dir)
    for sub in (".", "checkpoints", "plots"):   # leftovers of a SIGKILL; we hold the lock
        safe_io.clean_stale_tmp(run_dir / sub, legacy=True)
    summary = runs.read_summary(run_dir)
    if summary.get("status") == "finished":
        raise CheckpointError(f"--resume {run_dir}: the run already finished")
    if summary.get("status") == "running" and not runs.is_stale(summary) and "pid" in summary:
        raise CheckpointError(f"--resume {run_dir}: the run is still running (pid "
                              f"{summary['pid']} on {summary.get('host')}); stop it first")
    from fmnist_mlp.config.schema import load_config

    run_guard.refuse_links_inside(run_dir, "config.yaml")
    cfg = load_config(run_dir / "config.yaml")
    run_guard.refuse_links_inside(run_dir, "checkpoints/last.npz")
    last = run_dir / "checkpoints" / "last.npz"
    if not last.is_file():
        raise CheckpointError(f"--resume {run_dir}: no checkpoints/last.npz (it stopped before "
                              f"finishing an epoch); start a new run instead")
    ckpt = runs.load_checkpoint(last)
    if _normalised(ckpt.meta.get("config")) != config_to_dict(cfg):
        raise CheckpointError(f"{last}: its config differs from {run_dir / 'config.yaml'}")
    return run_dir, cfg, ckpt


def _normalised(config: Any) -> dict | None:
    """A stored config with keys added to the schema since (e.g. model.batchnorm) filled in at
    their defaults, so runs started by an older version still resume."""
    try:
        return config_to_dict(config_from_dict(config))
    except ConfigError:
        return None


def _restore(ckpt: runs.Checkpoint, model, optimizer, streams, cfg: Config,
             steps_per_epoch: int, run_dir: Path) -> TrainState:
    where = run_dir / "checkpoints" / "last.npz"
    state = _checked_state(ckpt.meta.get("state"), cfg, steps_per_epoch, where)
    try:
        model.load_state_dict(ckpt.params)
        optimizer.load_state_dict(ckpt.optim_state)
        for name, gen in streams.items():
            gen.bit_generator.state = ckpt.rng_states[name]
    except (KeyError, ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise CheckpointError(f"{where}: does not match the run's config ({exc})") from None
    return state


def _checked_state(raw: Any, cfg: Config, steps_per_epoch: int, where: Path) -> TrainState:
    """The checkpoint's progress counters, each checked for type and range (a damaged value
    must be refused here, not surface later as a ZeroDivisionError in the loop)."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: metadata lacks its training state")

    def bad(key: str) -> CheckpointError:
        return CheckpointError(f"{where}: damaged metadata: state.{key} = {raw.get(key)!r}")

    def count(key: str, hi: int) -> int:
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            raise bad(key)
        return value

    epochs = cfg.train.epochs
    epoch = count("epoch", epochs)
    state = TrainState(epoch=epoch, step=count("step", epoch * steps_per_epoch),
                       best_epoch=count("best_epoch", epoch),
                       stale_epochs=count("stale_epochs", epoch))
    acc = raw.get("best_val_acc", -1.0)
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not -1.0 <= acc <= 1.0:
        raise bad("best_val_acc")
    state.best_val_acc = float(acc)
    if not isinstance(raw.get("early_stopped", False), bool):
        raise bad("early_stopped")
    state.early_stopped = raw.get("early_stopped", False)
    return state



def run_gradcheck(config_path: str | Path | None, overrides=(), samples: int = 4,
                  real: bool = False, data_dir: str | Path | None = None,
                  max_entries: int | None = 50) -> dict[str, float]:
    """Max relative error of backprop vs central differences, per parameter, for the config's
    architecture rebuilt in float64 (dropout kept, with a fixed mask, so it is checked too)."""
    import dataclasses

    from fmnist_mlp.config.schema import load_config
    from fmnist_mlp.nn.gradcheck import gradient_check

    cfg = load_config(config_path, overrides)
    check_before_writing(cfg)
    cfg64 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="float64"))
    streams = make_streams(cfg.seed)
    model = build_model(cfg64, streams["init"])
    if real:
        train = load_splits_for(cfg64, data_dir).train
        x, y = train.x[:samples], train.y[:samples]
    else:
        x = streams["shuffle"].standard_normal((samples, 784))
        y = streams["shuffle"].integers(0, 10, samples)
    # Sampling entries keeps wide layers (best.yaml: 1024x1024) to seconds, not hours.
    return gradient_check(model, x, y, max_entries=max_entries)
