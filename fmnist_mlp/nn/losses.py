"""Output nonlinearities and losses, each returning the loss and its gradient w.r.t. the logits.

Shapes: ``logits`` (N, K), ``y`` (N,) integer labels, ``target`` (N, K) rows that sum to one.
Losses are means over the N examples (so the learning rate does not depend on the batch size);
the 1/N is folded into the returned gradient.
"""

from __future__ import annotations

import numpy as np

from fmnist_mlp.nn.activations import sigmoid

OUTPUTS = ("softmax", "sigmoid", "linear")
LOSSES = ("cross_entropy", "squared_error")


def one_hot_targets(y: np.ndarray, num_classes: int, label_smoothing: float, dtype) -> np.ndarray:
    """(N,) labels -> (N, K) targets: (1 − ε)·onehot + ε/K."""
    target = np.full((y.shape[0], num_classes), label_smoothing / num_classes, dtype=dtype)
    target[np.arange(y.shape[0]), y] += 1.0 - label_smoothing
    return target


def softmax(logits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise softmax; subtracting the row max makes exp() safe for logits of any size."""
    out = np.subtract(logits, logits.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def apply_output(kind: str, logits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The output units' nonlinearity: probabilities for softmax, σ for sigmoid, identity for linear."""
    if kind == "softmax":
        return softmax(logits, out)
    out = np.empty_like(logits) if out is None else out
    if kind == "sigmoid":
        sigmoid(logits, out)
    else:
        np.copyto(out, logits)
    return out


def softmax_cross_entropy(logits: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against ``target``; returns (loss, dlogits).

    Fused gradient: d/dz [−Σ_k t_k log softmax(z)_k] = softmax(z) − t (rows of t sum to 1).
    The log-softmax is formed as (z − max) − log Σ exp(z − max), finite for logits of ±1e4.
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sum_exp)
    loss = -float(np.einsum("ij,ij->", target, log_probs)) / n
    exp /= sum_exp                      # now the probabilities
    exp -= target
    exp *= 1.0 / n
    return loss, exp


def squared_error(kind: str, logits: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """The lecture's E = ½ Σ_k (o_k − t_k)², averaged over examples, with o = output(logits).

    dE/do = (o − t); chained through the output nonlinearity:
    sigmoid: · o(1 − o); linear: · 1; softmax: the full Jacobian, dz = o ⊙ (d − Σ_k d_k o_k).
    """
    n = logits.shape[0]
    out = apply_output(kind, logits)
    diff = out - target
    loss = 0.5 * float(np.einsum("ij,ij->", diff, diff)) / n
    diff *= 1.0 / n
    if kind == "sigmoid":
        diff *= out * (1.0 - out)
    elif kind == "softmax":
        diff -= np.einsum("ij,ij->i", diff, out)[:, None]
        diff *= out
    return loss, diff


def loss_and_dlogits(loss: str, output: str, logits: np.ndarray,
                     target: np.ndarray) -> tuple[float, np.ndarray]:
    """Dispatch: (mean loss, dL/dlogits (N, K)) for the configured loss and output units."""
    if loss == "cross_entropy":
        return softmax_cross_entropy(logits, target)
    return squared_error(output, logits, target)


def per_example_loss(loss: str, output: str, logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) losses without gradients, for evaluation."""
    if loss == "cross_entropy":
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.einsum("ij,ij->i", target, log_probs)
    diff = apply_output(output, logits) - target
    return 0.5 * np.einsum("ij,ij->i", diff, diff)


def loss_of_outputs(loss: str, outputs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) losses of network *outputs* (probabilities for softmax), e.g. averaged predictions."""
    if loss == "cross_entropy":
        tiny = np.finfo(outputs.dtype).tiny          # log(0) guard: a probability that underflowed
        return -np.einsum("ij,ij->i", target, np.log(np.maximum(outputs, tiny)))
    diff = outputs - target
    return 0.5 * np.einsum("ij,ij->i", diff, diff)
