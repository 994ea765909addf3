"""Batch normalisation's forward and backward in three and two compiled passes, NumPy's bits.

:func:`fmnist_mlp.nn.layers.batchnorm_forward_train` and :func:`~fmnist_mlp.nn.layers.batchnorm_backward`
make seven passes each way over the (N, D) batch; these kernels make the same float operations in
the same order in fewer passes. Where bits could part is the sums over the batch, so they are
summed in NumPy's order (below). Arrays come in memory order, as in
:mod:`fmnist_mlp.nn.kernels.chains`: ``units_along_rows`` when the memory is (D, N).
"""

from __future__ import annotations

import numpy as np
from numba import carray

from fmnist_mlp.nn.kernels import jit
from fmnist_mlp.nn.kernels.blas_pool import JOB_WORDS, at, part_range


# NumPy's sums over the batch, reproduced: a row-major (N, D) array is summed over axis 0 row
# after row; a feature-major one (its memory (D, N)) along each unit's contiguous row by NumPy's
# pairwise summation (numpy/_core/src/umath/loops_utils.h): a run of up to 128 in eight running
# sums r[j] of every eighth term from j, added as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
# and then the last n % 8 terms one by one (a run shorter than 8: from 0, term by term); a longer
# run split in halves, the left a multiple of 8, the halves' sums added. The same order gives the
# same bits, so batch norm stays bit-identical too (tests/test_kernels.py).
#
# The eight running sums are one 8-lane vector, and a block is a chain of 8-lane additions, each
# waiting for the last. Numba's SLP vectoriser is off, so written as scalars the lanes are added
# one by one (about 21 ns a block); :func:`fmnist_mlp.nn.kernels.jit.lane_sums` writes them as LLVM
# vectors, four units' chains side by side. A feature-major sum over 1024 units of 512 fell from
# 125 to 53 us, a sum of products from 187 to 82 (one thread, cache-warm).
_sums4, _dots4 = jit.lane_sums(4, False), jit.lane_sums(4, True)
_sums1, _dots1 = jit.lane_sums(1, False), jit.lane_sums(1, True)


@jit.kernel
def _pairwise_blocks(n, blocks, program):
    """NumPy's pairwise order for a run of ``n`` as a plan, the same for every unit: ``blocks``
    (start, length) left to right, each of at most 128, and ``program``, the additions in
    postfix (k ≥ 0: push block k's sum; −1: replace the top two by their sum). Returns
    (block count, program length); ``blocks`` and ``program`` must hold n // 48 + 2 and twice
    that. A loop over an explicit stack (64 deep: halves of a run of any int64 length), not
    recursion: numba's cache cannot reload a recursive function (a reloaded one crashed)."""
    stack = np.empty((64, 3), np.int64)             # (start, length, stage)
    top, n_blocks, n_ops = 0, 0, 0
    stack[0, 0], stack[0, 1], stack[0, 2] = 0, n, 0
    while top >= 0:
        lo, m, stage = stack[top, 0], stack[top, 1], stack[top, 2]
        if m <= 128:
            blocks[n_blocks, 0], blocks[n_blocks, 1] = lo, m
            program[n_ops] = n_blocks
            n_blocks, n_ops, top = n_blocks + 1, n_ops + 1, top - 1
            continue
        half = m // 2
        half -= half % 8
        if stage < 2:
            stack[top, 2] = stage + 1
            top += 1
            stack[top, 0] = lo if stage == 0 else lo + half
            stack[top, 1] = half if stage == 0 else m - half
            stack[top, 2] = 0
        else:
            program[n_ops] = -1
            n_ops, top = n_ops + 1, top - 1
    return n_blocks, n_ops


@jit.kernel
def pairwise_row_sums(a, b, with_b, lo, hi, total):
    """total[u] = Σ_i a[u, i] (·b[u, i] ``with_b``; ``b`` is ``a`` without) for lo ≤ u < hi:
    each row of the C-contiguous 2-D ``a`` summed in NumPy's pairwise order, four at a time."""
    n = a.shape[1]
    most = n // 48 + 2                  # a block cut from a longer run holds at least 57 terms
    blocks, program = np.empty((most, 2), np.int64), np.empty(2 * most, np.int64)
    n_blocks, n_ops = _pairwise_blocks(n, blocks, program)
    sums, stack = np.empty((4, n_blocks), a.dtype), np.empty(64, a.dtype)
    for u0 in range(lo, hi, 4):
        width = min(4, hi - u0)
        for k in range(n_blocks):
            start, m = blocks[k, 0], blocks[k, 1]
            if m < 8:                               # too short for a vector: NumPy adds from 0
                for t in range(width):
                    s = a.dtype.type(0)
                    for i in range(start, start + m):
                        s += a[u0 + t, i] * b[u0 + t, i] if with_b else a[u0 + t, i]
                    sums[t, k] = s
                continue
            if width == 4:
                four = _dots4(a, b, u0, start, m) if with_b else _sums4(a, b, u0, start, m)
                for t in range(4):
                    sums[t, k] = four[t]
            else:
                for t in range(width):
                    one = (_dots1(a, b, u0 + t, start, m) if with_b
                           else _sums1(a, b, u0 + t, start, m))
                    sums[t, k] = one[0]
            for t in range(width):                  # the last count % 8 terms, one by one
                s = sums[t, k]
                for i in range(start + m - m % 8, start + m):
                    s += a[u0 + t, i] * b[u0 + t, i] if with_b else a[u0 + t, i]
                sums[t, k] = s
        for t in range(width):
            top = 0
            for j in range(n_ops):
                op = program[j]
                if op >= 0:
                    stack[top] = sums[t, op]
                    top += 1
                else:
                    top -= 1
                    stack[top - 1] = stack[top - 1] + stack[top]
            total[u0 + t] = stack[0]


@jit.kernel
def _batch_sum(a, b, units_along_rows, lo, hi, total):
    """total[u] = Σ_n a (``b`` empty) or Σ_n a·b over the batch, for the units lo ≤ u < hi, in
    NumPy's order."""
    with_b = b.size > 0
    if units_along_rows:                            # memory (D, N): one unit per row
        pairwise_row_sums(a, b if with_b else a, with_b, lo, hi, total)
        return
    t = total[lo:hi]
    t[:] = a.dtype.type(0)
    for r in range(a.shape[0]):                     # memory (N, D): row after row
        ar = a[r][lo:hi]
        br = b[r][lo:hi] if with_b else ar
        for c in range(hi - lo):
            t[c] += ar[c] * br[c] if with_b else ar[c]


@jit.kernel
def batchnorm_forward(z, units_along_rows, lo, hi, gamma, beta, eps, mean, var, inv_std, out):
    """For the units lo ≤ u < hi: z ← ẑ = (z − μ_B)/√(σ²_B + eps) in place, out = γ ẑ + β;
    fills μ_B, σ²_B, 1/√(σ²_B + eps): :func:`fmnist_mlp.nn.layers.batchnorm_forward_train`'s
    operations, in three passes. Units are independent: any split of them gives the same bits."""
    n = z.shape[1] if units_along_rows else z.shape[0]
    count, one = z.dtype.type(n), z.dtype.type(1)
    _batch_sum(z, z[:0], units_along_rows, lo, hi, mean)
    for u in range(lo, hi):
        mean[u] = mean[u] / count
    if units_along_rows:                            # centre first: no cancellation in σ²
        for u in range(lo, hi):
            zu, mu = z[u], mean[u]
            for i in range(n):
                zu[i] = zu[i] - mu
    else:
        m = mean[lo:hi]
        for r in range(n):
            zr = z[r][lo:hi]
            for c in range(hi - lo):
                zr[c] = zr[c] - m[c]
    _batch_sum(z, z, units_along_rows, lo, hi, var)
    for u in range(lo, hi):
        var[u] = var[u] / count
        inv_std[u] = one / np.sqrt(var[u] + eps)
    if units_along_rows:
        for u in range(lo, hi):
            zu, ou, k, g, b = z[u], out[u], inv_std[u], gamma[u], beta[u]
            for i in range(n):
                x = zu[i] * k
                zu[i] = x
                ou[i] = x * g + b
    else:
        k, g, b = inv_std[lo:hi], gamma[lo:hi], beta[lo:hi]
        for r in range(n):
            zr, orow = z[r][lo:hi], out[r][lo:hi]
            for c in range(hi - lo):
                x = zr[c] * k[c]
                zr[c] = x
                orow[c] = x * g[c] + b[c]


@jit.kernel
def batchnorm_backward(dout, xhat, units_along_rows, lo, hi, gamma, inv_std, dgamma, dbeta):
    """For the units lo ≤ u < hi: dout ← dL/dz in place; fills dγ = Σ dout·ẑ and dβ = Σ dout:
    :func:`fmnist_mlp.nn.layers.batchnorm_backward`'s operations, in two passes."""
    n = dout.shape[1] if units_along_rows else dout.shape[0]
    count = dout.dtype.type(n)
    _batch_sum(dout, dout[:0], units_along_rows, lo, hi, dbeta)
    _batch_sum(dout, xhat, units_along_rows, lo, hi, dgamma)
    width = hi - lo
    mean_dbeta, mean_dgamma, scale = (np.empty(width, dout.dtype), np.empty(width, dout.dtype),
                                      np.empty(width, dout.dtype))
    for k in range(width):
        mean_dbeta[k] = dbeta[lo + k] / count
        mean_dgamma[k] = dgamma[lo + k] / count
        scale[k] = gamma[lo + k] * inv_std[lo + k]
    if units_along_rows:
        for k in range(width):
            du, xu, mb, mg, sc = dout[lo + k], xhat[lo + k], mean_dbeta[k], mean_dgamma[k], scale[k]
            for i in range(n):
                du[i] = ((du[i] - mb) - xu[i] * mg) * sc
    else:
        for r in range(n):
            dr, xr = dout[r][lo:hi], xhat[r][lo:hi]
            for c in range(width):
                dr[c] = ((dr[c] - mean_dbeta[c]) - xr[c] * mean_dgamma[c]) * scale[c]


# ------------------------------------------------------------------------------ the pool's jobs
# Both passes as jobs of the engine's thread pool (:meth:`blas_pool.NativePool.run`): each part
# takes its own units (a multiple of 16), found through the words the ``*_words`` kernels write:
# [rows, columns, units along rows, then the arrays' addresses]. Units are independent, so the
# bits are the same as one call's.


@jit.kernel
def forward_words(words, z, units_along_rows, gamma, beta, eps, mean, var, inv_std, out):
    """The forward job's words (``eps`` a one-entry array of the dtype)."""
    words[0], words[1], words[2] = z.shape[0], z.shape[1], units_along_rows
    words[3], words[4], words[5], words[6] = (z.ctypes.data, gamma.ctypes.data,
                                              beta.ctypes.data, eps.ctypes.data)
    words[7], words[8], words[9], words[10] = (mean.ctypes.data, var.ctypes.data,
                                               inv_std.ctypes.data, out.ctypes.data)


@jit.kernel
def backward_words(words, dout, xhat, units_along_rows, gamma, inv_std, dgamma, dbeta):
    """The backward job's words."""
    words[0], words[1], words[2] = dout.shape[0], dout.shape[1], units_along_rows
    words[3], words[4], words[5], words[6] = (dout.ctypes.data, xhat.ctypes.data,
                                              gamma.ctypes.data, inv_std.ctypes.data)
    words[7], words[8] = dgamma.ctypes.data, dbeta.ctypes.data


@jit.kernel
def _job_part(data, part, parts):
    """(words, rows, columns, units along rows, units, lo, hi) of a job's part."""
    w = carray(data, JOB_WORDS, np.int64)
    rows, cols, along_rows = w[0], w[1], w[2] != 0
    units = rows if along_rows else cols
    lo, hi = part_range(units, part, parts)
    return w, rows, cols, along_rows, units, lo, hi


def forward_job(dtype):
    def job(part, data, parts):
        w, rows, cols, along_rows, units, lo, hi = _job_part(data, part, parts)
        batchnorm_forward(carray(at(w[3]), (rows, cols), dtype), along_rows, lo, hi,
                          carray(at(w[4]), units, dtype), carray(at(w[5]), units, dtype),
                          carray(at(w[6]), 1, dtype)[0], carray(at(w[7]), units, dtype),
                          carray(at(w[8]), units, dtype), carray(at(w[9]), units, dtype),
                          carray(at(w[10]), (rows, cols), dtype))
    return job


def backward_job(dtype):
    def job(part, data, parts):
        w, rows, cols, along_rows, units, lo, hi = _job_part(data, part, parts)
        batchnorm_backward(carray(at(w[3]), (rows, cols), dtype),
                           carray(at(w[4]), (rows, cols), dtype), along_rows, lo, hi,
                           carray(at(w[5]), units, dtype), carray(at(w[6]), units, dtype),
                           carray(at(w[7]), units, dtype), carray(at(w[8]), units, dtype))
    return job
