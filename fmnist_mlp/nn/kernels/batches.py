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
"""

from __future__ import annotations

import threading

import numpy as np

from fmnist_mlp.data.facts import IMAGE_SIDE
from fmnist_mlp.nn.kernels import jit


@jit.kernel
def _gather(out, pixels, idx, scale, mean, std, standardize, flips, offsets, shift, side, sink):
    """out[i] = the inputs of image ``idx[i]`` of ``pixels`` ((N, side²) uint8): each byte b
    becomes ``(b · scale − mean) / std`` (``standardize`` False: ``b · scale``), as
    :func:`~fmnist_mlp.data.dataset.pixels_to_inputs` computes it; mirrored left–right where
    ``flips[i]`` (``flips`` empty: none), then moved by ``offsets[i] − shift`` with the batch's
    minimum in the uncovered border (``offsets`` empty: not moved). ``sink`` (1,) uint32 keeps
    the first pass's loads from being compiled away."""
    n = idx.size
    flip, move = flips.size > 0, offsets.size > 0
    # First touch every cache line of the batch's rows: these loads do not wait on each other,
    # so many are in flight at once, and the decoding below reads from the cache (the rows lie
    # at random in a split larger than the L3; measured 90 -> 60 us for 512 rows).
    touched = np.uint32(0)
    for i in range(n):
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
    for i in range(n):
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


class FusedBatches:
    """Fills a batch buffer from the training split's pixel bytes in one pass (loaded or compiled
    on creation)."""

    def __init__(self, dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._no_flips = np.empty(0, np.bool_)
        self._no_offsets = np.empty((0, 2), np.int64)
        self._sink = np.zeros(1, np.uint32)
        warm_up(self.dtype)

    def fill(self, out: np.ndarray, rows, idx: np.ndarray,
             flips: np.ndarray | None = None, offsets: np.ndarray | None = None,
             shift: int = 0) -> np.ndarray:
        """``out`` (len(idx), 784) ← rows ``idx`` of ``rows`` (an
        :class:`~fmnist_mlp.data.dataset.EncodedRows`: pixels, mean, std) as inputs, mirrored where
        ``flips`` and moved by ``offsets`` (a :class:`~fmnist_mlp.data.augment.Draws`)."""
        t = self.dtype.type
        _gather(out, rows.pixels, idx.astype(np.int64, copy=False), t(1.0 / 255.0), t(rows.mean),
                t(rows.std), (rows.mean, rows.std) != (0.0, 1.0),
                self._no_flips if flips is None else flips,
                self._no_offsets if offsets is None else offsets.astype(np.int64, copy=False),
                shift, IMAGE_SIDE, self._sink)
        return out


def warm_up(dtype=np.float32) -> None:
    """Load (or compile) the gather for inputs of ``dtype``: a call on a one-pixel image."""
    out, pixels, idx = np.zeros((1, 1), dtype), np.zeros((1, 1), np.uint8), np.zeros(1, np.int64)
    one = np.dtype(dtype).type(1)
    jit.load([lambda: _gather(out, pixels, idx, one, one, one, True, np.zeros(1, np.bool_),
                              np.zeros((1, 2), np.int64), 0, 1, np.zeros(1, np.uint32))])


def warm_in_background() -> threading.Thread:
    """Start numba's one-time set-up in a thread and return it (join it before building).

    The first kernel a process loads, even from the cache, sets up numba's compiler target:
    about 0.35 s, paid once per process. Started before the data loads, most of it is paid
    while the data loading waits on the disk and NumPy's copies, which release the GIL. It loads
    the gather's kernel; a failure here is left for the engine's own load to report.
    """
    def warm() -> None:
        try:
            warm_up()
        except Exception:   # noqa: BLE001 - the engine's build loads again, and says what failed
            pass

    thread = threading.Thread(target=warm, name="numba-warm-up", daemon=True)
    thread.start()
    return thread
