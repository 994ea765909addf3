"""Test-time flip averaging: a scorer whose every output is the mean over an image and its mirror.

A run that set ``data.augment.test_flip`` is scored this way wherever it is scored: its final test
score (the session), ``eval``, ``predict``, ``export``, ensembles and distillation's teachers. It
lives with the run's other read-back code (below scoring/ and training/, which both use it).

:class:`FlipAveraged` is not an :class:`~fmnist_mlp.nn.MLP` and does not pretend to be one: it
offers only what a scorer offers (``forward``, ``predict``, ``evaluate``, ``logits``), each of them
averaged over the flip, and the network it wraps as ``.model``. Code that needs the network's
parameters or spec asks ``.model`` for them, so nothing can read an un-averaged score by accident.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fmnist_mlp.data.augment import mirror


class Scorer(Protocol):
    """What eval, predict, plots and distillation need of a trained model: an MLP, or one
    wrapped in :class:`FlipAveraged`."""

    def forward(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray: ...

    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray: ...

    def predict(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray: ...

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 2000) -> tuple[float, float]: ...


def scorer_for(model: Any, test_flip: bool) -> Scorer:
    """The model as it is scored: flip-averaged when the run's data.augment.test_flip is set."""
    return FlipAveraged(model) if test_flip else model


class FlipAveraged:
    """Wraps a trained MLP; every method scores the mean of its outputs on x and mirror(x).

    x: (N, side²) rows of square images; outputs (N, K) are class probabilities for softmax.
    """

    def __init__(self, model: Any) -> None:
        side = int(round(np.sqrt(model.input_size)))
        if side * side != model.input_size:
            raise ValueError(f"flip averaging needs square images, not {model.input_size} inputs")
        self.model, self.side = model, side

    def forward(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N, K) mean of the network's outputs on each image and on its mirror."""
        out = self.model.forward(x, batch_size)
        out += self.model.forward(mirror(x, self.side), batch_size)
        out *= 0.5
        return out

    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N, K) scores whose output nonlinearity gives the averaged outputs back (log p for
        softmax, log(p / (1 − p)) for sigmoid, the outputs for linear): the network's own logits
        would skip the averaging."""
        return logits_of_outputs(self.model.output, self.forward(x, batch_size))

    def predict(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N,) the class with the largest averaged output."""
        return self.forward(x, batch_size).argmax(axis=1)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 2000) -> tuple[float, float]:
        """(mean loss of the averaged outputs, accuracy)."""
        from fmnist_mlp.nn.losses import loss_of_outputs, one_hot_targets

        total_loss, correct = 0.0, 0
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            out = self.forward(xb, batch_size)
            target = one_hot_targets(yb, self.model.num_classes, self.model.label_smoothing,
                                     out.dtype)
            total_loss += float(loss_of_outputs(self.model.loss, out, target).sum())
            correct += int(np.count_nonzero(out.argmax(axis=1) == yb))
        n = max(1, x.shape[0])
        return total_loss / n, correct / n


def logits_of_outputs(kind: str, outputs: np.ndarray) -> np.ndarray:
    """Scores whose output nonlinearity gives back ``outputs``: what an averaged model calls its
    logits. softmax: log p (softmax(log p) = p as rows sum to 1); sigmoid: log(p / (1 − p));
    linear: the outputs. Probabilities are clipped to the dtype's tiny so the logs stay finite."""
    tiny = np.finfo(outputs.dtype).tiny
    if kind == "softmax":
        return np.log(np.maximum(outputs, tiny))
    if kind == "sigmoid":
        return np.log(np.maximum(outputs, tiny)) - np.log(np.maximum(1 - outputs, tiny))
    return outputs.copy()
