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

These formulas are the reference. With ``kernels="numba"`` an optimiser over a model's flat
parameter set hands its whole step to one compiled pass (:mod:`fmnist_mlp.nn.kernels.updates`),
bit-identical to the passes below.
"""

from __future__ import annotations

import inspect
import math
from typing import Mapping

import numpy as np

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn.workspace import OptimizerArrays

__all__ = ["OPTIMIZERS", "Optimizer", "SGD", "Momentum", "Nesterov", "Adagrad", "RMSProp", "Adam",
           "hyperparameters", "make_optimizer"]

Arrays = Mapping[str, np.ndarray]


class Optimizer:
    """Base class: subclasses name their state ``slots`` and implement ``_update``.

    ``_update(param, grad, lr, tmp, *slot_arrays)`` applies the formula to any matching arrays.
    Handed a parameter set whose arrays are views of one flat array (the model's ``params`` and
    ``grads``, :class:`~fmnist_mlp.nn.workspace.ParameterSet`: a ``.flat`` array and
    ``.views_of``), it runs once over the flat arrays; handed plain dicts, once per name.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, params: Arrays, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.t = 0
        # State and scratch shaped like the parameters (views of flat arrays over a parameter
        # set), and who runs the passes: the workspace's business (nn/workspace.py).
        arrays = OptimizerArrays(params, self.slots, owner=self)
        self._layout, self.state, self._tmp = arrays.layout, arrays.state, arrays.tmp
        self._flat_state, self._flat_tmp, self._parallel = (arrays.flat_state, arrays.flat_tmp,
                                                            arrays.runner)
        self.kernels = "numpy"
        self._fused = None

    def use_kernels(self, kernels: str, params: Arrays) -> None:
        """``numba``: take each step over the flat arrays in one compiled pass (bit-identical to
        the formulas here) when ``params`` is a flat parameter set and this class is one of this
        module's; else, or for ``numpy``, the NumPy passes below run."""
        if kernels != "numba" or self._layout is None or type(self).__module__ != __name__:
            self.kernels, self._fused = "numpy", None
            return
        from fmnist_mlp.nn.kernels.updates import FusedUpdate

        self._fused = FusedUpdate(self, self._layout, params.flat, self._flat_state, self._parallel)
        self.kernels = "numba"

    def step(self, params: Arrays, grads: Arrays, lr: float | None = None) -> None:
        """Apply one update to ``params`` in place from ``grads``."""
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        if self._fused is not None and self._flat(params, grads):
            self._fused.step(self, params.flat, grads.flat, self._flat_state, lr)
            return
        if self.weight_decay:                   # decoupled: θ ← θ − lr·λ·θ, weights only
            for name, param in params.items():
                if name.endswith(".W"):
                    param *= 1.0 - lr * self.weight_decay
        if self._flat(params, grads):
            flat = (params.flat, grads.flat, self._flat_tmp, *self._flat_state)
            self._parallel.run(self._update, flat, lr)
            return
        for name in params:
            self._update(params[name], grads[name], lr, self._tmp[name],
                         *(self.state[slot][name] for slot in self.slots))

    def _flat(self, params: Arrays, grads: Arrays) -> bool:
        """True when ``params`` and ``grads`` lie like this optimiser's flat state."""
        return (self._layout is not None and getattr(params, "layout", None) == self._layout
                and getattr(grads, "layout", None) == self._layout)

    def _update(self, param: np.ndarray, grad: np.ndarray, lr: float, tmp: np.ndarray,
                *slot_arrays: np.ndarray) -> None:
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
        for slot, arrays in self.state.items():
            for k, arr in arrays.items():
                value = np.asarray(state[f"{slot}/{k}"])
                if value.shape != arr.shape:
                    raise ValueError(f"optimiser state {slot}/{k} has shape {value.shape}, "
                                     f"expected {arr.shape}")
        self.t = int(state["t"])
        for slot, arrays in self.state.items():
            for k, arr in arrays.items():
                np.copyto(arr, state[f"{slot}/{k}"], casting="same_kind")


class SGD(Optimizer):
    def _update(self, param, grad, lr, tmp):
        np.multiply(grad, lr, out=tmp)
        param -= tmp


class Momentum(Optimizer):
    slots = ("velocity",)
    nesterov = False

    def __init__(self, params: Arrays, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = float(momentum)

    def _update(self, param, grad, lr, tmp, v):
        v *= self.momentum
        v += grad
        if self.nesterov:
            np.multiply(v, self.momentum, out=tmp)
            tmp += grad
            tmp *= lr
        else:
            np.multiply(v, lr, out=tmp)
        param -= tmp


class Nesterov(Momentum):
    """Momentum with the look-ahead step (see the formula table above)."""

    nesterov = True


class Adagrad(Optimizer):
    slots = ("sum_sq",)

    def __init__(self, params: Arrays, lr: float, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.eps = float(eps)

    def _update(self, param, grad, lr, tmp, acc):
        np.square(grad, out=tmp)
        acc += tmp
        _step_by_root(param, grad, acc, self.eps, lr, tmp)


class RMSProp(Optimizer):
    slots = ("sq_avg",)

    def __init__(self, params: Arrays, lr: float, rho: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.rho, self.eps = float(rho), float(eps)

    def _update(self, param, grad, lr, tmp, avg):
        np.square(grad, out=tmp)
        tmp *= 1.0 - self.rho
        avg *= self.rho
        avg += tmp
        _step_by_root(param, grad, avg, self.eps, lr, tmp)


def _step_by_root(param: np.ndarray, grad: np.ndarray, accumulator: np.ndarray, eps: float,
                  lr: float, tmp: np.ndarray) -> None:
    """θ ← θ − lr·g / (√accumulator + ε), the step Adagrad and RMSProp share; ``tmp`` is scratch."""
    np.sqrt(accumulator, out=tmp)
    tmp += eps
    np.divide(grad, tmp, out=tmp)
    tmp *= lr
    param -= tmp


class Adam(Optimizer):
    slots = ("m", "v")

    def __init__(self, params: Arrays, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, param, grad, lr, tmp, m, v):
        b1, b2 = self.beta1, self.beta2
        m *= b1
        np.multiply(grad, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2
        np.square(grad, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        # lr·m̂/(√v̂ + ε) = k·m / (√v + ε·√(1−β₂ᵗ)) with k = lr·√(1−β₂ᵗ)/(1−β₁ᵗ): the bias
        # corrections fold into two scalars, saving a pass over the parameters.
        # Python floats, not NumPy float64 scalars: a float64 scalar would push every float32
        # pass through a float64 loop and a cast back (measured about 7x slower per pass).
        bias1, root_bias2 = 1.0 - b1 ** self.t, math.sqrt(1.0 - b2 ** self.t)
        np.sqrt(v, out=tmp)
        tmp += self.eps * root_bias2
        np.divide(m, tmp, out=tmp)
        tmp *= lr * root_bias2 / bias1
        param -= tmp


# The registry: a new optimiser is its class (its formula and state ``slots``), its entry here,
# and its hyperparameters' fields in the config schema (config/schema.py's OptimizerConfig).
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": Adagrad,
    "rmsprop": RMSProp,
    "adam": Adam,
    "adamw": Adam,          # adam under its usual name: the weight decay is always decoupled
}


def hyperparameters(cls: type[Optimizer]) -> tuple[str, ...]:
    """The keyword arguments an optimiser class takes besides ``params`` and ``lr``."""
    names = inspect.signature(cls.__init__).parameters
    return tuple(n for n in names if n not in ("self", "params", "lr"))


def make_optimizer(name: str, params: Arrays, lr: float, kernels: str = "numpy",
                   **settings: float) -> Optimizer:
    """Build the optimiser registered under ``name``. ``settings`` are the config's optimiser
    hyperparameters (momentum, beta1, beta2, eps, rho, weight_decay, ...): each class takes the
    ones its constructor names and ignores the rest, so one config section serves them all.
    ``kernels`` (auto | numpy | numba, :mod:`fmnist_mlp.nn.kernels`): who runs the update."""
    from fmnist_mlp.nn.kernels import resolve_kernels

    if lr <= 0:
        raise ConfigError(f"optimizer.lr: {lr!r} is not valid; expected a positive number")
    cls = OPTIMIZERS.get(name)
    if cls is None:
        raise ConfigError(f"optimizer.name: {name!r} is not valid; expected one of "
                          f"{', '.join(OPTIMIZERS)}")
    unknown = set(settings).difference(*(hyperparameters(c) for c in OPTIMIZERS.values()))
    if unknown:                         # a misspelt keyword would otherwise do nothing
        raise TypeError(f"make_optimizer() got unexpected keyword arguments {sorted(unknown)}")
    taken = hyperparameters(cls)
    optimizer = cls(params, lr, **{k: v for k, v in settings.items() if k in taken})
    optimizer.use_kernels(resolve_kernels(kernels), params)
    return optimizer
