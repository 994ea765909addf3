"""Batch normalisation of a hidden layer's pre-activations, forward and backward, in place.

Training mode normalises each unit over the batch and learns a scale and shift:
``ẑ = (z − μ_B) / √(σ²_B + eps)``, ``y = γ ẑ + β`` with z (N, D) and μ_B, σ²_B, γ, β (D,).
Evaluation mode uses running averages of μ_B and σ²_B instead, so it is a fixed per-unit affine
map. Like the activations, these functions write into caller-owned buffers: the training loop
allocates once per batch size.
"""

from __future__ import annotations

import numpy as np


def forward_train(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                  out: np.ndarray, mean: np.ndarray, var: np.ndarray,
                  inv_std: np.ndarray) -> None:
    """Normalise ``z`` (N, D) in place to ẑ and write ``out = γ ẑ + β``.

    Fills ``mean`` = μ_B, ``var`` = σ²_B (the biased batch variance, as the forward pass uses)
    and ``inv_std`` = 1/√(σ²_B + eps), all (D,); ``out`` doubles as scratch before it is written.
    """
    np.mean(z, axis=0, out=mean)
    z -= mean
    np.square(z, out=out)                      # two passes (centre, then square): no cancellation
    np.mean(out, axis=0, out=var)
    np.add(var, eps, out=inv_std)
    np.sqrt(inv_std, out=inv_std)
    np.reciprocal(inv_std, out=inv_std)
    z *= inv_std
    np.multiply(z, gamma, out=out)
    out += beta


def backward(dout: np.ndarray, xhat: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray,
             dgamma: np.ndarray, dbeta: np.ndarray, scratch: np.ndarray) -> None:
    """Turn ``dout`` = dL/dy (N, D) into dL/dz in place; fill ``dgamma`` and ``dbeta`` (D,).

    dγ = Σ dy·ẑ, dβ = Σ dy, and dz = (γ / (N σ)) (N dy − Σ dy − ẑ Σ dy·ẑ): μ_B and σ²_B depend
    on every row, so each row's gradient loses its share of the batch's mean and of the part
    along ẑ. ``scratch`` (N, D) is overwritten.
    """
    n = dout.shape[0]
    np.sum(dout, axis=0, out=dbeta)
    np.multiply(dout, xhat, out=scratch)
    np.sum(scratch, axis=0, out=dgamma)
    np.multiply(xhat, dgamma / n, out=scratch)
    dout -= dbeta / n
    dout -= scratch
    dout *= gamma * inv_std


def update_running(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray,
                   var: np.ndarray, n: int, momentum: float) -> None:
    """Exponential averages, ``r ← (1 − momentum) r + momentum · batch``, as PyTorch keeps them.

    The running variance averages the *unbiased* batch variance σ²_B · N/(N−1). A batch of one
    example carries no variance information, so it leaves both averages unchanged.
    """
    if n < 2:
        return
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += (momentum * n / (n - 1)) * var


def eval_affine(gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                running_var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), both (D,), with ``γ (z − μ) / √(σ² + eps) + β = z·scale + shift``."""
    scale = gamma / np.sqrt(running_var + eps)
    return scale, beta - running_mean * scale
