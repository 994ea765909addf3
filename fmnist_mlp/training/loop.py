"""The training loop: :func:`fit` runs epochs of minibatch steps, each scored on validation.

It takes a few objects: the engine (model, optimiser, learning rate per step), the data, the
settings, the random streams and a list of callbacks. No I/O and no printing here: everything
observable goes to the callbacks (:mod:`fmnist_mlp.training.callbacks`), so the same loop serves
the CLI (progress bars, run directories), sweeps and the tests.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from fmnist_mlp.config.plan import LoopSettings
from fmnist_mlp.data.augment import Augmenter, mixup
from fmnist_mlp.data.dataset import batches_per_epoch
from fmnist_mlp.errors import TrainingDivergedError, TrainingInterrupted, TrainingPruned
from fmnist_mlp.nn.losses import one_hot_targets
from fmnist_mlp.training.callbacks import CallbackList, EarlyStopping, LoopEvent


@dataclass
class TrainState:
    """Progress counters, saved in checkpoints so a resumed run continues exactly."""

    epoch: int = 0                  # epochs completed
    step: int = 0                   # optimiser steps taken (the schedule's clock)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0           # epochs since the best one (early stopping)
    early_stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# A teacher for the batch at hand: (augmented batch (B, D), its label targets (B, K)) -> targets.
Teacher = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class LoopData:
    """What the loop learns from and is validated on.

    x_train: (N, 784) C-contiguous, the model's dtype; y_train: (N,) int; x_val, y_val likewise.
    ``targets``: optional (N, K) rows that replace the one-hot labels in the loss (distillation
    from teachers scored once); ``teacher`` instead makes each batch's targets from the batch
    itself, after augmentation and mixup (:class:`fmnist_mlp.training.distill.ConsistentTeachers`);
    ``augment`` changes each training batch in place (:mod:`fmnist_mlp.data.augment`).
    ``batches``, the fused gather (:class:`fmnist_mlp.nn.kernels.batches.FusedBatches`), makes
    each batch from ``x_train`` as pixel bytes (:class:`fmnist_mlp.data.dataset.EncodedRows`),
    decoding, flipping and shifting in the pass that gathers it; then ``augment`` is an
    :class:`~fmnist_mlp.data.augment.Augmentation`, whose draws it takes.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    targets: np.ndarray | None = None
    teacher: Teacher | None = None
    augment: Augmenter | None = None
    batches: Any = None


def fit(engine: Any, data: LoopData, settings: LoopSettings,
        rngs: Mapping[str, np.random.Generator], state: TrainState | None = None,
        callbacks: Iterable[Any] = (),
        score: Callable[[], Mapping[str, float]] | None = None, run_dir: Any = None) -> TrainState:
    """Train from ``state`` (a fresh one by default) until ``settings.epochs`` are done.

    ``engine`` has ``model``, ``optimizer`` and ``lr_at(step)`` (:func:`fmnist_mlp.config.plan.build`
    makes one); ``rngs`` holds the ``shuffle``, ``dropout`` and ``augment`` generators;
    ``callbacks`` hear every event (:mod:`fmnist_mlp.training.callbacks`), after early stopping
    (``settings.patience``), which is one of them. ``score``, when given, is called once the
    epochs are done; its scores reach ``on_train_end`` (a run's test score); ``run_dir``, where
    the run is kept, reaches the callbacks on the event. The loop starts and
    ends the callbacks: ``on_train_end`` comes however the run stops. Raises
    :class:`TrainingInterrupted` on Ctrl-C (the callbacks' last ``on_epoch_end`` describes the
    state to save) and :class:`TrainingDivergedError` when a loss becomes NaN or infinite.
    Validation scores the model on single images (``model.evaluate``): test-time flips, where
    configured, apply to the final test score, not to choosing the best epoch.
    """
    state = state or TrainState()
    stopping = [EarlyStopping(settings.patience)] if settings.patience is not None else []
    listeners = CallbackList([*stopping, *callbacks])
    event = LoopEvent(settings, state, run_dir)
    try:
        # Inside: a callback that fails to start still has every callback ended.
        listeners.on_train_start(event)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                blas_pool_for(engine.model):
            # Overflow warnings only precede the NaN/inf loss _check_finite reports in one line.
            while state.epoch < settings.epochs and not state.early_stopped:
                _one_epoch(engine, data, settings, rngs, state, listeners, event)
        if score is not None:
            event.scores = dict(score())
        event.status = "finished"
    except KeyboardInterrupt:
        when = (f"during epoch {state.epoch + 1}" if state.epoch < settings.epochs
                and not state.early_stopped else f"after epoch {state.epoch}")
        _end(listeners, event, "interrupted", f"interrupted {when}")
        raise TrainingInterrupted(f"interrupted {when}") from None
    except BaseException as exc:
        status = ("interrupted" if isinstance(exc, TrainingInterrupted)
                  else "pruned" if isinstance(exc, TrainingPruned) else "failed")
        message = str(exc) if status != "failed" or isinstance(exc, TrainingDivergedError) \
            else f"{type(exc).__name__}: {exc}"
        _end(listeners, event, status, message or status)
        raise
    listeners.on_train_end(event)
    return state


def blas_pool_for(model):
    """The engine's own BLAS thread pool around the epochs where it pays, else nothing: the
    products' jobs on workers that sleep between products, so the fused kernels' splits find the
    second core free (:mod:`fmnist_mlp.nn.kernels.blas_pool`; the same bits either way)."""
    if getattr(model, "kernels", "numpy") != "numba":
        return nullcontext()
    from fmnist_mlp.nn.kernels.blas_pool import pool_for_training

    return pool_for_training(model.hidden, model.kernels)


def _end(listeners: CallbackList, event: LoopEvent, status: str, message: str) -> None:
    """A run that did not finish: every callback hears it; the run's own error wins over theirs."""
    event.status, event.message = status, message
    try:
        listeners.on_train_end(event)
    except Exception:           # noqa: BLE001 - the training error is the one to report
        pass


def _one_epoch(engine, data: LoopData, settings: LoopSettings, rngs, state: TrainState,
               listeners: CallbackList, event: LoopEvent) -> None:
    """Train one epoch, score it on validation, count it and tell the callbacks."""
    train_metrics = _train_one_epoch(engine, data, settings, rngs, state, listeners, event)
    t0 = time.perf_counter()
    val_loss, val_acc = engine.model.evaluate(data.x_val, data.y_val,
                                              batch_size=settings.eval_batch_size)
    _check_finite(val_loss, f"validation loss after epoch {state.epoch + 1}", train_metrics["lr"])
    metrics = {"epoch": train_metrics["epoch"], "train_loss": train_metrics["train_loss"],
               "train_acc": train_metrics["train_acc"], "val_loss": float(val_loss),
               "val_acc": float(val_acc), "lr": train_metrics["lr"],
               "epoch_time": train_metrics["train_time"] + time.perf_counter() - t0,
               "samples_per_sec": train_metrics["samples_per_sec"]}
    event.is_best = _advance(state, metrics)
    event.metrics = metrics
    listeners.on_epoch_end(event)


def _train_one_epoch(engine, data: LoopData, settings: LoopSettings, rngs, state: TrainState,
                     callback: CallbackList, event: LoopEvent) -> dict[str, float]:
    model, optimizer, lr_at = engine.model, engine.optimizer, engine.lr_at
    x, y, targets = data.x_train, data.y_train, data.targets
    augment, teacher = data.augment, data.teacher
    n = x.shape[0]
    batch_size = min(settings.batch_size, n)
    num_batches = batches_per_epoch(n, batch_size)
    event.epoch, event.num_batches, event.batch = state.epoch + 1, num_batches, 0
    event.loss = event.acc = math.nan
    callback.on_epoch_start(event)
    order = rngs["shuffle"].permutation(n)
    # One batch buffer per epoch, reused: np.take(out=) gathers without allocating per step.
    # mode="clip" because the default ("raise") gathers into a hidden temporary and copies that
    # into out (NumPy's documented behaviour); the indices are a permutation, always in range.
    xb_full = np.empty((batch_size, x.shape[1]), dtype=x.dtype)
    yb_full = np.empty(batch_size, dtype=y.dtype)
    tb_full = None if targets is None else np.empty((batch_size, targets.shape[1]), targets.dtype)
    # With the fused gather and nothing drawn for a batch's pixels, the next batch is gathered on
    # the engine's idle core while this one trains (FusedBatches.start), into a second buffer.
    ahead = data.batches is not None and augment is None
    buffers = (xb_full, np.empty_like(xb_full)) if ahead else (xb_full,)
    dropout_rng, augment_rng = rngs["dropout"], rngs["augment"]
    total_loss, total_correct, seen = 0.0, 0, 0
    lr = lr_at(state.step)
    t0 = time.perf_counter()
    for b in range(num_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        m = idx.shape[0]
        xb, yb = buffers[b % len(buffers)][:m], yb_full[:m]
        if data.batches is None:
            np.take(x, idx, axis=0, out=xb, mode="clip")
            if augment is not None:
                augment(xb, augment_rng, idx, state.epoch)
        else:                   # the same draws, the same bits, in one pass
            flips, offsets = (None, None) if augment is None else augment.draw(
                augment_rng, idx, state.epoch)
            data.batches.fill(xb, x, idx, flips, offsets, augment.shift if augment else 0)
            if augment is not None:
                augment.cut_out(xb, augment_rng)
            elif ahead and b + 1 < num_batches:
                following = order[(b + 1) * batch_size:(b + 2) * batch_size]
                data.batches.start(buffers[(b + 1) % 2][:following.shape[0]], x, following)
        np.take(y, idx, axis=0, out=yb, mode="clip")
        tb = None
        if tb_full is not None:
            tb = tb_full[:m]
            np.take(targets, idx, axis=0, out=tb, mode="clip")
        if settings.mixup or teacher is not None:
            if tb is None:
                tb = one_hot_targets(yb, model.num_classes, model.label_smoothing, xb.dtype)
            if settings.mixup:
                lam, partner = mixup(xb, tb, augment_rng, settings.mixup)
                if lam < 0.5:
                    # Training accuracy counts each mixed image against the label with the
                    # larger weight: against its own it would read about 50 %, as if broken.
                    yb[:] = yb[partner]
            if teacher is not None:
                tb = teacher(xb, tb)
        loss, correct = model.loss_and_grad(xb, yb, rng=dropout_rng, targets=tb)
        loss = float(loss)
        if not math.isfinite(loss):
            _check_finite(loss, f"training loss at epoch {state.epoch + 1}, batch {b + 1}", lr)
        lr = lr_at(state.step)
        optimizer.step(model.params, model.grads, lr)
        state.step += 1
        total_loss += loss * m
        total_correct += int(correct)
        seen += m
        event.batch, event.loss, event.acc = b + 1, total_loss / seen, total_correct / seen
        callback.on_batch(event)
    train_time = time.perf_counter() - t0
    return {"epoch": state.epoch + 1, "train_loss": total_loss / seen,
            "train_acc": total_correct / seen, "lr": float(lr), "train_time": train_time,
            "samples_per_sec": seen / train_time if train_time > 0 else 0.0}


def _check_finite(value: float, what: str, lr: float) -> None:
    if not math.isfinite(value):
        raise TrainingDivergedError(f"training diverged: {what} is {value}; try a lower "
                                    f"learning rate (optimizer.lr, last used {lr:g})")


def _advance(state: TrainState, metrics: Mapping[str, float]) -> bool:
    """Count the finished epoch; return whether it is the best so far by validation accuracy."""
    state.epoch += 1
    is_best = metrics["val_acc"] > state.best_val_acc
    if is_best:
        state.best_val_acc, state.best_epoch, state.stale_epochs = metrics["val_acc"], state.epoch, 0
    else:
        state.stale_epochs += 1
    return is_best
