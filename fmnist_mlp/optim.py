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

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn.layout import is_column_major, views_of

Arrays = Mapping[str, np.ndarray]


class Optimizer:
    """Base class: subclasses name their state ``slots`` and implement ``_update``.

    ``_update(param, grad, lr, tmp, *slot_arrays)`` works on any matching arrays. When the
    parameters and gradients each lie back to back in one buffer, as :class:`~fmnist_mlp.nn.MLP`
    lays them out, it runs once over the whole buffer (a few large ufunc calls per step);
    otherwise once per parameter.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, params: Arrays, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self._names = list(params)
        arrays = [params[k] for k in self._names]
        dtype = arrays[0].dtype if arrays else np.float64
        total = sum(p.size for p in arrays)
        # State and scratch space are single buffers with per-name views shaped and ordered in
        # memory like the params, so one elementwise pass over the whole buffer pairs each
        # parameter with its own state.
        self._flat_state = [np.zeros(total, dtype) for _ in self.slots]
        self._flat_tmp = np.empty(total, dtype)
        self.state = {slot: _views_like(flat, self._names, arrays)
                      for slot, flat in zip(self.slots, self._flat_state)}
        self._tmp = _views_like(self._flat_tmp, self._names, arrays)
        self._spans: tuple | None = None        # (param arrays, grad arrays, their flat spans)

    def step(self, params: Arrays, grads: Arrays, lr: float | None = None) -> None:
        """Apply one update to ``params`` in place from ``grads``."""
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        if self.weight_decay:
            for name, param in params.items():
                if name.endswith(".W"):
                    param *= 1.0 - lr * self.weight_decay
        names = list(params)
        if names == self._names:
            flat_param, flat_grad = self._flat_spans([params[k] for k in names],
                                                     [grads[k] for k in names])
            if flat_param is not None and flat_grad is not None:
                self._update_in_parts(flat_param, flat_grad, lr)
                return
        for name in names:
            self._update(params[name], grads[name], lr, self._tmp[name],
                         *(self.state[slot][name] for slot in self.slots))

    def _flat_spans(self, param_arrays: list[np.ndarray], grad_arrays: list[np.ndarray]):
        """The flat views covering params and grads (None where they are not one buffer), worked
        out once and reused while the same array objects are passed: a model's arrays stay put
        for its lifetime, and finding the spans costs as much as a small net's update."""
        cached = self._spans
        if (cached is not None and len(cached[0]) == len(param_arrays)
                and all(a is b for a, b in zip(cached[0], param_arrays))
                and all(a is b for a, b in zip(cached[1], grad_arrays))):
            return cached[2], cached[3]
        flat_param, flat_grad = contiguous_span(param_arrays), contiguous_span(grad_arrays)
        if flat_param is not None and flat_grad is not None and not _same_layout(
                param_arrays, grad_arrays, list(self._tmp.values())):
            flat_param = flat_grad = None
        self._spans = (param_arrays, grad_arrays, flat_param, flat_grad)
        return flat_param, flat_grad

    def _update_in_parts(self, flat_param: np.ndarray, flat_grad: np.ndarray, lr: float) -> None:
        """The update over the whole buffer, split across threads when it is large.

        The update is elementwise, so the parts are independent and the result is identical
        whatever the split; NumPy releases the GIL inside ufuncs, so the parts run in parallel
        while the BLAS threads are idle between matrix products.
        """
        arrays = (flat_param, flat_grad, self._flat_tmp, *self._flat_state)
        slices = _parts(flat_param.size)
        if len(slices) == 1:
            self._update(flat_param, flat_grad, lr, *arrays[2:])
            return
        futures = [_pool().submit(self._update, arrays[0][sl], arrays[1][sl], lr,
                                  *(a[sl] for a in arrays[2:])) for sl in slices]
        for future in futures:
            future.result()

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


# Below this many parameters a thread hand-off costs more than it saves.
_MIN_PARALLEL_SIZE = 1 << 19
_POOL: ThreadPoolExecutor | None = None


def _thread_count() -> int:
    """Threads for elementwise updates: the BLAS thread limit when one is set, else the cores."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), 8)
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1), 8))


@functools.lru_cache(maxsize=8)
def _parts(size: int) -> tuple[slice, ...]:
    """How an update over ``size`` entries is split: one slice per thread, or one slice."""
    parts = _thread_count() if size >= _MIN_PARALLEL_SIZE else 1
    bounds = np.linspace(0, size, parts + 1).astype(int)
    return tuple(slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_thread_count(), thread_name_prefix="optim")
    return _POOL


def _views_like(flat: np.ndarray, names: list[str], like: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Views of ``flat``, back to back, each shaped and ordered in memory like its ``like``."""
    return views_of(flat, {name: a.shape for name, a in zip(names, like)},
                    [name for name, a in zip(names, like) if is_column_major(a)])


def _same_layout(*groups: list[np.ndarray]) -> bool:
    """Whether the groups hold arrays of the same shapes and memory orders, position by position."""
    def orders(arrays: list[np.ndarray]) -> list[tuple]:
        return [(a.shape, is_column_major(a)) for a in arrays]

    return all(orders(group) == orders(groups[0]) for group in groups[1:])


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def contiguous_span(arrays: list[np.ndarray]) -> np.ndarray | None:
    """A 1-D view covering ``arrays`` when they lie back to back, in order, in one buffer."""
    if not arrays:
        return None
    dtype = arrays[0].dtype
    if any(a.dtype != dtype or not (a.flags.c_contiguous or a.flags.f_contiguous) for a in arrays):
        return None
    start = end = arrays[0].__array_interface__["data"][0]
    for a in arrays:
        if a.__array_interface__["data"][0] != end:
            return None
        end += a.nbytes
    owner = _owner(arrays[0])
    owner_start = owner.__array_interface__["data"][0]
    if (not owner.flags.c_contiguous or any(_owner(a) is not owner for a in arrays)
            or start < owner_start or end > owner_start + owner.nbytes):
        return None
    first = (start - owner_start) // dtype.itemsize
    return owner.reshape(-1)[first:first + (end - start) // dtype.itemsize]


class SGD(Optimizer):
    def _update(self, param, grad, lr, tmp):
        np.multiply(grad, lr, out=tmp)
        param -= tmp


class Momentum(Optimizer):
    slots = ("velocity",)

    def __init__(self, params: Arrays, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = float(momentum), nesterov

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
