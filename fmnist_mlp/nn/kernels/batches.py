"""A training batch in one compiled pass: gather its rows, decode pixel bytes, flip and shift.

The reference makes a pass per step (:mod:`fmnist_mlp.training.loop` and
:mod:`fmnist_mlp.data.augment`): ``np.take`` gathers the rows of float inputs, then each image is
mirrored where its coin says so, then shifted through a padded copy whose border is the batch's
minimum. :class:`FusedBatches` writes each output pixel once, read straight from its source
pixel: from float rows, or from the training split's pixel bytes through the 256-entry table
that :func:`fmnist_mlp.data.dataset.pixels_to_inputs` makes of them
(:class:`fmnist_mlp.data.dataset.EncodedRows`, a quarter of the memory). The random choices are
drawn by the reference's own call (:meth:`fmnist_mlp.data.augment.Augmentation.draw`), no
arithmetic is done on a pixel but the table's lookup, and the border is the same minimum, so the
batch is bit-identical to the reference's (tests/test_kernels.py).

Where nothing is drawn for a batch's pixels (no augmentation), the training loop gathers the next
batch ahead (:meth:`FusedBatches.start`): the engine's thread pool runs it as background work in
parts of 16 images, which its worker takes while the calling thread runs the step's Python and
one-call kernels and the second core would idle. The loop's next ``fill`` finishes it.
"""

from __future__ import annotations

import numpy as np

from numba import carray

from fmnist_mlp.data.facts import IMAGE_SIDE
from fmnist_mlp.nn.kernels import blas_pool, jit
from fmnist_mlp.nn.kernels.blas_pool import JOB_WORDS, at, part_range


@jit.kernel
def _gather(out, pixels, idx, scale, mean, std, standardize, flips, offsets, shift, side, sink,
            first, last):
    """out[i] = the inputs of image ``idx[i]`` of ``pixels`` ((N, side²) uint8), for
    first ≤ i < last: each byte b becomes ``(b · scale − mean) / std`` (``standardize`` False:
    ``b · scale``), as :func:`~fmnist_mlp.data.dataset.pixels_to_inputs` computes it; mirrored
    left–right where ``flips[i]`` (``flips`` empty: none), then moved by ``offsets[i] − shift``
    with the whole batch's minimum in the uncovered border (``offsets`` empty: not moved), so
    any cut into ranges gives the same batch. ``sink`` (1,) uint32 keeps the first pass's loads
    from being compiled away."""
    n = idx.size
    flip, move = flips.size > 0, offsets.size > 0
    # First touch every cache line of the batch's rows: these loads do not wait on each other,
    # so many are in flight at once, and the decoding below reads from the cache (the rows lie
    # at random in a split larger than the L3; measured 90 -> 60 us for 512 rows).
    touched = np.uint32(0)
    for i in range(first, last):
        row = pixels[idx[i]]
        for k in range(0, row.size, 64):
            touched += row[k]
    sink[0] = touched
    background = out.dtype.type(0)
    if move and n > 0:
        # The batch's minimum input is the input of its smallest byte: the decoding never
        # decreases (a product, a difference and a quotient by a positive std, each rounded).
        low = pixels[idx[0], 0]
        for i in range(n):
            row = pixels[idx[i]]
            for j in range(row.size):
                low = min(low, row[j])
        background = _decode(out, low, scale, mean, std, standardize)
    decoded = np.empty(side * side, out.dtype)      # a moved image's inputs, before the move
    for i in range(first, last):
        row, dest = pixels[idx[i]], out[i]
        mirrored = flip and flips[i]
        dy = offsets[i, 0] - shift if move else 0
        dx = offsets[i, 1] - shift if move else 0
        if not mirrored and dx == 0 and dy == 0:            # the image as it is: one run
            for k in range(row.size):
                dest[k] = _decode(out, row[k], scale, mean, std, standardize)
            continue
        # Decoded in one run of 784 first (short runs of 28 would leave most of each row to
        # the loop's one-at-a-time remainder), then moved as copies: the same values.
        for k in range(row.size):
            decoded[k] = _decode(out, row[k], scale, mean, std, standardize)
        lo, hi = max(0, -dx), min(side, side - dx)         # the columns that land inside
        for r in range(side):
            base, y = r * side, r + dy
            if y < 0 or y >= side:
                for c in range(side):
                    dest[base + c] = background
                continue
            for c in range(lo):
                dest[base + c] = background
            for c in range(hi, side):
                dest[base + c] = background
            # The row's columns lo..hi−1 come from one run of source columns; each run is sliced
            # before its loop, so the loop's index starts at 0 and the loop vectorises.
            dst = dest[base + lo:base + hi]
            if mirrored and hi > lo:    # column x of the mirrored image is column side−1−x
                # Counted down from an unsigned index, so numba adds no negative-index check:
                # 512 images flipped, 220 -> 170 us (a [::-1] slice was the slower copy).
                src = decoded[y * side + side - hi - dx:y * side + side - lo - dx]
                last = np.uint64(hi - lo - 1)
                for k in range(np.uint64(hi - lo)):
                    dst[k] = src[last - k]
            elif not mirrored:
                src = decoded[y * side + lo + dx:y * side + hi + dx]
                for k in range(hi - lo):
                    dst[k] = src[k]


@jit.kernel
def _decode(out, byte, scale, mean, std, standardize):
    """One byte as an input of ``out``'s dtype, in pixels_to_inputs' operations and order."""
    v = out.dtype.type(byte) * scale
    if standardize:
        v = (v - mean) / std
    return v


# ------------------------------------------------------------------------------ the pool's job
# The gather as a job of the engine's thread pool (:meth:`blas_pool.NativePool.run`): each part
# fills its own images, found through the words :func:`_gather_words` writes.


@jit.kernel
def _gather_words(words, out, pixels, idx, flips, offsets, shift, side, sinks, scalars,
                  standardize):
    """The job's words: sizes and addresses of the arrays, the shift, side and flag."""
    words[0], words[1], words[2] = idx.size, out.shape[1], pixels.shape[0]
    words[3], words[4], words[5] = out.ctypes.data, pixels.ctypes.data, idx.ctypes.data
    words[6], words[7] = flips.ctypes.data, flips.size
    words[8], words[9] = offsets.ctypes.data, offsets.shape[0]
    words[10], words[11], words[12] = shift, side, sinks.ctypes.data
    words[13], words[14] = scalars.ctypes.data, standardize


@jit.kernel
def _started_as(words, out, pixels, idx):
    """Whether ``words`` describe a plain gather of rows ``idx`` of ``pixels`` into ``out``."""
    return (words[0] == idx.size and words[1] == out.shape[1] and words[2] == pixels.shape[0]
            and words[3] == out.ctypes.data and words[4] == pixels.ctypes.data
            and words[5] == idx.ctypes.data and out.shape[0] == idx.size)


def _gather_job(dtype):
    def job(part, data, parts):
        w = carray(data, JOB_WORDS, np.int64)
        n, cols = w[0], w[1]
        first, last = part_range(n, part, parts)
        scalars = carray(at(w[13]), 3, dtype)
        _gather(carray(at(w[3]), (n, cols), dtype), carray(at(w[4]), (w[2], cols), np.uint8),
                carray(at(w[5]), n, np.int64), scalars[0], scalars[1], scalars[2], w[14] != 0,
                carray(at(w[6]), w[7], np.bool_), carray(at(w[8]), (w[9], 2), np.int64),
                w[10], w[11], carray(at(w[12] + 4 * part), 1, np.uint32), first, last)
    return job


class FusedBatches:
    """Fills a batch buffer from the training split's pixel bytes in one pass (loaded or compiled
    on creation)."""

    POOL_MIN_IMAGES = 32        # fewer: one part alone is quicker than a hand-off

    def __init__(self, dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._no_flips = np.empty(0, np.bool_)
        self._no_offsets = np.empty((0, 2), np.int64)
        self._sink = np.zeros(1, np.uint32)
        warm_up(self.dtype)
        # The same gather in parts on the engine's thread pool, where the training loop installs
        # one (compiled now, so no batch waits for it).
        self._job = None
        self._pending = None        # the pool running the batch started ahead, if one is
        if blas_pool.available():
            self._job = jit.load_job(lambda: blas_pool.compile_job(_gather_job(self.dtype.type)))
            self._words = np.zeros(JOB_WORDS, np.int64)
            self._words_address = self._words.ctypes.data
            self._sinks = np.zeros(blas_pool.MAX_WORKERS + 1, np.uint32)
            self._scalars = np.zeros(3, self.dtype)
            self._job_address = self._job.address
            self._ahead_words = np.zeros(JOB_WORDS, np.int64)
            self._ahead_words_address = self._ahead_words.ctypes.data
            self._ahead_sinks = np.zeros(self.AHEAD_MAX_PARTS, np.uint32)
            self._ahead_scalars = np.zeros(3, self.dtype)
            self._ahead_rows = None             # whose mean and std the scalars hold

    # A batch gathered ahead goes in parts of 16 images (about 2 µs each: the longest a product's
    # hand-off waits for a worker busy with one), at most 64 parts.
    AHEAD_PART, AHEAD_MAX_PARTS = 16, 64

    def _pool_takes(self, pool, out: np.ndarray, rows, idx: np.ndarray) -> bool:
        return (pool is not None and self._job is not None and len(idx) >= self.POOL_MIN_IMAGES
                and out.dtype == self.dtype and out.flags.c_contiguous
                and out.shape == (len(idx), rows.pixels.shape[1])
                and rows.pixels.flags.c_contiguous and rows.pixels.dtype == np.uint8)

    def start(self, out: np.ndarray, rows, idx: np.ndarray) -> bool:
        """Begin filling ``out`` with rows ``idx`` of ``rows`` (no flips, no shifts) on the
        engine's thread pool as background work, and return at once: its idle worker gathers
        the batch while this thread runs a training step. :meth:`fill` of the same ``out`` and
        ``idx`` finishes it (the same bits as a gather there). Returns False, starting nothing,
        where no pool is installed or the batch is not one it takes."""
        pool = blas_pool.installed()
        if pool is None or self._job is None:
            return False
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if not self._pool_takes(pool, out, rows, idx):
            return False
        self.finish()
        if self._ahead_rows is not rows:
            t = self.dtype.type
            self._ahead_scalars[:] = (t(1.0 / 255.0), t(rows.mean), t(rows.std))
            self._ahead_rows = rows
        _gather_words(self._ahead_words, out, rows.pixels, idx, self._no_flips,
                      self._no_offsets, 0, IMAGE_SIDE, self._ahead_sinks, self._ahead_scalars,
                      (rows.mean, rows.std) != (0.0, 1.0))
        parts = min(-(-len(idx) // self.AHEAD_PART), self.AHEAD_MAX_PARTS)
        # What the parts read and write stays referenced until they are done.
        pool.start(self._job_address, self._ahead_words_address, parts,
                   keep=(self, out, rows, idx))
        self._pending = pool
        return True

    def finish(self):
        """Wait for the batch :meth:`start` began, if any; returns its pool (None if nothing
        was started)."""
        pool, self._pending = self._pending, None
        if pool is not None:
            pool.finish()
        return pool

    def fill(self, out: np.ndarray, rows, idx: np.ndarray,
             flips: np.ndarray | None = None, offsets: np.ndarray | None = None,
             shift: int = 0) -> np.ndarray:
        """``out`` (len(idx), 784) ← rows ``idx`` of ``rows`` (an
        :class:`~fmnist_mlp.data.dataset.EncodedRows`: pixels, mean, std) as inputs, mirrored where
        ``flips`` and moved by ``offsets`` (a :class:`~fmnist_mlp.data.augment.Draws`)."""
        t = self.dtype.type
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if (self.finish() is not None and flips is None and offsets is None
                and _started_as(self._ahead_words, out, rows.pixels, idx)):
            return out                          # gathered ahead, while the last step ran
        flips = self._no_flips if flips is None else np.ascontiguousarray(flips, dtype=np.bool_)
        offsets = (self._no_offsets if offsets is None
                   else np.ascontiguousarray(offsets, dtype=np.int64))
        standardize = (rows.mean, rows.std) != (0.0, 1.0)
        pool = blas_pool.installed()
        if self._pool_takes(pool, out, rows, idx):
            self._scalars[:] = (t(1.0 / 255.0), t(rows.mean), t(rows.std))
            _gather_words(self._words, out, rows.pixels, idx, flips, offsets, shift, IMAGE_SIDE,
                          self._sinks, self._scalars, standardize)
            pool.run(self._job_address, self._words_address)
            return out
        _gather(out, rows.pixels, idx, t(1.0 / 255.0), t(rows.mean), t(rows.std), standardize,
                flips, offsets, shift, IMAGE_SIDE, self._sink, 0, len(idx))
        return out


def warm_up(dtype=np.float32) -> None:
    """Load (or compile) the gather for inputs of ``dtype`` (a call on a one-pixel image) and
    the check of a batch gathered ahead."""
    out, pixels, idx = np.zeros((1, 1), dtype), np.zeros((1, 1), np.uint8), np.zeros(1, np.int64)
    one = np.dtype(dtype).type(1)
    jit.load([lambda: _gather(out, pixels, idx, one, one, one, True, np.zeros(1, np.bool_),
                              np.zeros((1, 2), np.int64), 0, 1, np.zeros(1, np.uint32), 0, 1),
              lambda: _started_as(np.zeros(JOB_WORDS, np.int64), out, pixels, idx)])
