"""Hidden-unit nonlinearities and their derivatives, written in place.

Each derivative is expressed through the activation's *output* ``a = f(z)`` (σ' = σ(1−σ),
tanh' = 1−tanh², relu' = [a > 0]), so the backward pass needs no copy of the pre-activations.
All functions write into ``out`` / modify ``dout`` in place: the training loop reuses its buffers.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


class Activation(NamedTuple):
    forward: Callable[[np.ndarray, np.ndarray], None]   # (z, out) -> None, out = f(z)
    backward: Callable[[np.ndarray, np.ndarray], None]  # (dout, a) -> None, dout *= f'(z) given a = f(z)


def _linear_forward(z: np.ndarray, out: np.ndarray) -> None:
    if out is not z:
        np.copyto(out, z)


def _linear_backward(dout: np.ndarray, a: np.ndarray) -> None:
    pass  # f'(z) = 1


def sigmoid(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = σ(z)`` elementwise (``out`` may be ``z``): hidden units and sigmoid output units."""
    # σ(z) = ½(1 + tanh(z/2)): one transcendental call, and no overflow in exp(−z) for z ≪ 0.
    np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def _sigmoid_backward(dout: np.ndarray, a: np.ndarray) -> None:
    # dout *= a (1 − a)
    dout *= a
    dout -= dout * a


def _tanh_forward(z: np.ndarray, out: np.ndarray) -> None:
    np.tanh(z, out=out)


def _tanh_backward(dout: np.ndarray, a: np.ndarray) -> None:
    # dout *= 1 − a²
    dout -= dout * a * a


def _relu_forward(z: np.ndarray, out: np.ndarray) -> None:
    np.maximum(z, 0, out=out)


def _relu_backward(dout: np.ndarray, a: np.ndarray) -> None:
    # a > 0 exactly where z > 0; at the kink z = 0 the subgradient 0 is used.
    np.multiply(dout, a > 0, out=dout)


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(_linear_forward, _linear_backward),
    "sigmoid": Activation(sigmoid, _sigmoid_backward),
    "tanh": Activation(_tanh_forward, _tanh_backward),
    "relu": Activation(_relu_forward, _relu_backward),
}
