"""Finite-difference check of backpropagation, in float64.

For every parameter entry θ_j the central difference (L(θ+h e_j) − L(θ−h e_j)) / 2h is compared
with the analytic gradient. The error per parameter is scale-relative:
``max_j |a_j − n_j| / max(1e-8, max_j |a_j| + max_j |n_j|)``, so tiny entries neither hide nor
inflate it. Dropout masks are replayed by re-seeding their generator for every evaluation, so a
network with dropout is checked on one fixed mask. Batch normalisation is checked in training mode
(batch statistics), the function training differentiates; the running averages each evaluation
updates do not enter that loss, and the check restores them afterwards.
"""

from __future__ import annotations

import numpy as np

from fmnist_mlp.nn.model import MLP


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """Scale-relative max error between two gradient arrays."""
    scale = np.max(np.abs(analytic), initial=0.0) + np.max(np.abs(numeric), initial=0.0)
    return float(np.max(np.abs(analytic - numeric), initial=0.0) / max(1e-8, scale))


def numeric_gradient(model: MLP, x: np.ndarray, y: np.ndarray, name: str,
                     eps: float = 1e-6, dropout_seed: int = 0,
                     max_entries: int | None = None, seed: int = 0,
                     targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of the full objective w.r.t. ``model.params[name]``.

    Returns (indices checked, numeric gradient at those flat indices). Indices count entries in
    row-major (C) order whatever the parameter's memory layout, so they index
    ``grad.reshape(-1)`` of a C-ordered copy. ``max_entries`` samples a random subset of entries
    for large layers. ``targets`` is passed on to :meth:`MLP.loss_and_grad`.
    """
    param = model.params[name]                  # written in place: the model sees each change
    indices = np.arange(param.size)
    if max_entries is not None and param.size > max_entries:
        indices = np.sort(np.random.default_rng(seed).choice(param.size, max_entries, replace=False))
    numeric = np.empty(indices.size)
    for out_pos, j in enumerate(indices):
        entry = np.unravel_index(j, param.shape)
        original = param[entry]
        param[entry] = original + eps
        plus = _objective(model, x, y, dropout_seed, targets)
        param[entry] = original - eps
        minus = _objective(model, x, y, dropout_seed, targets)
        param[entry] = original
        numeric[out_pos] = (plus - minus) / (2.0 * eps)
    return indices, numeric


def gradient_check(model: MLP, x: np.ndarray, y: np.ndarray, eps: float = 1e-6,
                   dropout_seed: int = 0, max_entries: int | None = None,
                   targets: np.ndarray | None = None) -> dict[str, float]:
    """Relative error of backprop against central differences for every parameter.

    ``targets`` (N, K), when given, replaces the one-hot targets in the loss (distillation).

    The model must be float64: in float32 the differences drown in rounding error.
    """
    if model.dtype != np.float64:
        raise ValueError("gradient_check needs a float64 model (dtype='float64')")
    x = np.asarray(x, dtype=np.float64)
    running = {k: v.copy() for k, v in model.buffers.items()}
    model.loss_and_grad(x, y, rng=np.random.default_rng(dropout_seed), targets=targets)
    analytic = {k: g.copy(order="C") for k, g in model.grads.items()}
    errors = {}
    for name in model.params:
        indices, numeric = numeric_gradient(model, x, y, name, eps, dropout_seed, max_entries,
                                           targets=targets)
        errors[name] = relative_error(analytic[name].reshape(-1)[indices], numeric)
    for name, value in running.items():
        model.buffers[name][...] = value
    return errors


def _objective(model: MLP, x: np.ndarray, y: np.ndarray, dropout_seed: int,
               targets: np.ndarray | None) -> float:
    loss, _ = model.loss_and_grad(x, y, rng=np.random.default_rng(dropout_seed), backward=False,
                                  targets=targets)
    return loss + model.l2_penalty()
