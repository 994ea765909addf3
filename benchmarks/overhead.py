"""Bare engine loop vs the real training path, per epoch, on the same config and the same splits.

The real path is :func:`fmnist_mlp.training.session.run_training` (what ``fmnist-mlp train`` calls):
fit with the schedule, validation after every epoch, metrics.jsonl, checkpoints and summary.json
in a throw-away run directory. Its epoch is timed from the loop's ``on_epoch_start`` to the end
of the recorder's ``on_epoch_end`` (after the checkpoint is written). The CLI's progress display
is not included. The bare loop is batch gather + ``loss_and_grad`` + ``optimizer.step`` at a
constant learning rate, nothing else. Every run starts with one untimed epoch, so neither pays the
first-touch cost of its buffers inside a timed epoch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


class _EpochTimer:
    """Loop callback that records each epoch's wall time, including validation and saving."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self._start = 0.0

    def on_epoch_start(self, event) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, event) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._start)


def _bare_epochs(cfg, splits, epochs: int) -> list[float]:
    """Seconds of each of ``epochs`` bare-loop epochs over ``splits.train``."""
    import numpy as np

    from fmnist_mlp.config.plan import build, make_streams, steps_per_epoch

    streams = make_streams(cfg.seed)
    engine = build(cfg, steps_per_epoch(cfg, len(splits.train.y)), init_rng=streams["init"])
    model, optimizer = engine.model, engine.optimizer
    x, y, batch, lr = splits.train.x, splits.train.y, cfg.train.batch_size, cfg.optimizer.lr
    xb = np.empty((batch, x.shape[1]), dtype=x.dtype)
    yb = np.empty(batch, dtype=y.dtype)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = streams["shuffle"].permutation(len(x))
        for first in range(0, len(order), batch):
            idx = order[first:first + batch]
            n = len(idx)
            np.take(x, idx, axis=0, out=xb[:n], mode="clip")
            np.take(y, idx, out=yb[:n], mode="clip")
            model.loss_and_grad(xb[:n], yb[:n], rng=streams["dropout"])
            optimizer.step(model.params, model.grads, lr)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_train_overhead(config_path: str | None, data_dir: str | None, timed_epochs: int,
                           overrides: tuple[str, ...] = ()) -> dict:
    """Mean real-path epoch time over mean bare-loop epoch time (after one untimed epoch each).

    Order: bare (1 + ``timed_epochs``), real (1 + ``timed_epochs``), bare again. ``overrides``
    are ``--set`` style ``key.path=value`` strings (tests shrink the data with them).
    """
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.config.plan import load_splits as load_splits_for
    from fmnist_mlp.training.session import run_training

    path = config_path if config_path and Path(config_path).exists() else None
    cfg = load_config(path, [*overrides, f"train.epochs={timed_epochs + 1}"])
    splits = load_splits_for(cfg, data_dir)
    bare_before = _bare_epochs(cfg, splits, timed_epochs + 1)[1:]
    timer = _EpochTimer()
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-overhead-") as runs_dir:
        run_training(cfg, name="bench-overhead", runs_dir=runs_dir, data_dir=data_dir,
                     callbacks=[timer])
    real = timer.epoch_seconds[1:]
    # Bare epochs on both sides of the real ones, so a machine that speeds up or slows down
    # during the probe does not favour either path.
    bare_after = _bare_epochs(cfg, splits, timed_epochs + 1)[1:]
    bare = bare_before + bare_after
    bare_mean, real_mean = sum(bare) / len(bare), sum(real) / len(real)
    return {"config": path or "built-in defaults (configs/default.yaml missing)",
            "overrides": list(overrides), "timed_epochs": timed_epochs, "bare_epoch_seconds": bare, "real_epoch_seconds": real,
            "ratio": real_mean / bare_mean,
            "real_path": "training.session.run_training: fit + validation + metrics.jsonl + checkpoints + "
                         "summary.json (no progress display)"}
