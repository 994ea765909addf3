"""TensorBoard event files for a run, written with tensorboardX into the run directory.

Per epoch: train/validation loss and accuracy, learning rate, samples/s and epoch time. Every
``HISTOGRAM_EVERY`` epochs (and the first and last): each parameter's values, and each weight
matrix's gradient norms over that epoch's minibatches. At the end: the first layer's weights as
28×28 maps, and the run's hyperparameters with its final metrics for the HParams view. So
``tensorboard --logdir runs`` lays every run and sweep trial side by side.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmnist_mlp.data.facts import IMAGE_SIDE
from fmnist_mlp.errors import require_extra

HISTOGRAM_EVERY = 5             # histograms cost a norm per batch: not every epoch
MAX_WEIGHT_MAPS = 64            # an 8×8 grid of first-layer units
SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
           "accuracy/val": "val_acc", "lr": "lr", "samples_per_sec": "samples_per_sec",
           "epoch_time": "epoch_time"}
FINAL_METRICS = ("best_val_acc", "test_acc", "test_loss")


class TensorBoardLogger:
    """A training callback (on_epoch_start / on_batch / on_epoch_end / on_train_end);
    ``hparams`` are the run's config as dotted keys (the plan's record)."""

    def __init__(self, run_dir: Path, model: Any, hparams: Mapping[str, Any], epochs: int,
                 purge_step: int | None = None) -> None:
        require_extra("tensorboardX", "tensorboard")
        from tensorboardX import SummaryWriter

        # Event files are named by the second they were opened in; a resumed run can open its
        # second within the same second. The nanosecond suffix keeps the names apart and in order.
        self.writer = SummaryWriter(logdir=str(run_dir), purge_step=purge_step,
                                    filename_suffix=f".{time.time_ns()}")
        self.model, self.hparams, self.epochs = model, dict(hparams), epochs
        self.grad_norms: dict[str, list[float]] | None = None

    def _histogram_epoch(self, epoch: int) -> bool:
        return epoch == 1 or epoch % HISTOGRAM_EVERY == 0 or epoch == self.epochs

    def on_epoch_start(self, event: Any) -> None:
        self.grad_norms = ({name: [] for name in self.model.params if name.endswith(".W")}
                           if self._histogram_epoch(event.epoch) else None)

    def on_batch(self, event: Any) -> None:
        if self.grad_norms is None:
            return
        for name, norms in self.grad_norms.items():
            grad = self.model.grads[name].ravel(order="K")     # no copy, whatever the layout
            norms.append(float(np.sqrt(np.vdot(grad, grad))))

    def on_epoch_end(self, event: Any) -> None:
        metrics = event.metrics
        epoch = int(metrics["epoch"])
        for tag, key in SCALARS.items():
            if key in metrics:
                self.writer.add_scalar(tag, float(metrics[key]), epoch)
        if self.grad_norms is not None:
            for name, value in self.model.params.items():
                self.writer.add_histogram(f"weights/{name}", np.asarray(value), epoch)
            for name, norms in self.grad_norms.items():
                if norms:
                    self.writer.add_histogram(f"gradient_norm/{name}", np.array(norms), epoch)
            self.grad_norms = None
        self.writer.flush()

    def on_train_end(self, event: Any) -> None:
        """The run ended: finished writes the final pictures and HParams; else just close."""
        if event.status != "finished":
            self.close()
            return
        state = event.state
        self.finish({"epochs_completed": state.epoch, **dict(event.scores),
                     "best_val_acc": state.best_val_acc if state.best_epoch else None})

    def finish(self, summary: Mapping[str, Any]) -> None:
        """First-layer weight maps, hyperparameters and final metrics; closes the files."""
        step = int(summary.get("epochs_completed") or 0)
        self.writer.add_image("weights/layer0", weight_maps(self.model.params["layer0.W"]), step,
                              dataformats="HW")
        metrics = {f"hparams/{k}": float(summary[k]) for k in FINAL_METRICS
                   if isinstance(summary.get(k), (int, float))}
        self._write_hparams(self.hparams, metrics, step)
        self.close()

    def _write_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        # tensorboardX's add_hparams writes into a new sub-directory, which TensorBoard lists as
        # a second run; written here, the run directory itself is the HParams session.
        from tensorboardX.summary import hparams as hparams_summaries

        writer = self.writer._get_file_writer()
        for summary in hparams_summaries(hparams, metrics):
            writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


def weight_maps(W: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
    """(side², H) first-layer weights -> one (rows·(side+1)−1, cols·(side+1)−1) image in [0, 1]:
    up to MAX_WEIGHT_MAPS units as side×side maps, each scaled to its own range."""
    count = min(W.shape[1], MAX_WEIGHT_MAPS)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    grid = np.zeros((rows * (side + 1) - 1, cols * (side + 1) - 1), np.float32)
    for unit in range(count):
        w = np.asarray(W[:, unit], np.float32).reshape(side, side)
        span = float(w.max() - w.min())
        r, c = divmod(unit, cols)
        grid[r * (side + 1):r * (side + 1) + side, c * (side + 1):c * (side + 1) + side] = (
            (w - w.min()) / span if span > 0 else 0.0)
    return grid
