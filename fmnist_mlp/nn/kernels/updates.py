"""Every optimiser's step as one compiled pass over the flat arrays, weight decay folded in.

Each kernel is its optimiser's formula (:mod:`fmnist_mlp.nn.optim`) written per entry, with the
operations in the reference's order and every scalar cast to the arrays' dtype first, as NumPy
casts a Python float against a float32 array: so ``θ``, and every state array, come out
bit-identical to the NumPy update (tests/test_kernels.py checks it on arrays larger than the
caches). NumPy makes about eleven passes through memory for Adam and one Python call per pass;
a kernel makes one. The range ``[lo, hi)`` lets parts run in parallel: as jobs of the engine's
thread pool where the training loop installed one (:mod:`fmnist_mlp.nn.kernels.blas_pool`, the
workers that serve the products), else on the optimiser's runner.

Decoupled weight decay shrinks weight matrices only: the flat array is cut into segments (one per
named parameter, ``bounds``), and segment s is multiplied by ``factors[s]`` (1 − lr·λ for a
``.W``, exactly 1 for a bias, which changes no bit) before the step, as NumPy does in a pass of
its own.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from numba import carray

from fmnist_mlp.nn.kernels import blas_pool, jit
from fmnist_mlp.nn.kernels.blas_pool import JOB_WORDS, at, part_range

kernel = jit.kernel


# Each kernel walks the segments that meet [lo, hi) and takes slices of them, so its inner loop
# indexes from 0: numba then knows no index is negative, drops its wrap-around check, and LLVM
# vectorises the loop (indexing the flat arrays directly measured 4.6x slower for Adam).
@kernel
def sgd(lo, hi, bounds, factors, param, grad, lr):
    """θ ← θ·f − lr·g"""
    for s in range(factors.size):
        a, b, f = max(lo, bounds[s]), min(hi, bounds[s + 1]), factors[s]
        if a < b:
            p, dp = param[a:b], grad[a:b]
            for i in range(b - a):
                p[i] = p[i] * f - dp[i] * lr


@kernel
def momentum(lo, hi, bounds, factors, param, grad, velocity, mu, lr):
    """v ← μ·v + g;  θ ← θ·f − lr·v"""
    for s in range(factors.size):
        a, b, f = max(lo, bounds[s]), min(hi, bounds[s + 1]), factors[s]
        if a < b:
            p, dp, vel = param[a:b], grad[a:b], velocity[a:b]
            for i in range(b - a):
                v = vel[i] * mu + dp[i]
                vel[i] = v
                p[i] = p[i] * f - v * lr


@kernel
def nesterov(lo, hi, bounds, factors, param, grad, velocity, mu, lr):
    """v ← μ·v + g;  θ ← θ·f − lr·(μ·v + g)"""
    for s in range(factors.size):
        a, b, f = max(lo, bounds[s]), min(hi, bounds[s + 1]), factors[s]
        if a < b:
            p, dp, vel = param[a:b], grad[a:b], velocity[a:b]
            for i in range(b - a):
                g = dp[i]
                v = vel[i] * mu + g
                vel[i] = v
                p[i] = p[i] * f - (v * mu + g) * lr


@kernel
def adagrad(lo, hi, bounds, factors, param, grad, sum_sq, eps, lr):
    """G ← G + g²;  θ ← θ·f − lr·g / (√G + ε)"""
    for s in range(factors.size):
        a, b, f = max(lo, bounds[s]), min(hi, bounds[s + 1]), factors[s]
        if a < b:
            p, dp, acc = param[a:b], grad[a:b], sum_sq[a:b]
            for i in range(b - a):
                g = dp[i]
                total = acc[i] + g * g
                acc[i] = total
                p[i] = p[i] * f - g / (np.sqrt(total) + eps) * lr


@kernel
def rmsprop(lo, hi, bounds, factors, param, grad, sq_avg, rho, one_minus_rho, eps, lr):
    """s ← ρ·s + (1 − ρ)·g²;  θ ← θ·f − lr·g / (√s + ε)"""
    for s in range(factors.size):
        a, b, f = max(lo, bounds[s]), min(hi, bounds[s + 1]), factors[s]
        if a < b:
            p, dp, avg = param[a:b], grad[a:b], sq_avg[a:b]
            for i in range(b - a):
                g = dp[i]
                mean_sq = avg[i] * rho + g * g * one_minus_rho
                avg[i] = mean_sq
                p[i] = p[i] * f - g / (np.sqrt(mean_sq) + eps) * lr


@kernel
def adam(lo, hi, bounds, factors, param, grad, m, v, beta1, one_minus_beta1, beta2,
         one_minus_beta2, eps_hat, step):
    """m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;  θ ← θ·f − k·m / (√v + ε̂)

    with the bias corrections folded into two scalars, as the reference does:
    ε̂ = ε·√(1 − β₂ᵗ), k = lr·√(1 − β₂ᵗ) / (1 − β₁ᵗ)."""
    for s in range(factors.size):
        a, b, f = max(lo, bounds[s]), min(hi, bounds[s + 1]), factors[s]
        if a < b:
            p, dp, m1, m2 = param[a:b], grad[a:b], m[a:b], v[a:b]
            for i in range(b - a):
                g = dp[i]
                mi = m1[i] * beta1 + g * one_minus_beta1
                vi = m2[i] * beta2 + g * g * one_minus_beta2
                m1[i] = mi
                m2[i] = vi
                p[i] = p[i] * f - mi / (np.sqrt(vi) + eps_hat) * step


# ------------------------------------------------------------------------------ the optimisers' scalars
# Per optimiser class of nn/optim.py: its kernel and the scalars it takes, in the reference's
# arithmetic (Python floats, cast to the arrays' dtype by the caller, as NumPy casts them).
def _adam_scalars(opt, lr: float) -> tuple[float, ...]:
    bias1, root_bias2 = 1.0 - opt.beta1 ** opt.t, math.sqrt(1.0 - opt.beta2 ** opt.t)
    return (opt.beta1, 1.0 - opt.beta1, opt.beta2, 1.0 - opt.beta2, opt.eps * root_bias2,
            lr * root_bias2 / bias1)


# ------------------------------------------------------------------------------ the pool's jobs
# A formula as a job of the BLAS thread pool (:meth:`blas_pool.NativePool.run`): its part of the
# flat arrays, found through the words :class:`FusedUpdate` fills: [entries, segments, and the
# addresses of bounds, factors, θ, g, state 0, state 1, the scalars (cast to the arrays' dtype)].
# One factory per formula; the same kernel as the runner calls, so the same bits.


@kernel
def _job_arrays(data, part, parts, dtype):
    """(lo, hi, bounds, factors, θ, g, state 0, state 1, scalars) of a job's part, from its
    words (``data``)."""
    words = carray(data, JOB_WORDS, np.int64)
    n, segments = words[0], words[1]
    lo, hi = part_range(n, part, parts)
    return (lo, hi, carray(at(words[2]), segments + 1, np.int64),
            carray(at(words[3]), segments, dtype), carray(at(words[4]), n, dtype),
            carray(at(words[5]), n, dtype), carray(at(words[6]), n, dtype),
            carray(at(words[7]), n, dtype), carray(at(words[8]), 8, dtype))


# Each factory's job names its formula as a global: a closure over a kernel would not reload
# from numba's cache (a dispatcher pickles with an id of its process), and one source line
# serving several kernels through its globals would share one cache entry among them.
def _sgd_job(dtype):
    def job(part, data, parts):
        lo, hi, bounds, factors, p, g, _, _, s = _job_arrays(data, part, parts, dtype)
        sgd(lo, hi, bounds, factors, p, g, s[0])
    return job


def _momentum_job(dtype):
    def job(part, data, parts):
        lo, hi, bounds, factors, p, g, v, _, s = _job_arrays(data, part, parts, dtype)
        momentum(lo, hi, bounds, factors, p, g, v, s[0], s[1])
    return job


def _nesterov_job(dtype):
    def job(part, data, parts):
        lo, hi, bounds, factors, p, g, v, _, s = _job_arrays(data, part, parts, dtype)
        nesterov(lo, hi, bounds, factors, p, g, v, s[0], s[1])
    return job


def _adagrad_job(dtype):
    def job(part, data, parts):
        lo, hi, bounds, factors, p, g, acc, _, s = _job_arrays(data, part, parts, dtype)
        adagrad(lo, hi, bounds, factors, p, g, acc, s[0], s[1])
    return job


def _rmsprop_job(dtype):
    def job(part, data, parts):
        lo, hi, bounds, factors, p, g, avg, _, s = _job_arrays(data, part, parts, dtype)
        rmsprop(lo, hi, bounds, factors, p, g, avg, s[0], s[1], s[2], s[3])
    return job


def _adam_job(dtype):
    def job(part, data, parts):
        lo, hi, bounds, factors, p, g, m, v, s = _job_arrays(data, part, parts, dtype)
        adam(lo, hi, bounds, factors, p, g, m, v, s[0], s[1], s[2], s[3], s[4], s[5])
    return job


FORMULAS: dict[str, tuple[Any, Any, Any]] = {
    "SGD": (sgd, lambda opt, lr: (lr,), _sgd_job),
    "Momentum": (momentum, lambda opt, lr: (opt.momentum, lr), _momentum_job),
    "Nesterov": (nesterov, lambda opt, lr: (opt.momentum, lr), _nesterov_job),
    "Adagrad": (adagrad, lambda opt, lr: (opt.eps, lr), _adagrad_job),
    "RMSProp": (rmsprop, lambda opt, lr: (opt.rho, 1.0 - opt.rho, opt.eps, lr), _rmsprop_job),
    "Adam": (adam, _adam_scalars, _adam_job),
}


class FusedUpdate:
    """One optimiser's step over flat arrays laid out as ``layout`` (a ParameterSet's): the
    weight decay and the formula in one compiled pass, split over the engine's thread pool where
    one is installed, else over the optimiser's threads (``runner``, its own); the kernel loaded
    for the types of ``flat`` and ``state`` when made."""

    POOL_MIN_SIZE = 1 << 14     # entries; below, one part alone is quicker than a hand-off

    def __init__(self, optimizer, layout: Sequence[tuple[str, tuple[int, ...], bool]],
                 flat: np.ndarray, state: Sequence[np.ndarray], runner) -> None:
        self.kernel, self._scalars, job = FORMULAS[type(optimizer).__name__]
        sizes = [int(np.prod(shape)) for _, shape, _ in layout]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.decays = np.array([name.endswith(".W") for name, _, _ in layout])
        self.factors = np.ones(len(layout), flat.dtype)
        self.dtype = flat.dtype.type
        self.runner = runner
        self.warm_up(optimizer, flat, flat, state)
        # The same pass as a job of the BLAS pool, where one may be installed (compiled now, so
        # no step waits for it): its parts start at once, where the runner's threads take tens
        # of microseconds to wake.
        self._job, self._pooled, self._pooled_address = None, None, 0
        if flat.size >= self.POOL_MIN_SIZE and blas_pool.available():
            self._job = jit.load_job(lambda: blas_pool.compile_job(job(self.dtype)))
            self._scalars_out = np.zeros(8, flat.dtype)
            self._words = np.zeros(JOB_WORDS, np.int64)
            self._words_address = self._words.ctypes.data

    def warm_up(self, optimizer, param, grad, state) -> None:
        """Load (or compile) the kernel for these arrays' types: a call that updates nothing."""
        scalars = self._cast((1.0,) * (self.kernel.py_func.__code__.co_argcount - 6 - len(state)))
        jit.load([lambda: self.kernel(0, 0, self.bounds, self.factors, param, grad, *state,
                                      *scalars)])

    def step(self, optimizer, param: np.ndarray, grad: np.ndarray,
             state: Sequence[np.ndarray], lr: float) -> None:
        """Apply one step in place; ``optimizer.t`` already counts it."""
        decay = 1.0 - lr * optimizer.weight_decay if optimizer.weight_decay else 1.0
        self.factors[self.decays] = decay
        scalars = self._cast(self._scalars(optimizer, lr))
        pool = blas_pool.installed()
        words = self._words_for(param, grad, state) if pool is not None and self._job else 0
        if words:
            self._scalars_out[:len(scalars)] = scalars
            pool.run(self._job.address, words)
            return
        bounds, factors, run = self.bounds, self.factors, self.kernel
        self.runner.run_ranges(
            lambda lo, hi: run(lo, hi, bounds, factors, param, grad, *state, *scalars))

    def _words_for(self, param, grad, state) -> int:
        """The address of the job's words for these arrays (filled when they change), or 0 when
        the job cannot take them (it reads contiguous arrays of the flat array's dtype and size)."""
        arrays = (param, grad, *state)
        if self._pooled is None or any(a is not b for a, b in zip(arrays, self._pooled)):
            fits = all(a.dtype == self._scalars_out.dtype and a.flags.c_contiguous
                       and a.size == self.bounds[-1] for a in arrays)
            slots = [*state, param, param][:2]          # unused slots point at θ, never read
            words = [param.size, self.factors.size, self.bounds.ctypes.data,
                     self.factors.ctypes.data, param.ctypes.data, grad.ctypes.data,
                     slots[0].ctypes.data, slots[1].ctypes.data, self._scalars_out.ctypes.data]
            self._words[:len(words)] = words
            self._pooled, self._pooled_address = arrays, self._words_address if fits else 0
        return self._pooled_address

    def _cast(self, scalars: tuple[float, ...]) -> tuple[Any, ...]:
        return tuple(self.dtype(x) for x in scalars)
