"""Where the model's numbers live: one owner for all memory, so the layers can read like formulas.

* :class:`ParameterSet` — the parameters (and, with the same layout, the gradients): a dict of
  named arrays that are views into one flat array, ``.flat``. An optimiser handed a parameter set
  updates all of it with a few large elementwise passes instead of many small ones.
* :class:`Workspace` — the per-batch work arrays each layer writes its output and cache into,
  allocated once per batch size and reused every step (allocating ~10 MB per step costs more
  than the elementwise work on it).
* :func:`optimizer_arrays` — an optimiser's state slots and scratch, laid out like its parameters,
  and how its update passes run over them (:class:`UpdateRunner`: split across threads when
  the arrays are large), allocated in one call, so :mod:`fmnist_mlp.nn.optim` reads as its formulas.

Memory layout is a private speed policy of these two, never a change in what the arrays hold:
``row`` keeps every array row-major (one example per row); ``feature`` stores the hidden
activations and their gradients unit by unit (a transposed view of a (width, N) array) and the
first weight matrix column-major, as PyTorch's ``Linear`` stores it. NumPy's ``matmul`` hands
either to BLAS without a copy; only sums over the batch (bias, batch-norm statistics) may differ in
the last bit, and dropout masks, drawn in memory order, fall on different units. Measured with
OpenBLAS on 2 cores (November 2026), ``feature`` made a 784-1024-512 step's products 7–20 %
faster at batch 128 and 20–39 % at batch 32, while a 784-256-128 net's were 3–7 % slower at batch
128 and 47 % slower at batch 32, so ``auto`` chooses it for wide first layers only. Evaluation
always uses row-major work arrays: for its large batches ``feature`` measured no faster.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import numpy as np

LAYOUTS = ("auto", "row", "feature")
# "auto" picks "feature" from this first-hidden-layer width up (measured: see the module docstring).
FEATURE_LAYOUT_MIN_WIDTH = 512


def resolve_layout(layout: str, hidden: Sequence[int]) -> str:
    """The memory layout to use, ``row`` or ``feature``, for a network with these hidden widths."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    return "feature" if hidden and hidden[0] >= FEATURE_LAYOUT_MIN_WIDTH else "row"


class ParameterSet(dict):
    """Named arrays (e.g. ``"layer0.W"``) that are views, back to back, of one flat array ``flat``.

    Entries are assigned *in place*: ``params[name] = value`` copies ``value`` into the existing
    view, so the views and ``flat`` can never drift apart. ``views_of(other_flat)`` lays the same
    names, shapes and memory orders over another flat array of the same size (an optimiser's
    state, a gradient buffer).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtype,
                 column_major: Sequence[str] = ()) -> None:
        super().__init__()
        self.layout = tuple((name, tuple(shape), name in column_major)
                            for name, shape in shapes.items())
        self.flat = np.zeros(sum(int(np.prod(s)) for _, s, _ in self.layout), dtype=dtype)
        for name, view in self.views_of(self.flat).items():
            dict.__setitem__(self, name, view)

    def views_of(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of ``flat`` with this set's names, shapes and memory orders."""
        assert flat.shape == self.flat.shape, (flat.shape, self.flat.shape)
        views, offset = {}, 0
        for name, shape, column_major in self.layout:
            part = flat[offset:offset + int(np.prod(shape))]
            views[name] = part.reshape(shape[::-1]).T if column_major else part.reshape(shape)
            offset += part.size
        return views

    @classmethod
    def from_layout(cls, layout, dtype) -> "ParameterSet":
        """A zeroed set with the names, shapes and memory orders of another set's ``layout``."""
        return cls({n: s for n, s, _ in layout}, dtype, [n for n, _, c in layout if c])

    def like(self) -> "ParameterSet":
        """A zeroed set with the same layout (the gradients of these parameters)."""
        return ParameterSet.from_layout(self.layout, self.flat.dtype)

    def __reduce__(self):
        """Copies and pickles are parameter sets too, over a copy of the flat array."""
        return _parameter_set_from, (self.layout, self.flat.copy())

    def __setitem__(self, name: str, value) -> None:
        if name not in self:
            raise KeyError(f"{name!r} is not a parameter of this set; names: {', '.join(self)}")
        target = self[name]
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ValueError(f"{name}: shape {value.shape} does not match {target.shape}")
        np.copyto(target, value, casting="same_kind")


def _parameter_set_from(layout, flat: np.ndarray) -> ParameterSet:
    params = ParameterSet.from_layout(layout, flat.dtype)
    params.flat[...] = flat
    return params


class LayerWork:
    """One hidden layer's arrays for one batch size: its output and what backward needs."""

    def __init__(self, n: int, width: int, dtype, feature_major: bool, dropout: bool,
                 batchnorm: bool) -> None:
        def array() -> np.ndarray:
            return np.empty((width, n), dtype).T if feature_major else np.empty((n, width), dtype)

        self.h = array()                                  # f(z): the activation output, (N, width)
        self.dh = array()                                 # dL/d(this layer's output)
        self.mask = array() if dropout else None          # inverted-dropout mask (0 or 1/q)
        self.dropped = array() if dropout else None       # h ⊙ mask: what the next layer sees
        self.xhat = array() if batchnorm else None        # z, normalised in place to ẑ
        stats = (lambda: np.empty(width, dtype)) if batchnorm else (lambda: None)
        self.mean, self.var, self.inv_std = stats(), stats(), stats()


class BatchWork:
    """All arrays one forward/backward pass over N examples writes into."""

    def __init__(self, n: int, input_size: int, hidden: Sequence[int], dtype, training: bool,
                 feature_major: bool, dropout: bool, input_dropout: bool,
                 batchnorm: bool) -> None:
        self.layers = [LayerWork(n, width, dtype, training and feature_major,
                                 training and dropout, training and batchnorm)
                       for width in hidden]
        with_input_dropout = training and input_dropout
        self.input_mask = np.empty((n, input_size), dtype) if with_input_dropout else None
        self.input_dropped = np.empty((n, input_size), dtype) if with_input_dropout else None


class Workspace:
    """The model's per-batch work arrays, one :class:`BatchWork` per (batch size, mode), kept for
    the few most recent sizes (a training size, its last partial batch, evaluation sizes)."""

    KEEP = 6

    def __init__(self, input_size: int, hidden: Sequence[int], dtype, layout: str,
                 dropout: bool, input_dropout: bool, batchnorm: bool) -> None:
        self._shape = (input_size, list(hidden), np.dtype(dtype))
        self._options = dict(feature_major=layout == "feature", dropout=dropout,
                             input_dropout=input_dropout, batchnorm=batchnorm)
        self._cache: OrderedDict[tuple[int, bool], BatchWork] = OrderedDict()

    def for_batch(self, n: int, training: bool) -> BatchWork:
        key = (n, training)
        work = self._cache.get(key)
        if work is None:
            work = BatchWork(n, *self._shape, training=training, **self._options)
            self._cache[key] = work
            if len(self._cache) > self.KEEP:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return work


# ------------------------------------------------------------------------------ work split over threads
class SplitRunner:
    """Runs ``work(lo, hi)`` over ``range(count)`` cut into independent parts, one per thread
    when the work is large: the first part on the calling thread, the others on a small pool of
    the runner's own (made on first use, shut down when ``owner`` is collected). NumPy's ufuncs
    and the fused kernels release the GIL, so the parts run in parallel while the BLAS threads
    are idle between matrix products. Each part is computed alone, in the same order, so any
    split gives the same bits. Serves the optimisers' updates over the flat arrays and the fused
    kernels' rows (:mod:`fmnist_mlp.nn.kernels.chains`)."""

    def __init__(self, owner: object, threads: int | None = None) -> None:
        self.threads = thread_count() if threads is None else threads
        self._owner, self._pool = owner, None

    def run(self, work, count: int, large: bool = True) -> None:
        """``work(lo, hi)`` over ``[0, count)``: split when ``large`` (the caller's measured
        threshold) and there are at least two units per thread, else in one call."""
        if not large or self.threads < 2 or count < 2 * self.threads:
            work(0, count)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="fmnist-split")
            weakref.finalize(self._owner, self._pool.shutdown, wait=False)
        bounds = [-(-count * k // self.threads) for k in range(self.threads + 1)]
        futures = [self._pool.submit(work, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
        work(bounds[0], bounds[1])
        for future in futures:
            future.result()


class UpdateRunner:
    """How an optimiser runs its elementwise passes over flat arrays of ``size`` entries: split
    across threads from :attr:`MIN_SIZE` entries up (:class:`SplitRunner`), else in one call."""

    MIN_SIZE = 1 << 19          # below this many entries a thread hand-off costs more than it saves

    def __init__(self, size: int, owner: object) -> None:
        self.size, self.split = size, SplitRunner(owner)

    def run(self, update, flat: tuple[np.ndarray, ...], lr: float) -> None:
        """``update(param, grad, lr, tmp, *slots)`` over matching slices of the flat arrays."""
        self.run_ranges(lambda lo, hi: update(*(a[lo:hi] for a in flat[:2]), lr,
                                              *(a[lo:hi] for a in flat[2:])))

    def run_ranges(self, update) -> None:
        """``update(lo, hi)`` over ranges of entries (a fused kernel indexes the flat arrays)."""
        self.split.run(update, self.size, large=self.size >= self.MIN_SIZE)


def thread_count() -> int:
    """Threads for elementwise updates: the BLAS thread limit when one is set, else the cores."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), 8)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


class OptimizerArrays:
    """An optimiser's arrays: ``state[slot][name]`` and the scratch ``tmp[name]``, each shaped
    like the parameter of that name, and ``runner``, which runs its elementwise passes.

    Over a :class:`ParameterSet` they lie like the parameters, views of flat arrays
    (``flat_state``, one per slot, and ``flat_tmp``), so one pass over the flat arrays pairs every
    parameter entry with its own state entry; ``layout`` is then the set's layout. Over plain
    dicts of arrays each is its own array and ``layout`` is None."""

    def __init__(self, params: Mapping[str, np.ndarray], slots: Sequence[str],
                 owner: object) -> None:
        self.layout = getattr(params, "layout", None)
        if self.layout is not None:
            self.flat_state = [np.zeros_like(params.flat) for _ in slots]
            self.flat_tmp = np.empty_like(params.flat)
            self.state = {slot: params.views_of(flat) for slot, flat in zip(slots, self.flat_state)}
            self.tmp = params.views_of(self.flat_tmp)
        else:
            self.flat_state, self.flat_tmp = [], None
            self.state = {slot: {k: np.zeros_like(v) for k, v in params.items()} for slot in slots}
            self.tmp = {k: np.empty_like(v) for k, v in params.items()}
        # One runner per optimiser (its thread pool is shut down when ``owner`` is collected).
        self.runner = UpdateRunner(self.flat_tmp.size if self.flat_tmp is not None else 0, owner)
