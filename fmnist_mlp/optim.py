"""Gradient-descent update rules, applied in place to named parameter arrays.

Every optimiser keeps its state keyed by parameter name (``"velocity/layer0.W"``, ``"m/layer0.W"``),
exports it as a flat dict of arrays (``.npz``-safe) and restores it exactly, so a resumed run
continues bit for bit. The learning rate is passed to each ``step`` by the caller's schedule; the
optimiser knows nothing of epochs.

Update formulas (g = gradient, lr = learning rate, t = step count from 1):
  sgd       θ ← θ − lr·g
  momentum  v ← μ·v + g;                 θ ← θ − lr·v
  nesterov  v ← μ·v + g;                 θ ← θ − lr·(g + μ·v)
  adagrad   G ← G + g²;                  θ ← θ − lr·g / (√G + ε)
  rmsprop   s ← ρ·s + (1 − ρ)·g²;        θ ← θ − lr·g / (√s + ε)
  adam      m ← β₁·m + (1 − β₁)·g;  v ← β₂·v + (1 − β₂)·g²
            θ ← θ − lr·m̂ / (√v̂ + ε),  m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)
Decoupled weight decay (``weight_decay`` = λ, as in AdamW) shrinks weights before the update,
θ ← θ − lr·λ·θ, for weight matrices only (names ending in ``.W``): biases are not decayed.
``adamw`` is ``adam`` under its usual name.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fmnist_mlp.errors import ConfigError

Arrays = Mapping[str, np.ndarray]


class Optimizer:
    """Base class: subclasses name their state ``slots`` and implement ``_update``."""

    slots: tuple[str, ...] = ()

    def __init__(self, params: Arrays, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self.state = {slot: {k: np.zeros_like(p) for k, p in params.items()} for slot in self.slots}
        # Scratch space per parameter: updates are computed without allocating in the hot loop.
        self._scratch = {k: np.empty_like(p) for k, p in params.items()}

    def step(self, params: Arrays, grads: Arrays, lr: float | None = None) -> None:
        """Apply one update to ``params`` in place from ``grads``."""
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        for name, param in params.items():
            if self.weight_decay and name.endswith(".W"):
                param *= 1.0 - lr * self.weight_decay
            self._update(name, param, grads[name], lr, self._scratch[name])

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float,
                tmp: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat copy of the state: ``{"t": int64, "<slot>/<param>": array, ...}``."""
        out = {"t": np.asarray(self.t, dtype=np.int64)}
        for slot, arrays in self.state.items():
            out.update({f"{slot}/{k}": v.copy() for k, v in arrays.items()})
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` exported; names and shapes must match."""
        expected = {"t"} | {f"{s}/{k}" for s, arrays in self.state.items() for k in arrays}
        if set(state) != expected:
            raise ValueError(f"optimiser state does not match {type(self).__name__}: missing "
                             f"{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}")
        self.t = int(state["t"])
        for slot, arrays in self.state.items():
            for k, arr in arrays.items():
                value = np.asarray(state[f"{slot}/{k}"])
                if value.shape != arr.shape:
                    raise ValueError(f"optimiser state {slot}/{k} has shape {value.shape}, "
                                     f"expected {arr.shape}")
                np.copyto(arr, value, casting="same_kind")


class SGD(Optimizer):
    def _update(self, name, param, grad, lr, tmp):
        np.multiply(grad, lr, out=tmp)
        param -= tmp


class Momentum(Optimizer):
    slots = ("velocity",)

    def __init__(self, params: Arrays, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = float(momentum), nesterov

    def _update(self, name, param, grad, lr, tmp):
        v = self.state["velocity"][name]
        v *= self.momentum
        v += grad
        if self.nesterov:
            np.multiply(v, self.momentum, out=tmp)
            tmp += grad
            tmp *= lr
        else:
            np.multiply(v, lr, out=tmp)
        param -= tmp


class Adagrad(Optimizer):
    slots = ("sum_sq",)

    def __init__(self, params: Arrays, lr: float, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.eps = float(eps)

    def _update(self, name, param, grad, lr, tmp):
        acc = self.state["sum_sq"][name]
        np.square(grad, out=tmp)
        acc += tmp
        np.sqrt(acc, out=tmp)
        tmp += self.eps
        np.divide(grad, tmp, out=tmp)
        tmp *= lr
        param -= tmp


class RMSProp(Optimizer):
    slots = ("sq_avg",)

    def __init__(self, params: Arrays, lr: float, rho: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.rho, self.eps = float(rho), float(eps)

    def _update(self, name, param, grad, lr, tmp):
        avg = self.state["sq_avg"][name]
        np.square(grad, out=tmp)
        tmp *= 1.0 - self.rho
        avg *= self.rho
        avg += tmp
        np.sqrt(avg, out=tmp)
        tmp += self.eps
        np.divide(grad, tmp, out=tmp)
        tmp *= lr
        param -= tmp


class Adam(Optimizer):
    slots = ("m", "v")

    def __init__(self, params: Arrays, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, name, param, grad, lr, tmp):
        m, v = self.state["m"][name], self.state["v"][name]
        b1, b2 = self.beta1, self.beta2
        m *= b1
        np.multiply(grad, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2
        np.square(grad, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        # lr·m̂/(√v̂ + ε) = (lr/(1−β₁ᵗ))·m / (√v/√(1−β₂ᵗ) + ε)
        bias1, bias2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / np.sqrt(bias2)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / bias1
        param -= tmp


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")


def make_optimizer(name: str, params: Arrays, lr: float, momentum: float = 0.9,
                   beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                   rho: float = 0.9, weight_decay: float = 0.0) -> Optimizer:
    """Build an optimiser by name; unused hyperparameters are ignored."""
    if lr <= 0:
        raise ConfigError(f"optimizer.lr: {lr!r} is not valid; expected a positive number")
    if name == "sgd":
        return SGD(params, lr, weight_decay)
    if name in ("momentum", "nesterov"):
        return Momentum(params, lr, momentum, weight_decay, nesterov=name == "nesterov")
    if name == "adagrad":
        return Adagrad(params, lr, eps, weight_decay)
    if name == "rmsprop":
        return RMSProp(params, lr, rho, eps, weight_decay)
    if name in ("adam", "adamw"):
        return Adam(params, lr, beta1, beta2, eps, weight_decay)
    raise ConfigError(f"optimizer.name: {name!r} is not valid; expected one of {', '.join(OPTIMIZERS)}")
