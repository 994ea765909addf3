"""The one place numba is set up: how kernels are compiled, and their disk cache.

Every kernel is compiled with the same options, each with a reason:
``nogil`` so Python threads can run parts of a pass in parallel (where no engine pool is
installed); ``fastmath=False`` so no operation is reordered or contracted into a fused
multiply-add (the results stay bit-identical to NumPy's); ``error_model="numpy"`` so a division is plain IEEE (numba's default
"python" model checks every division for zero, which stops the loop from vectorising: measured
0.62x NumPy's time for Adam instead of 0.30x in the issue's measurements).

The cache: compiled code is kept in the folder :func:`fmnist_mlp.nn.kernels.set_cache_dir` named
(the config's plan puts it beside the data cache), made private (0700) when missing and used only
when it is a real folder the user owns that nobody else can write to, since numba reads its
index with pickle. ``NUMBA_CACHE_DIR``, when set, is the user's own choice and wins. A damaged
cache (a truncated or overwritten index or data file) is rebuilt: :func:`load` catches the failed
load, removes this package's cache files and compiles again.

Beside :mod:`fmnist_mlp.nn.kernels.blas_pool` (its cfunc, atomics and futex), one piece of
LLVM is written by hand here, :func:`lane_sums`: numba leaves its SLP vectoriser
off, and NumPy's pairwise sum keeps eight running sums that belong in one vector.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable, Iterable

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.nn.kernels import cache_dir

# The kernel modules whose cache files (numba names them "<module>.<function>-<line>.py<ver>.nbi"
# and ".nbc") this package may remove when they are damaged.
KERNEL_MODULES = ("updates", "chains", "batchnorm", "batches", "head", "blas_pool")


def _private_folder(path: Path) -> bool:
    """Make ``path`` (0700) if missing; True when it is a folder of ours nobody else can write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and os.access(path, os.W_OK))


def _choose_cache() -> Path | None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(numba.config.CACHE_DIR)
    wanted = cache_dir()
    if wanted is None or not _private_folder(wanted):
        return None
    numba.config.CACHE_DIR = str(wanted)      # read when each kernel below is decorated
    return wanted


CACHE: Path | None = _choose_cache()


def kernel(fn: Callable) -> Callable:
    """Compile ``fn`` lazily (per argument types) with the options above, cached when possible."""
    return numba.njit(nogil=True, fastmath=False, error_model="numpy",
                      cache=CACHE is not None)(fn)


# Numba's SLP vectoriser is off, so a block sum's eight running sums are added one lane at a time;
# these intrinsics write them as one LLVM vector (why, and the figures: kernels/batchnorm.py).
def lane_sums(units: int, products: bool):
    """An intrinsic ``f(a, b, u0, start, count)`` → the block sums of rows u0 … u0+units−1 of
    ``a`` (C-contiguous, 2-D) over ``[start, start + count − count % 8)``, 8 ≤ count ≤ 128: each
    ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))`` of the running sums r[j] of every
    eighth term from j (of a·b with ``products``), as a tuple; the caller adds the last
    count % 8 terms. These are NumPy's own operations for a block of its pairwise sum, in its
    order, with no fast-math flag on any of them (:mod:`fmnist_mlp.nn.kernels.batchnorm`)."""

    @intrinsic
    def vector_sums(typingctx, a, b, u0, start, count):
        if not (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" and a == b):
            return None                     # the vector loads need contiguous rows
        sig = types.UniTuple(a.dtype, units)(a, b, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            arr_t = signature.args[0]
            arrays = [context.make_array(arr_t)(context, builder, v) for v in args[:2]]
            u0, start, count = args[2:]
            vec_t = ir.VectorType(context.get_value_type(arr_t.dtype), 8)
            align = arr_t.dtype.bitwidth // 8
            intp = context.get_value_type(types.intp)

            def lanes(row, offset):             # the next 8 terms of one unit's row
                loaded = [builder.load(builder.bitcast(
                    cgutils.get_item_pointer(context, builder, arr_t, arr, [row, offset]),
                    vec_t.as_pointer()), align=align) for arr in arrays[:2 if products else 1]]
                return builder.fmul(*loaded) if products else loaded[0]

            rows = [builder.add(u0, ir.Constant(intp, t)) for t in range(units)]
            running = [cgutils.alloca_once_value(builder, lanes(row, start)) for row in rows]
            steps = builder.sdiv(count, ir.Constant(intp, 8))
            one = ir.Constant(intp, 1)
            with cgutils.for_range_slice(builder, one, steps, one) as (k, _):
                offset = builder.add(start, builder.mul(k, ir.Constant(intp, 8)))
                for row, r in zip(rows, running):
                    builder.store(builder.fadd(builder.load(r), lanes(row, offset)), r)
            sums = []
            for r in running:
                v = builder.load(r)
                e = [builder.extract_element(v, ir.Constant(ir.IntType(32), i)) for i in range(8)]
                sums.append(builder.fadd(builder.fadd(builder.fadd(e[0], e[1]),
                                                      builder.fadd(e[2], e[3])),
                                         builder.fadd(builder.fadd(e[4], e[5]),
                                                      builder.fadd(e[6], e[7]))))
            return context.make_tuple(builder, signature.return_type, sums)

        return sig, codegen

    return vector_sums


def load(warm_ups: Iterable[Callable[[], None]]) -> None:
    """Run each warm-up (a call of a kernel on tiny arrays: loads it from the cache or compiles
    it). A damaged cache makes a load raise; its files are then removed and everything compiled
    again, so a damaged cache costs one compile, never a crash."""
    warm_ups = list(warm_ups)
    try:
        for warm_up in warm_ups:
            warm_up()
    except Exception as exc:    # noqa: BLE001 - whatever a damaged file makes pickle raise
        if CACHE is None or not clear_cache(CACHE):
            raise _cannot_compile(exc) from exc
        try:
            for warm_up in warm_ups:
                warm_up()
        except Exception as again:      # noqa: BLE001 - not the cache: numba itself fails here
            raise _cannot_compile(again) from again


def load_job(make: Callable[[], Any]) -> Any:
    """``make()`` (a compiled cfunc, loaded from the cache or compiled), through :func:`load`'s
    repair of a damaged cache."""
    made: list = []
    load([lambda: made.append(make())])
    return made[-1]


def _cannot_compile(exc: Exception) -> FmnistMlpError:
    """A broken numba install is the user's to fix, in one line, not a compiler's traceback."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return FmnistMlpError(f"the fused kernels could not be compiled ({type(exc).__name__}: "
                          f"{first}); train.kernels: numpy runs the NumPy reference")


def clear_cache(folder: Path) -> int:
    """Remove this package's kernel cache files under ``folder`` (regular files only, no link
    followed); returns how many were removed."""
    removed = 0
    for root, _, names in os.walk(folder):          # os.walk does not follow links to folders
        for name in names:
            if (name.partition(".")[0] in KERNEL_MODULES and name.endswith((".nbi", ".nbc"))
                    and stat.S_ISREG(os.lstat(os.path.join(root, name)).st_mode)):
                os.unlink(os.path.join(root, name))
                removed += 1
    return removed
