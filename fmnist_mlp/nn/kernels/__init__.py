"""Fused kernels beside the NumPy reference: the one switch, ``kernels`` = auto | numpy | numba.

The NumPy layer functions (:mod:`fmnist_mlp.nn.layers`) and update formulas
(:mod:`fmnist_mlp.nn.optim`) are the lecture and the oracle. With the optional extra ``fast``
(numba) installed, compiled kernels take over the elementwise work: every optimiser's update in
one pass over the flat arrays (:mod:`fmnist_mlp.nn.kernels.updates`), the hidden layers'
bias + ReLU + dropout chain and its derivative and batch normalisation
(:mod:`fmnist_mlp.nn.kernels.chains`, :mod:`~fmnist_mlp.nn.kernels.batchnorm`), split over
threads when large, the training batch, gathered from the split's pixel bytes, decoded,
flipped and shifted in one pass (:mod:`fmnist_mlp.nn.kernels.batches`), and the softmax–cross-entropy
head around NumPy's exp and log (:mod:`fmnist_mlp.nn.kernels.head`). They do the
same float arithmetic in the same order, so their results are bit-identical to NumPy's; the tests
hold them to it. ``auto`` uses numba when it can be imported; ``numba`` without it is a one-line
error naming the extra. Compiled code is cached on disk (:mod:`fmnist_mlp.nn.kernels.jit`).
Around a training loop the products' threads are the engine's own, and the kernels' parallel
parts run on the same workers (:mod:`fmnist_mlp.nn.kernels.blas_pool`).
"""

from __future__ import annotations

from pathlib import Path

from fmnist_mlp.errors import require_extra

KERNELS = ("auto", "numpy", "numba")
RESOLVED = ("numpy", "numba")
EXTRA = "fast"

# Where compiled kernels are cached: set by the caller (the config's plan puts it beside the data
# cache) before the first kernel is compiled; None leaves them uncached (compiled once per process).
_cache_dir: list[Path | None] = [None]


def numba_available() -> bool:
    """True when numba can be imported (the ``fast`` extra is installed and works)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kernels(choice: str) -> str:
    """``numpy`` or ``numba`` for a ``kernels`` choice: ``auto`` is numba where it is installed.

    ``numba`` without numba raises MissingExtra, one line naming the extra to install.
    """
    if choice not in KERNELS:
        raise ValueError(f"kernels: {choice!r} is not one of {', '.join(KERNELS)}")
    if choice == "auto":
        return "numba" if numba_available() else "numpy"
    if choice == "numba":
        require_extra("numba", EXTRA, feature="train.kernels: numba")
    return choice


def set_cache_dir(path: str | Path | None) -> None:
    """Cache compiled kernels in ``path`` (made, private to the user, if missing). Takes effect if
    called before the first kernel loads in this process; later calls change nothing."""
    _cache_dir[0] = None if path is None else Path(path)


def cache_dir() -> Path | None:
    """The cache folder asked for with :func:`set_cache_dir` (None: none asked for)."""
    return _cache_dir[0]

