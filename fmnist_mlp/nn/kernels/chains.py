"""A hidden layer's elementwise chain in one compiled pass: bias + ReLU (+ dropout), and back;
batch normalisation's forward and backward in three and two passes.

The reference (:mod:`fmnist_mlp.nn.layers`) makes a pass through memory per operation: add the
bias, apply the activation, compare the random bits with the keep threshold, scale the mask,
multiply; and backward, multiply by the mask, then by [a > 0]; batch norm takes seven passes each
way. :class:`FusedChains` does the chain in one pass each way and batch norm in three forward and
two backward, with the same float operations in the same order, sums over the batch included
(:mod:`fmnist_mlp.nn.kernels.batchnorm`), so its results are bit-identical (tests/test_kernels.py). The dropout mask is drawn from the same NumPy bit stream
by the same call as the reference's, so a run's random stream, and its masks, do not depend on
the kernels. Fused here: ReLU and linear units; the sigmoid and tanh of the reference use
NumPy's vectorised transcendental functions, which a compiled loop does not reproduce bit for
bit, so those activations keep the NumPy chain.

Arrays are handled in memory order: a feature-major work array (the transposed view of a
row-major one, :mod:`fmnist_mlp.nn.workspace`) is passed as that row-major array, with its bias
running along rows instead of columns.
"""

from __future__ import annotations

import numpy as np

from numba import carray

from fmnist_mlp.nn.kernels import batchnorm, blas_pool, jit
from fmnist_mlp.nn.kernels.blas_pool import JOB_WORDS, at, part_range
from fmnist_mlp.nn.kernels.batchnorm import (batchnorm_backward, batchnorm_forward,
                                             pairwise_row_sums)
from fmnist_mlp.nn.layers import dropout_bits
from fmnist_mlp.nn.workspace import SplitRunner

FUSED_ACTIVATIONS = ("relu", "linear")


@jit.kernel
def _forward(z, lo, hi, b, bias_along_rows, relu, bits, threshold, scale, mask, dropped):
    """Rows lo ≤ r < hi: z ← f(z + b) in place; with ``bits`` (else empty): mask =
    [bits < threshold]·scale, dropped = z ⊙ mask. ``b`` empty: no bias. All 2-D arrays
    C-contiguous, one shape."""
    cols = z.shape[1]
    zero, one = z.dtype.type(0), z.dtype.type(1)
    with_bias, with_dropout = b.size > 0, bits.size > 0
    for r in range(lo, hi):
        zr = z[r]
        for c in range(cols):
            x = zr[c]
            if with_bias:
                x = x + (b[r] if bias_along_rows else b[c])
            if relu and not x > zero and x == x:    # np.maximum(x, 0): NaN stays, −0 → +0
                x = zero
            zr[c] = x
        if with_dropout:
            br, mr, dr = bits[r], mask[r], dropped[r]
            for c in range(cols):
                m = (one if br[c] < threshold else zero) * scale
                mr[c] = m
                dr[c] = zr[c] * m


@jit.kernel
def _backward(dout, lo, hi, a, relu, mask, db, units_along_rows):
    """Rows lo ≤ r < hi: dout ← dout ⊙ mask (``mask`` empty: none) ⊙ [a > 0] (``relu``), in place;
    with ``db`` (else empty), the bias gradient Σ_n dout too, in NumPy's order: each unit's row
    pairwise (``units_along_rows``, feature-major), or row after row over the units' columns
    (row-major: then lo, hi span every row)."""
    cols = dout.shape[1]
    zero, one = dout.dtype.type(0), dout.dtype.type(1)
    with_mask, with_bias = mask.size > 0, db.size > 0
    if with_bias and not units_along_rows:
        db[:] = zero
    for r in range(lo, hi):
        dr, ar = dout[r], a[r]
        for c in range(cols):
            d = dr[c]
            if with_mask:
                d = d * mask[r, c]
            if relu:
                d = d * (one if ar[c] > zero else zero)
            dr[c] = d
        if with_bias and not units_along_rows:
            for c in range(cols):
                db[c] += dr[c]
    if with_bias and units_along_rows:              # the rows just written, still in cache
        pairwise_row_sums(dout, dout, False, lo, hi, db)


@jit.kernel
def _dropout(x, bits, threshold, scale, mask, out):
    """mask = [bits < threshold]·scale, out = x ⊙ mask (flat, memory order)."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in range(x.size):
        m = (one if bits[i] < threshold else zero) * scale
        mask[i] = m
        out[i] = x[i] * m


# ------------------------------------------------------------------------------ the pool's jobs
# The chains as jobs of the engine's thread pool (:meth:`blas_pool.NativePool.run`): each part
# takes its own rows of the memory-order arrays, found through the words the ``*_words`` kernels
# write (sizes, flags, the arrays' addresses). Rows are independent: the same bits as one call.


@jit.kernel
def _forward_words(words, z, b, bias_along_rows, relu, bits, threshold, scale, mask, dropped):
    """The forward job's words (``scale`` a one-entry array of the dtype)."""
    words[0], words[1], words[2] = z.shape[0], z.shape[1], z.ctypes.data
    words[3], words[4], words[5], words[6] = b.ctypes.data, b.size, bias_along_rows, relu
    words[7], words[8], words[9] = bits.ctypes.data, bits.size > 0, threshold
    words[10], words[11], words[12] = scale.ctypes.data, mask.ctypes.data, dropped.ctypes.data


@jit.kernel
def _backward_words(words, dout, a, relu, mask, db, units_along_rows):
    """The backward job's words."""
    words[0], words[1] = dout.shape[0], dout.shape[1]
    words[2], words[3] = dout.ctypes.data, a.ctypes.data
    words[4], words[5], words[6] = relu, mask.ctypes.data, mask.size > 0
    words[7], words[8], words[9] = db.ctypes.data, db.size, units_along_rows


def _forward_job(dtype):
    def job(part, data, parts):
        w = carray(data, JOB_WORDS, np.int64)
        rows, cols = w[0], w[1]
        shape = (rows, cols) if w[8] != 0 else (0, 0)       # the dropout arrays, or none
        lo, hi = part_range(rows, part, parts)
        _forward(carray(at(w[2]), (rows, cols), dtype), lo, hi, carray(at(w[3]), w[4], dtype),
                 w[5] != 0, w[6] != 0, carray(at(w[7]), shape, np.uint16), w[9],
                 carray(at(w[10]), 1, dtype)[0], carray(at(w[11]), shape, dtype),
                 carray(at(w[12]), shape, dtype))
    return job


def _backward_job(dtype):
    def job(part, data, parts):
        w = carray(data, JOB_WORDS, np.int64)
        rows, cols = w[0], w[1]
        lo, hi = part_range(rows, part, parts)
        _backward(carray(at(w[2]), (rows, cols), dtype), lo, hi,
                  carray(at(w[3]), (rows, cols), dtype), w[4] != 0,
                  carray(at(w[5]), (rows, cols) if w[6] != 0 else (0, 0), dtype),
                  carray(at(w[7]), w[8], dtype), w[9] != 0)
    return job


class SplitUnits:
    """Runs a kernel over ranges of independent rows, split across threads when the array is
    large (:class:`fmnist_mlp.nn.workspace.SplitRunner`: the first part on the calling thread),
    where no engine thread pool is installed: a training loop installs one, and the passes run
    as its jobs (:meth:`FusedChains._pool_for`) or, below its thresholds, in one call.
    Batch norm's units are split only where they are rows (feature-major): split by columns,
    each thread walks every row, and a thread hand-off costs about 40 us; measured (512 x 1024,
    forward + backward, one thread against two): row-major 294 against 367 us, feature-major
    642 against 450 us."""

    MIN_SIZE = 1 << 18          # below this many entries a thread hand-off costs more than it saves
    MIN_SIZE_ONE_PASS = 1 << 21     # the same for a one-pass chain (tens of microseconds)

    def __init__(self, owner: object, threads: int | None = None) -> None:
        self.split = SplitRunner(owner, threads)

    def run(self, kernel, a: np.ndarray, units_along_rows: bool = True,
            one_pass: bool = False) -> None:
        """``kernel(lo, hi)`` over ``a``'s rows (``units_along_rows``), else over its columns,
        in one call."""
        smallest = self.MIN_SIZE_ONE_PASS if one_pass else self.MIN_SIZE
        self.split.run(kernel, a.shape[0] if units_along_rows else a.shape[1],
                       large=(units_along_rows and a.size >= smallest
                              and blas_pool.installed() is None))   # its worker holds a core


def _memory_order(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """(``a`` as the C-contiguous array its memory holds, whether that is ``a`` transposed)."""
    if a.flags.c_contiguous:
        return a, False
    assert a.T.flags.c_contiguous, "work arrays are row- or column-major"
    return a.T, True


class FusedChains:
    """The fused chains for one model's activation and dtype (loaded or compiled on creation)."""

    def __init__(self, activation: str, dtype) -> None:
        assert activation in FUSED_ACTIVATIONS, activation
        self.relu = activation == "relu"
        self.dtype = np.dtype(dtype)
        self._empty = np.empty((0, 0), self.dtype)
        self._no_bits = np.empty((0, 0), np.uint16)
        self._no_bias = np.empty(0, self.dtype)
        tiny = np.zeros((1, 1), self.dtype)
        bits = np.zeros((1, 1), np.uint16)
        self._split = SplitUnits(self)
        self._jobs = None
        jit.load([lambda: _forward(tiny, 0, 1, tiny[0], False, self.relu, self._no_bits, 1,
                                   self.dtype.type(1), self._empty, self._empty),
                  lambda: _forward(tiny, 0, 1, tiny[0], False, self.relu, bits, 1,
                                   self.dtype.type(1), tiny, tiny),
                  lambda: _backward(tiny, 0, 1, tiny, self.relu, self._empty, self._no_bias,
                                    False),
                  lambda: _backward(tiny, 0, 1, tiny, self.relu, tiny, tiny[0].copy(), True),
                  lambda: _dropout(tiny.ravel(), bits.ravel(), 1, self.dtype.type(1),
                                   tiny.ravel(), tiny.ravel()),
                  lambda: self._warm_batchnorm(tiny)])
        # Batch norm's passes in parts on the engine's thread pool, where the training loop
        # installs one (compiled now, so no step waits for them).
        if blas_pool.available():
            self._jobs = {name: jit.load_job(lambda make=make: blas_pool.compile_job(
                make(self.dtype.type))) for name, make in (
                    ("forward", _forward_job), ("backward", _backward_job),
                    ("bn_forward", batchnorm.forward_job), ("bn_backward", batchnorm.backward_job))}
            self._words = np.zeros(JOB_WORDS, np.int64)
            self._words_address = self._words.ctypes.data
            self._scalar = np.zeros(1, self.dtype)       # eps, or dropout's scale

    def _warm_batchnorm(self, tiny: np.ndarray) -> None:
        vec = tiny[0].copy()
        self.batchnorm_forward_train(tiny, vec, vec, 1e-5, tiny.copy(), vec.copy(), vec.copy(),
                                     vec.copy())
        self.batchnorm_backward(tiny, tiny, vec, vec, vec.copy(), vec.copy(), tiny.copy())

    def hidden_forward(self, h: np.ndarray, b: np.ndarray | None,
                       rng: np.random.Generator | None, threshold: int, mask: np.ndarray | None,
                       dropped: np.ndarray | None) -> np.ndarray:
        """``h ← f(h + b)`` in place (``b`` None: no bias); with ``rng``, inverted dropout as
        :func:`fmnist_mlp.nn.layers.dropout_forward` draws it, into ``mask`` and ``dropped``.
        Returns what the next layer sees."""
        z, transposed = _memory_order(h)
        bias = self._no_bias if b is None else b
        if rng is None:
            bits, threshold, scale, m, out = (self._no_bits, 1, self.dtype.type(1), self._empty,
                                              self._empty)
        else:
            bits = dropout_bits(rng, h.size).reshape(z.shape)
            scale, m, out = (self.dtype.type(65536.0 / threshold), _memory_order(mask)[0],
                             _memory_order(dropped)[0])
        pool = self._pool_for(z, True, self.CHAIN_POOL_MIN_SIZE)
        if pool is not None:
            self._scalar[0] = scale
            _forward_words(self._words, z, bias, transposed, self.relu, bits, threshold,
                           self._scalar, m, out)
            pool.run(self._jobs["forward"].address, self._words_address)
        else:
            self._split.run(lambda lo, hi: _forward(z, lo, hi, bias, transposed, self.relu, bits,
                                                    threshold, scale, m, out), z, one_pass=True)
        return h if rng is None else dropped

    def hidden_backward(self, dout: np.ndarray, a: np.ndarray, mask: np.ndarray | None,
                        db: np.ndarray | None = None) -> None:
        """dL/dz from dL/d(layer output) in place: ``dout ⊙ mask ⊙ f'(z)``, ``a = f(z)``; with
        ``db``, also the layer's bias gradient Σ_n dL/dz (:func:`fmnist_mlp.nn.layers.dense_backward`'s
        sum, the same bits) in the same pass."""
        if mask is None and not self.relu and db is None:
            return
        (d, transposed), am = _memory_order(dout), _memory_order(a)[0]
        m = self._empty if mask is None else _memory_order(mask)[0]
        bias = self._no_bias if db is None else db
        if db is not None and not transposed:   # the sums run over every row, in order: one call
            _backward(d, 0, d.shape[0], am, self.relu, m, bias, False)
            return
        pool = self._pool_for(d, True, self.CHAIN_POOL_MIN_SIZE)
        if pool is not None:
            _backward_words(self._words, d, am, self.relu, m, bias, transposed)
            pool.run(self._jobs["backward"].address, self._words_address)
            return
        self._split.run(lambda lo, hi: _backward(d, lo, hi, am, self.relu, m, bias, transposed), d,
                        one_pass=True)

    def batchnorm_forward_train(self, z: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                eps: float, out: np.ndarray, mean: np.ndarray, var: np.ndarray,
                                inv_std: np.ndarray) -> np.ndarray:
        """:func:`fmnist_mlp.nn.layers.batchnorm_forward_train` in three passes, same bits."""
        zm, transposed = _memory_order(z)
        eps, om = self.dtype.type(eps), _memory_order(out)[0]
        pool = self._pool_for(zm, transposed, self.BN_POOL_MIN_SIZE)
        if pool is not None:
            self._scalar[0] = eps
            batchnorm.forward_words(self._words, zm, transposed, gamma, beta, self._scalar,
                                    mean, var, inv_std, om)
            pool.run(self._jobs["bn_forward"].address, self._words_address)
            return out
        self._split.run(lambda lo, hi: batchnorm_forward(zm, transposed, lo, hi, gamma, beta, eps,
                                                         mean, var, inv_std, om),
                        zm, units_along_rows=transposed)
        return out

    def batchnorm_backward(self, dout: np.ndarray, xhat: np.ndarray, gamma: np.ndarray,
                           inv_std: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
                           scratch: np.ndarray) -> np.ndarray:
        """:func:`fmnist_mlp.nn.layers.batchnorm_backward` in two passes, same bits (``scratch``,
        the reference's temporary, is not needed: products are summed as they are made)."""
        d, transposed = _memory_order(dout)
        xm = _memory_order(xhat)[0]
        pool = self._pool_for(d, transposed, self.BN_POOL_MIN_SIZE)
        if pool is not None:
            batchnorm.backward_words(self._words, d, xm, transposed, gamma, inv_std, dgamma,
                                     dbeta)
            pool.run(self._jobs["bn_backward"].address, self._words_address)
            return dout
        self._split.run(lambda lo, hi: batchnorm_backward(d, xm, transposed, lo, hi, gamma,
                                                          inv_std, dgamma, dbeta),
                        d, units_along_rows=transposed)
        return dout

    # Entries from which a pass in parts on the pool pays (smaller: one part is quicker than a
    # hand-off): batch norm's three or two passes from 16,384, a one-pass chain from 65,536.
    BN_POOL_MIN_SIZE, CHAIN_POOL_MIN_SIZE, POOL_MIN_ROWS = 1 << 14, 1 << 16, 32

    def _pool_for(self, a: np.ndarray, units_along_rows: bool, smallest: int):
        """The installed pool when a pass over ``a`` (memory order) pays for its parts: split by
        its rows (batch norm: its units along rows, feature-major). Measured for batch norm at
        512 × 256 (one call against two parts): feature-major forward 31 against 19 us, backward
        34 against 18; row-major, where each part walks every row, 43 against 75 and 39
        against 56."""
        pool = blas_pool.installed() if self._jobs is not None else None
        if (pool is None or not units_along_rows or a.size < smallest
                or a.shape[0] < self.POOL_MIN_ROWS):
            return None
        return pool

    def dropout_forward(self, x: np.ndarray, threshold: int, rng: np.random.Generator,
                        mask: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:func:`fmnist_mlp.nn.layers.dropout_forward` in one pass (C-contiguous arrays)."""
        _dropout(x.reshape(-1), dropout_bits(rng, x.size), threshold,
                 self.dtype.type(65536.0 / threshold), mask.reshape(-1), out.reshape(-1))
        return out
