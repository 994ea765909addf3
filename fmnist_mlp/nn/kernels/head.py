"""The softmax–cross-entropy head in three compiled passes around NumPy's exp and log, NumPy's bits.

The reference (:func:`fmnist_mlp.nn.losses.one_hot_targets`,
:func:`~fmnist_mlp.nn.losses.softmax_cross_entropy` and the count of correct predictions in
:meth:`fmnist_mlp.nn.model.MLP.loss_and_grad`) makes about fifteen NumPy calls on the (N, K)
logits, each a pass and a call's overhead, which at N × 10 is most of the cost. :class:`FusedHead`
makes six: one kernel builds the (label-smoothed) targets, each row's maximum and shifted logits
and counts the rows whose first maximum is the label (``argmax``'s rule, NaN included); NumPy's
``exp``; a kernel sums each row in NumPy's pairwise order; NumPy's ``log``; a kernel forms the log
probabilities, the gradient ``(softmax − t)/N`` and the output layer's bias gradient, its sum over
the batch; and NumPy's ``einsum`` gives the loss. The
transcendental functions and the loss's sum stay NumPy's own, whose bits a compiled loop would not
reproduce, and every other operation is the reference's, in its order, with each scalar cast to
the dtype first as NumPy casts it: loss, gradient and count are bit-identical
(tests/test_kernels.py).
"""

from __future__ import annotations

import numpy as np

from fmnist_mlp.nn.kernels import jit
from fmnist_mlp.nn.kernels.batchnorm import pairwise_row_sums


@jit.kernel
def _targets_max_shift(logits, y, build, off, on, target, shifted):
    """With ``build``, target = ``off`` everywhere and ``off + on`` at each row's label; shifted =
    logits − each row's maximum (NaN if the row holds one). Returns how many rows' first maximum
    is at their label, or −1 (nothing counted) if a label is outside 0..K−1."""
    n, k = logits.shape
    correct = 0
    for i in range(n):
        label = y[i]
        if label < 0 or label >= k:
            return -1
        row, out = logits[i], shifted[i]
        top, first = row[0], 0          # np.maximum.reduce: NaN wins; argmax: first maximum
        found_nan = top != top
        for j in range(1, k):
            v = row[j]
            if not (top >= v or top != top):
                top = v
            if not found_nan and not (v <= row[first]):
                first = j
                found_nan = v != v
        if first == label:
            correct += 1
        for j in range(k):
            out[j] = row[j] - top
        if build:
            t = target[i]
            for j in range(k):
                t[j] = off
            t[label] = t[label] + on
    return correct


@jit.kernel
def _log_probs_and_gradient(shifted, exp, sum_exp, log_sum, target, scale, log_probs, db):
    """log_probs = shifted − log Σ exp; exp ← (exp / Σ exp − target)·scale, the gradient; with
    ``db`` (else empty), the output layer's bias gradient Σ_n of it, row after row as NumPy sums."""
    n, k = exp.shape
    with_bias = db.size > 0
    if with_bias:
        db[:] = exp.dtype.type(0)
    for i in range(n):
        s, ls = sum_exp[i], log_sum[i]
        sr, er, tr, lr = shifted[i], exp[i], target[i], log_probs[i]
        for j in range(k):
            lr[j] = sr[j] - ls
            er[j] = ((er[j] / s) - tr[j]) * scale
        if with_bias:
            for j in range(k):
                db[j] += er[j]


class FusedHead:
    """The cross-entropy head for one model's dtype (loaded or compiled on creation), with its
    work arrays kept per batch size."""

    def __init__(self, dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._work: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        self._no_bias = np.empty(0, self.dtype)
        logits = np.zeros((1, 2), self.dtype)
        jit.load([lambda: self.loss_and_dlogits(logits, np.zeros(1, np.int64), None, 0.0,
                                                np.zeros(2, self.dtype))])

    def _arrays(self, n: int, k: int) -> tuple[np.ndarray, ...]:
        """(target, shifted, exp, log_probs, sum_exp, log_sum) for an (n, k) batch."""
        if (n, k) not in self._work:
            if len(self._work) > 4:                 # a stream of odd sizes does not pile up
                self._work.clear()
            self._work[n, k] = (*(np.empty((n, k), self.dtype) for _ in range(4)),
                                np.empty(n, self.dtype), np.empty(n, self.dtype))
        return self._work[n, k]

    def loss_and_dlogits(self, logits: np.ndarray, y: np.ndarray, targets: np.ndarray | None,
                         label_smoothing: float, db: np.ndarray | None = None,
                         ) -> tuple[float, np.ndarray, int] | None:
        """(mean cross-entropy, dL/dlogits, #rows whose argmax is the label) as the reference
        computes them; ``targets`` (N, K) in the model's dtype, or None for the labels' one-hot
        (label-smoothed) targets; with ``db`` (K,), also the output layer's bias gradient
        Σ_n dL/dlogits. None when a label is outside 0..K−1: the reference then says what is
        wrong. The gradient lies in a work array that the next call reuses."""
        n, k = logits.shape
        target, shifted, exp, log_probs, sum_exp, log_sum = self._arrays(n, k)
        t = self.dtype.type
        build = targets is None
        correct = _targets_max_shift(logits, y.astype(np.int64, copy=False), build,
                                     t(label_smoothing / k), t(1.0 - label_smoothing),
                                     target if build else targets, shifted)
        if correct < 0:
            return None
        target = target if build else targets
        np.exp(shifted, out=exp)
        pairwise_row_sums(exp, exp, False, 0, exp.shape[0], sum_exp)
        np.log(sum_exp, out=log_sum)
        _log_probs_and_gradient(shifted, exp, sum_exp, log_sum, target, t(1.0 / n), log_probs,
                                self._no_bias if db is None else db)
        loss = -float(np.einsum("ij,ij->", target, log_probs)) / n
        return loss, exp, int(correct)
