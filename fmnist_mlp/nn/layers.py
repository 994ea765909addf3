"""The network's layers as forward/backward pairs, in the cs231n shape, over caller-owned arrays.

Rows are examples: ``x`` (N, D_in), ``W`` (D_in, D_out), ``b`` (D_out,), ``out`` (N, D_out).
Each ``*_forward`` writes its result into ``out`` and returns it; each ``*_backward`` takes
``dout`` = dL/d(layer output) and what the forward pass kept (its *cache*: the input, the output,
a mask, the normalised values) and returns or fills dL/d(input) and the parameter gradients.
The arrays are preallocated by the model's :class:`~fmnist_mlp.nn.workspace.Workspace` and reused
every step, which is why the functions take ``out=`` arrays instead of allocating.
"""

from __future__ import annotations

import numpy as np

from fmnist_mlp.nn.activations import ACTIVATIONS


# ------------------------------------------------------------------------------ dense (affine)
def dense_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None,
                  out: np.ndarray) -> np.ndarray:
    """``out = x W + b``: (N, D_in) @ (D_in, D_out) + (D_out,). ``b`` None: no bias."""
    np.matmul(x, W, out=out)
    if b is not None:
        out += b
    return out


def dense_backward(dout: np.ndarray, x: np.ndarray, W: np.ndarray, dW: np.ndarray,
                   db: np.ndarray | None, dx: np.ndarray | None) -> None:
    """Fill ``dW = xᵀ dout`` (D_in, D_out), ``db = Σ_n dout`` (D_out,) and ``dx = dout Wᵀ``
    (N, D_in). ``dx`` None skips its product (the first layer: nothing needs dL/d(pixels))."""
    np.matmul(x.T, dout, out=dW)
    if db is not None:
        np.sum(dout, axis=0, out=db)
    if dx is not None:
        np.matmul(dout, W.T, out=dx)


# ------------------------------------------------------------------------------ activation
def activation_forward(name: str, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = f(z)`` elementwise, (N, D); ``out`` may be ``z`` itself."""
    ACTIVATIONS[name].forward(z, out)
    return out


def activation_backward(name: str, dout: np.ndarray, a: np.ndarray) -> np.ndarray:
    """dL/dz = dout ⊙ f'(z), written into ``dout``. The cache is the *output* ``a = f(z)``:
    each derivative is expressed through it (σ(1−σ), 1−tanh², [a > 0])."""
    ACTIVATIONS[name].backward(dout, a)
    return dout


# ------------------------------------------------------------------------------ inverted dropout
def keep_threshold(dropout: float) -> int:
    """Dropout's keep probability as a count out of 65536 (the masks are 16-bit draws)."""
    return min(65535, max(1, round((1.0 - dropout) * 65536)))


def dropout_forward(x: np.ndarray, threshold: int, rng: np.random.Generator,
                    mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Inverted dropout, training only: ``out = x ⊙ mask``, with mask entries 0 (dropped) or 1/q
    (kept, probability q), so E[out] = x and evaluation needs no rescaling. Fills ``mask``
    (the cache for the backward pass).

    The mask is drawn as 16-bit integers straight from the bit generator (four per 64-bit draw,
    about three times faster than float uniforms), so q = ``threshold``/65536 exactly and the
    scale uses that exact q.
    """
    bits = _in_memory_order_of(dropout_bits(rng, x.size), mask)   # stream through memory
    np.less(bits, threshold, out=mask)          # 1.0 where kept, 0.0 where dropped
    mask *= 65536.0 / threshold
    np.multiply(x, mask, out=out)
    return out


def dropout_bits(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` 16-bit draws for a dropout mask, (size,): four from each 64-bit word."""
    return rng.bit_generator.random_raw(-(-size // 4)).view(np.uint16)[:size]


def dropout_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """dL/dx = dout ⊙ mask, written into ``dout``."""
    dout *= mask
    return dout


def _in_memory_order_of(flat: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``flat`` shaped like ``like`` with the same memory order (row- or column-major)."""
    if like.ndim == 2 and like.flags.f_contiguous and not like.flags.c_contiguous:
        return flat.reshape(like.shape[::-1]).T
    return flat.reshape(like.shape)


# ------------------------------------------------------------------------------ batch normalisation
def batchnorm_forward_train(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                            out: np.ndarray, mean: np.ndarray, var: np.ndarray,
                            inv_std: np.ndarray) -> np.ndarray:
    """Training mode, per unit over the batch: ``ẑ = (z − μ_B) / √(σ²_B + eps)``, ``out = γ ẑ + β``.

    z, out: (N, D); γ, β and the filled statistics ``mean`` = μ_B, ``var`` = σ²_B (biased, as the
    forward pass uses) and ``inv_std`` = 1/√(σ²_B + eps): (D,). ``z`` becomes ẑ in place (the
    cache for the backward pass, with ``inv_std``); ``out`` serves as scratch first.
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
    return out


def batchnorm_backward(dout: np.ndarray, xhat: np.ndarray, gamma: np.ndarray,
                       inv_std: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
                       scratch: np.ndarray) -> np.ndarray:
    """Turn ``dout`` = dL/d(out) (N, D) into dL/dz in place; fill ``dgamma`` and ``dbeta`` (D,).

    dγ = Σ dout·ẑ, dβ = Σ dout, and dz = (γ / (N σ)) (N dout − Σ dout − ẑ Σ dout·ẑ): μ_B and σ²_B
    depend on every row, so each row's gradient loses its share of the batch's mean and of the
    part along ẑ. ``scratch`` (N, D) is overwritten.
    """
    n = dout.shape[0]
    np.sum(dout, axis=0, out=dbeta)
    np.multiply(dout, xhat, out=scratch)
    np.sum(scratch, axis=0, out=dgamma)
    np.multiply(xhat, dgamma / n, out=scratch)
    dout -= dbeta / n
    dout -= scratch
    dout *= gamma * inv_std
    return dout


def batchnorm_update_running(running_mean: np.ndarray, running_var: np.ndarray,
                             mean: np.ndarray, var: np.ndarray, n: int, momentum: float) -> None:
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


def batchnorm_eval_affine(gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                          running_var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation mode's batch norm as a per-unit affine map, (scale, shift), each (D,):
    γ (z − μ) / √(σ² + eps) + β = z·scale + shift with scale = γ / √(σ² + eps), shift = β − μ·scale.
    The ONNX export writes the same two arrays."""
    scale = gamma / np.sqrt(running_var + eps)
    return scale, beta - running_mean * scale


def batchnorm_forward_eval(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                           running_mean: np.ndarray, running_var: np.ndarray, eps: float,
                           out: np.ndarray) -> np.ndarray:
    """Evaluation mode: ``out = γ (z − μ) / √(σ² + eps) + β`` with the running μ, σ², computed as
    the per-unit affine map ``z·scale + shift`` (one pass less); ``out`` may be ``z``."""
    scale, shift = batchnorm_eval_affine(gamma, beta, running_mean, running_var, eps)
    np.multiply(z, scale, out=out)
    out += shift
    return out
