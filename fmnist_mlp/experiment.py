"""Turns a config into objects (data, model, optimiser, schedule) and runs one training end to end.

This is the one place that knows both the config schema and the engine's constructors, so the
numerical modules take plain values. Public helpers used elsewhere: :func:`load_model`,
:func:`load_splits_for`, :func:`run_training`, :func:`evaluate_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fmnist_mlp import runs
from fmnist_mlp.config import Config, config_from_dict, config_to_dict, dump_config
from fmnist_mlp.errors import CheckpointError, ConfigError, TrainingDivergedError
from fmnist_mlp.train import LoopSettings, TrainingInterrupted, TrainState, fit

STREAMS = ("init", "shuffle", "dropout", "augment")


# ---------------------------------------------------------------------------------------------
# Config -> objects


def make_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators for init, shuffling, dropout and augmentation, all from one seed,
    so e.g. switching dropout on does not change the initial weights or the batch order."""
    seqs = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(seq) for name, seq in zip(STREAMS, seqs)}


def build_model(cfg: Config, init_rng: np.random.Generator):
    from fmnist_mlp.nn import MLP

    m, loss = cfg.model, cfg.loss
    return MLP(input_size=784, hidden=m.hidden, num_classes=10, activation=m.activation,
               output=m.output, loss=loss.name, dropout=m.dropout, input_dropout=m.input_dropout,
               batchnorm=m.batchnorm, label_smoothing=loss.label_smoothing, l2=loss.l2,
               init=m.init, dtype=m.dtype, seed=init_rng)


def build_optimizer(cfg: Config, params: dict[str, np.ndarray]):
    from fmnist_mlp.optim import make_optimizer

    o = cfg.optimizer
    return make_optimizer(o.name, params, lr=o.lr, momentum=o.momentum, beta1=o.beta1,
                          beta2=o.beta2, eps=o.eps, rho=o.rho, weight_decay=o.weight_decay)


def build_schedule(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """Epoch-denominated schedule settings become step counts (one step = one minibatch)."""
    from fmnist_mlp.schedules import make_schedule

    s = cfg.schedule
    return make_schedule(s.name, base_lr=cfg.optimizer.lr,
                         total_steps=cfg.train.epochs * steps_per_epoch,
                         warmup_steps=s.warmup_epochs * steps_per_epoch,
                         step_size=s.step_epochs * steps_per_epoch, gamma=s.gamma,
                         min_lr=s.min_lr, decay_steps=steps_per_epoch)


def load_splits_for(config: Config | Mapping[str, Any], data_dir: str | Path | None = None,
                    progress: bool = False):
    """The exact train/val/test splits a run with this config used (as ``Splits``)."""
    from fmnist_mlp.data import load_raw, make_splits

    cfg = config if isinstance(config, Config) else config_from_dict(config)
    raw = load_raw(data_dir, progress=progress)
    d = cfg.data
    return make_splits(raw, val_size=d.val_size, split=d.split, normalize=d.normalize,
                       seed=cfg.seed, dtype=cfg.model.dtype, subset=d.subset)


# ---------------------------------------------------------------------------------------------
# Loading trained models


def load_model(run_dir_or_checkpoint: str | Path):
    """``(model, config dict)`` from a run directory (its best.npz, else last.npz) or a .npz."""
    from fmnist_mlp.nn import MLP

    path = runs.find_checkpoint(run_dir_or_checkpoint)
    ckpt = runs.load_checkpoint(path)
    spec, config = ckpt.meta.get("model_spec"), ckpt.meta.get("config")
    if not isinstance(spec, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its model spec or config")
    try:
        model = MLP(**spec)
        model.load_state_dict(ckpt.params)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: parameters do not fit the stored model spec ({exc})") from None
    return scorer_for(model, config_from_dict(config)), config


def scorer_for(model, cfg: Config):
    """The model as it is scored: averaged with mirrored images when data.augment.test_flip."""
    from fmnist_mlp.augment import FlipAveraged

    return FlipAveraged(model) if cfg.data.augment.test_flip else model


def evaluate_checkpoint(run_dir_or_checkpoint: str | Path, split: str = "test",
                        data_dir: str | Path | None = None) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix of a saved model on one split."""
    from fmnist_mlp.train import evaluate

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split!r}: expected train, val or test")
    path = runs.find_checkpoint(run_dir_or_checkpoint)
    model, config = load_model(path)
    data = getattr(load_splits_for(config, data_dir), split)
    cfg = config_from_dict(config)
    result = evaluate(model, data.x, data.y, batch_size=cfg.train.eval_batch_size)
    return {"checkpoint": str(path), "split": split, **result}


def distill_targets(cfg: Config, splits, data_dir: str | Path | None = None) -> np.ndarray:
    """(N_train, K) soft targets for the student's training split: its (smoothed) one-hot labels
    mixed with the teachers' averaged, temperature-softened probabilities (``cfg.distill``).

    Each teacher scores the student's training images as ``eval`` would (its best checkpoint, its
    flip averaging), after they are re-normalised with the teacher's own mean and std.
    """
    from fmnist_mlp.distill import mean_softened, mix_targets
    from fmnist_mlp.nn.losses import one_hot_targets

    d = cfg.distill
    probs = []
    for run in d.teachers:
        scorer, config = load_model(run)
        own = load_splits_for(config, data_dir)
        # x·std + mean is x/255 again; the teacher normalises that with its own mean and std.
        scale, shift = splits.std / own.std, (splits.mean - own.mean) / own.std
        x = (splits.train.x * scale + shift).astype(own.train.x.dtype, copy=False)
        try:
            probs.append(scorer.forward(x))
        except ValueError as exc:
            raise CheckpointError(f"distill.teachers: {run}: cannot score the student's images "
                                  f"({exc})") from None
    labels = one_hot_targets(splits.train.y, probs[0].shape[1], cfg.loss.label_smoothing,
                             np.float64)
    return mix_targets(labels, mean_softened(probs, d.temperature), d.weight, splits.train.x.dtype)


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
    as it exists. Raises TrainingInterrupted (run saved, marked interrupted) and
    TrainingDivergedError (run marked failed, last good checkpoint kept).
    """
    from fmnist_mlp.augment import make_augmenter
    from fmnist_mlp.recorder import RunRecorder

    if resume is not None:
        run_dir, cfg, ckpt = _open_for_resume(Path(resume))
    else:
        assert cfg is not None and name is not None
        runs.validate_run_name(name)
        run_dir, ckpt = None, None
    splits = load_splits_for(cfg, data_dir, progress=callback is not None)  # before any mkdir
    targets = distill_targets(cfg, splits, data_dir) if cfg.distill.teachers else None
    streams = make_streams(cfg.seed)
    model = build_model(cfg, streams["init"])
    optimizer = build_optimizer(cfg, model.params)
    # One contiguous array of the model's dtype: batches are gathered from it with np.take(out=).
    x_train = np.ascontiguousarray(splits.train.x, dtype=model.params["layer0.W"].dtype)
    y_train = splits.train.y
    steps_per_epoch = -(-len(y_train) // min(cfg.train.batch_size, len(y_train)))
    lr_at = build_schedule(cfg, steps_per_epoch)
    state = TrainState()
    if ckpt is not None:
        state = _restore(ckpt, model, optimizer, streams)
    if run_dir is None:
        run_dir = runs.create_run_dir(runs_dir, name)
        runs.atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    if on_run_dir is not None:
        on_run_dir(run_dir)

    recorder = RunRecorder(run_dir, cfg, model, optimizer, streams, state, forward=callback,
                           resumed=ckpt is not None)
    settings = LoopSettings(cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size,
                            cfg.train.early_stopping_patience)
    try:
        fit(model, optimizer, lr_at, x_train, y_train, splits.val.x, splits.val.y, settings,
            streams, make_augmenter(cfg.data.augment.flip, cfg.data.augment.shift,
                                   cfg.data.augment.cutout), state, recorder, targets)
        scores = _test_scores(run_dir, splits.test, cfg)
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        raise _interrupted(recorder, run_dir, str(exc) or "interrupted") from None
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
    if not runs.is_run_dir(run_dir):
        raise CheckpointError(f"--resume {run_dir}: not a run directory (needs config.yaml and "
                              f"summary.json)")
    summary = runs.read_summary(run_dir)
    if summary.get("status") == "finished":
        raise CheckpointError(f"--resume {run_dir}: the run already finished")
    if summary.get("status") == "running" and not runs.is_stale(summary) and "pid" in summary:
        raise CheckpointError(f"--resume {run_dir}: the run is still running (pid "
                              f"{summary['pid']} on {summary.get('host')}); stop it first")
    from fmnist_mlp.config import load_config

    cfg = load_config(run_dir / "config.yaml")
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


def _restore(ckpt: runs.Checkpoint, model, optimizer, streams) -> TrainState:
    try:
        model.load_state_dict(ckpt.params)
        optimizer.load_state_dict(ckpt.optim_state)
        for name, gen in streams.items():
            gen.bit_generator.state = ckpt.rng_states[name]
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint does not match the run's config ({exc})") from None
    return TrainState.from_dict(ckpt.meta["state"])



def run_gradcheck(config_path: str | Path | None, overrides=(), samples: int = 4,
                  real: bool = False, data_dir: str | Path | None = None,
                  max_entries: int | None = 50) -> dict[str, float]:
    """Max relative error of backprop vs central differences, per parameter, for the config's
    architecture rebuilt in float64 (dropout kept, with a fixed mask, so it is checked too)."""
    import dataclasses

    from fmnist_mlp.config import load_config
    from fmnist_mlp.nn.gradcheck import gradient_check

    cfg = load_config(config_path, overrides)
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
