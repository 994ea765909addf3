"""A thread pool of the engine's own for NumPy's BLAS and the fused kernels: the products'
parallel jobs and the kernels' parallel parts run on the same workers.

OpenBLAS's own worker threads spin between products (``benchmarks/blas_spin.py``), holding the
second core through every elementwise pass of a step, where a split of the fused kernels then
waits for it. OpenBLAS (0.3.27 and later) calls ``openblas_set_threads_callback_function``'s
callback with each product's jobs instead, which must run at the same time (they wait on each
other's packed panels). This callback is one numba ``cfunc``:

- from OpenBLAS: job 0 runs on the calling thread, job i on worker i, handed over through a
  control block of atomic 64-bit words (the job's function, data and argument, then a sequence
  number bumped with release order); the caller waits for each worker's "done" number. A lock
  word lets one product at a time use the workers.
- from :meth:`NativePool.run`, the same way: a fused kernel's :data:`JOB` in parts (the
  optimisers' updates, the batch gather, batch norm's passes and the hidden layers' chains:
  :mod:`~fmnist_mlp.nn.kernels.updates`, :mod:`~fmnist_mlp.nn.kernels.batches`,
  :mod:`~fmnist_mlp.nn.kernels.batchnorm`, :mod:`~fmnist_mlp.nn.kernels.chains`). A hand-off
  is a few atomic words, where a Python thread pool's takes tens of microseconds to wake.
- called with ``sync`` −1 by a worker thread of ours (a Python thread calling the cfunc through
  ctypes, so without the GIL): it serves its slot until stopped, spinning
  :data:`WORKER_SPIN` pauses after each job (about 5 ms: through a training step's gaps), then
  sleeping on a futex until the next.
- ``sync`` −2 stops the workers; −3 writes the number of jobs served and of background parts
  the workers ran into two int64s; −4 lets workers serve again (a new pool after a closed one)
  and sets their spin.
- ``sync`` −5 posts a background job (:meth:`NativePool.start`: the next training batch's
  gather) and returns; a spinning worker with no job of its own takes its parts one at a time,
  so the second core, idle while the calling thread runs the step's Python and one-call
  kernels, does them. −6 (:meth:`NativePool.finish`) runs the parts no worker took on the
  calling thread and waits for those in flight. Parts are claimed as tickets by compare-and-swap
  on counters that only grow, so each part runs once, on one thread.

The control block is a global of the cfunc's own LLVM module, so the callback and the workers,
the same compiled function, share it; nothing of it is seen from Python. No Python runs between
a product's jobs: a Ctrl-C is handled when the product returns. The jobs are OpenBLAS's own (or
the kernels' own, on their own parts), so no bit changes (tests/test_blas_pool.py).

:func:`pool_for_training` installs it around a training loop with the fused kernels and two to
eight BLAS threads. Measured (``python -m benchmarks.blas_pool``, and docs/performance.md): the
step of 784-1024-1024-10 at batch 512 (batch norm, dropout, AdamW) −9 %, of 784-1024-512-10 at
128 −10 %; with the updates as its jobs, the update of 784-256-128-10 at 128 (momentum) takes
21 against 34–39 µs. A forked child, which has no workers, is given OpenBLAS's threads back.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import platform
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from llvmlite import ir
from numba import cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic

from fmnist_mlp.nn.kernels import jit

_I64, _I32 = ir.IntType(64), ir.IntType(32)
_WORDS = 72
LOCK, STOP, COUNT, SPINS = 0, 1, 2, 3
SLOT = 8                                # a worker's words: one cache line from word 8·i
SEQ, DONE, FN, DATA, ARG = 0, 1, 2, 3, 4
# The background job's line (after the workers' 7 slots): its function, words and parts, and
# three ticket counters that only grow: the job's first ticket, one past its last, the next
# ticket to claim, and how many tickets' parts are done. Part p of the job is ticket first + p.
BG_FN, BG_DATA, BG_PARTS, BG_FIRST, BG_END, BG_CLAIM, BG_DONE = 64, 65, 66, 67, 68, 69, 70
BG_BY_WORKERS = 71                      # the background parts the workers ran (a count)
# Pauses (about 23 ns each on this project's Zen 5) a thread spins before a futex sleep: a worker
# 200,000 (about 5 ms: through the gaps of a training step, asleep in a long pause); a caller
# waiting for a worker's part 2,000. Workers that slept after 2,000 (tens of microseconds) lost
# on small nets: 784-256-128 at batch 128 took 26 % longer a step, each product waking them.
WORKER_SPIN, CALLER_SPIN = 200_000, 2_000
MAX_WORKERS = 7
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE, _SYS_FUTEX = 128, 129, 202      # Linux x86-64


def _word(builder, index):
    """A pointer to word ``index`` of the module's control block (made on first use)."""
    block = builder.module.globals.get("fmnist_blas_pool")
    if block is None:
        block = ir.GlobalVariable(builder.module, ir.ArrayType(_I64, _WORDS), "fmnist_blas_pool")
        block.linkage = "internal"
        block.initializer = ir.Constant(ir.ArrayType(_I64, _WORDS), None)
        block.align = 64
    return builder.gep(block, [ir.Constant(_I32, 0), index])


@intrinsic
def _load(typingctx, index):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_word(builder, args[0]), "acquire", 8)
    return types.int64(types.intp), codegen


@intrinsic
def _store(typingctx, index, value):
    def codegen(context, builder, sig, args):
        builder.store_atomic(args[1], _word(builder, args[0]), "release", 8)
        return context.get_dummy_value()
    return types.none(types.intp, types.int64), codegen


@intrinsic
def _add(typingctx, index, value):
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _word(builder, args[0]), args[1], "acq_rel")
    return types.int64(types.intp, types.int64), codegen


@intrinsic
def _swap_if(typingctx, index, expected, new):
    def codegen(context, builder, sig, args):
        pair = builder.cmpxchg(_word(builder, args[0]), args[1], args[2], "acq_rel", "acquire")
        return builder.extract_value(pair, 1)
    return types.boolean(types.intp, types.int64, types.int64), codegen


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


def _futex(builder, index, op, value):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64], var_arg=True),
                                        "syscall")
    address = builder.ptrtoint(_word(builder, index), _I64)
    builder.call(fn, [ir.Constant(_I64, _SYS_FUTEX), address, ir.Constant(_I64, op), value,
                      ir.Constant(_I64, 0)])


@intrinsic
def _sleep_while(typingctx, index, value):
    """Sleep while word ``index``'s low 32 bits equal ``value``'s (a change, a wake-up or a
    signal ends it; the caller checks again)."""
    def codegen(context, builder, sig, args):
        _futex(builder, args[0], _FUTEX_WAIT_PRIVATE, builder.zext(builder.trunc(args[1], _I32), _I64))
        return context.get_dummy_value()
    return types.none(types.intp, types.int64), codegen


@intrinsic
def _wake(typingctx, index):
    def codegen(context, builder, sig, args):
        _futex(builder, args[0], _FUTEX_WAKE_PRIVATE, ir.Constant(_I64, 1 << 30))
        return context.get_dummy_value()
    return types.none(types.intp), codegen


@intrinsic
def _address(typingctx, pointer):
    def codegen(context, builder, sig, args):
        return builder.ptrtoint(args[0], _I64)
    return types.int64(types.voidptr), codegen


@intrinsic
def at(typingctx, address):
    """The int64 ``address`` as a pointer (for ``numba.carray``): how a job finds its arrays."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.int64), codegen


@intrinsic
def _put(typingctx, address, value):
    def codegen(context, builder, sig, args):
        builder.store(args[1], builder.inttoptr(args[0], _I64.as_pointer()))
        return context.get_dummy_value()
    return types.none(types.int64, types.int64), codegen


@intrinsic
def _run_job(typingctx, function, thread, data, argument):
    """OpenBLAS's ``dojob(thread, data, argument)`` through its address."""
    def codegen(context, builder, sig, args):
        kind = ir.FunctionType(ir.VoidType(), [_I32, ir.IntType(8).as_pointer(), _I32])
        builder.call(builder.inttoptr(args[0], kind.as_pointer()),
                     [builder.trunc(args[1], _I32), builder.inttoptr(args[2], ir.IntType(8).as_pointer()),
                      builder.trunc(args[3], _I32)])
        return context.get_dummy_value()
    return types.none(types.int64, types.int64, types.int64, types.int64), codegen


_SIGNATURE = types.void(types.int32, types.voidptr, types.int32, types.uintp, types.voidptr,
                        types.int32)


def _callback_source(sync, dojob, jobs, size, data, argument):
    if sync == -1:                                  # a worker: serve slot ``jobs`` until stopped
        base = SLOT * jobs
        # The last job served, not the last posted: a job posted before this thread got here
        # (the first product can come before a new worker runs) is still waiting for it.
        seen = _load(base + DONE)
        while True:
            spins, now, patience = 0, _load(base + SEQ), _load(SPINS)
            while now == seen:
                # While no job of its own waits: a part of the background job, if one is left.
                # A ticket is claimed by a swap from the value read, so one that was already
                # taken (or a job already finished) is never run twice or run late.
                ticket = _load(BG_CLAIM)
                if ticket < _load(BG_END) and _swap_if(BG_CLAIM, ticket, ticket + 1):
                    _run_job(_load(BG_FN), ticket - _load(BG_FIRST), _load(BG_DATA),
                             _load(BG_PARTS))
                    _add(BG_BY_WORKERS, 1)
                    _add(BG_DONE, 1)
                    spins = 0
                else:
                    spins += 1
                    if spins < patience:
                        _pause()
                    else:
                        _sleep_while(base + SEQ, now)
                        spins = 0
                now = _load(base + SEQ)
            seen = now
            if _load(STOP) != 0:
                return
            _run_job(_load(base + FN), jobs, _load(base + DATA), _load(base + ARG))
            _store(base + DONE, seen)
            _wake(base + DONE)
    if sync == -2:                                  # stop workers 1..jobs
        _store(STOP, 1)
        for w in range(1, jobs + 1):
            _add(SLOT * w + SEQ, 1)
            _wake(SLOT * w + SEQ)
        return
    if sync == -3:                      # the products served, the background parts workers ran
        _put(_address(data), _load(COUNT))
        _put(_address(data) + 8, _load(BG_BY_WORKERS))
        return
    if sync == -4:                                  # a new pool: nothing pending, may serve
        for w in range(1, MAX_WORKERS + 1):
            _store(SLOT * w + DONE, _load(SLOT * w + SEQ))
        _store(BG_END, _load(BG_CLAIM))
        _store(BG_DONE, _load(BG_CLAIM))
        _store(SPINS, np.int64(size))               # the workers' pauses before they sleep
        _store(STOP, 0)
        return
    if sync == -5:                      # post a background job of ``jobs`` parts (``size`` workers)
        ticket = _load(BG_CLAIM)                    # the last one is finished: none is left
        _store(BG_FN, _address(dojob))
        _store(BG_DATA, _address(data))
        _store(BG_PARTS, np.int64(jobs))
        _store(BG_FIRST, ticket)
        _store(BG_END, ticket + jobs)               # published: the workers may claim now
        for w in range(1, size + 1):                # and one asleep (idle 5 ms) wakes to it
            _wake(SLOT * w + SEQ)
        return
    if sync == -6:                                  # finish it: its parts left, here; then wait
        end = _load(BG_END)
        ticket = _load(BG_CLAIM)
        while ticket < end:
            if _swap_if(BG_CLAIM, ticket, ticket + 1):
                _run_job(_load(BG_FN), ticket - _load(BG_FIRST), _load(BG_DATA),
                         _load(BG_PARTS))
                _add(BG_DONE, 1)
            ticket = _load(BG_CLAIM)
        while _load(BG_DONE) < end:                 # a worker's part in flight
            _pause()
        return
    function, first = _address(dojob), _address(data)
    if jobs <= 1:
        _run_job(function, 0, first, argument)
        return
    while not _swap_if(LOCK, 0, 1):                 # one product at a time on the workers
        _pause()
    _add(COUNT, 1)
    for i in range(1, jobs):
        base = SLOT * i
        _store(base + FN, function)
        _store(base + DATA, first + i * np.int64(size))
        _store(base + ARG, argument)
        _add(base + SEQ, 1)
        _wake(base + SEQ)
    _run_job(function, 0, first, argument)
    for i in range(1, jobs):
        base = SLOT * i
        target, spins = _load(base + SEQ), 0
        done = _load(base + DONE)
        while done != target:
            spins += 1
            if spins < CALLER_SPIN:
                _pause()
            else:
                _sleep_while(base + DONE, done)
            done = _load(base + DONE)
    _store(LOCK, 0)


_compiled: list = []


def _callback():
    """The compiled callback (loaded from the kernel cache, or compiled, on first use)."""
    if not _compiled:
        _compiled.append(cfunc(_SIGNATURE, nopython=True,
                               cache=jit.CACHE is not None)(_callback_source))
    return _compiled[0]


_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t,
                          ctypes.c_void_p, ctypes.c_int)


@functools.cache
def openblas():
    """(set_threads_callback_function, get_num_threads) of NumPy's OpenBLAS, or None."""
    for path in glob.glob(os.path.join(os.path.dirname(np.__path__[0]), "numpy.libs", "*openblas*")):
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""),
                               ("openblas_", "64_"), ("openblas_", "")):
            setter = getattr(lib, f"{prefix}set_threads_callback_function{suffix}", None)
            count = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            if setter is not None and count is not None:
                setter.argtypes, count.restype = [ctypes.c_void_p], ctypes.c_int
                return setter, count
    return None


class NativePool:
    """Workers for NumPy's OpenBLAS products: one fewer than its threads. ``install`` (best before
    the process's first product: OpenBLAS's own threads then never start work); ``close``.
    OpenBLAS must not be given more threads while it is installed: a product with more jobs than
    workers would wait for ever (:func:`pool_for_training` installs it only for a training loop)."""

    def __init__(self, spin: int = WORKER_SPIN) -> None:
        found = openblas()
        if found is None:
            raise RuntimeError("this NumPy's BLAS has no set_threads_callback_function")
        self._setter, count = found
        self.workers = min(max(count() - 1, 0), MAX_WORKERS)
        self._address = _callback().address
        self._entry = _ENTRY(self._address)
        self._entry(-4, None, 0, spin, None, 0)
        self._background, self._keep = False, None
        self.parts = self.workers + 1
        self._threads = [threading.Thread(target=self._entry, args=(-1, None, w, 0, None, 0),
                                          name=f"blas-pool-{w}", daemon=True)
                         for w in range(1, self.workers + 1)]
        for thread in self._threads:
            thread.start()

    def install(self) -> None:
        _installed[0] = self
        self._setter(self._address)

    def run(self, job: int, words: int) -> None:
        """Run compiled ``job`` (its address; signature :data:`JOB`) in :attr:`parts` parts at
        once, part 0 on this thread, as a product's jobs run; ``words``: the address of what the
        job reads (an int64 array of its arrays' addresses and sizes, say)."""
        self._entry(0, job, self.parts, 0, words, self.parts)

    def start(self, job: int, words: int, parts: int, keep: object = None) -> None:
        """Post compiled ``job`` (as :meth:`run` takes it) in ``parts`` parts as background work,
        and return at once: a worker takes a part whenever it has no job of its own (between
        the step's products and passes, while this thread runs the step's Python and its
        one-call kernels), and :meth:`finish` does the parts left and waits for the rest. One
        background job at a time: a pending one is finished first. ``keep`` (what the parts read
        and write) is held until it is done."""
        self.finish()
        self._entry(-5, job, parts, self.workers, words, 0)
        self._background, self._keep = True, keep

    def finish(self) -> None:
        """Return when the background job (if one was started) is done: its parts that no
        worker took run here."""
        if self._background:
            self._entry(-6, None, 0, 0, None, 0)
            self._background, self._keep = False, None

    def _counts(self) -> tuple[int, int]:
        counts = (ctypes.c_int64 * 2)()
        self._entry(-3, None, 0, 0, ctypes.addressof(counts), 0)
        return counts[0], counts[1]

    @property
    def products(self) -> int:
        """Products (and :meth:`run`'s jobs) served so far, in this process."""
        return self._counts()[0]

    @property
    def background_parts(self) -> int:
        """Parts of background jobs the workers ran so far, in this process."""
        return self._counts()[1]

    def close(self) -> None:
        """Finish the background job, give OpenBLAS its own threads back, then stop and join
        the workers."""
        self.finish()
        self._setter(None)
        _installed[0] = None
        self._entry(-2, None, self.workers, 0, None, 0)
        for thread in self._threads:
            thread.join()


_installed: list[NativePool | None] = [None]


def installed() -> NativePool | None:
    """The pool serving this process's products, if one is installed."""
    return _installed[0]


# A kernel's job for :meth:`NativePool.run`: ``job(part, words, parts)`` does part ``part`` of
# ``parts`` (:func:`part_range`) of the work ``words`` (int64, read through :func:`at`) describes;
# every job's words fit in JOB_WORDS.
JOB = types.void(types.int32, types.voidptr, types.int32)
JOB_WORDS = 16


def compile_job(source):
    """``source`` compiled as a :data:`JOB` (cached with the kernels); its ``.address`` runs."""
    return cfunc(JOB, nopython=True, cache=jit.CACHE is not None)(source)


@jit.kernel
def part_range(count, part, parts):
    """[lo, hi) of part ``part`` of ``parts`` over ``range(count)``, cut at multiples of 16
    entries (a 64-byte line of float32) so no two parts write one cache line."""
    lo = count * part // parts // 16 * 16
    hi = count if part == parts - 1 else count * (part + 1) // parts // 16 * 16
    return lo, hi


def _forked_child() -> None:
    """A forked child has the callback but not the workers: OpenBLAS's own threads again."""
    pool = _installed[0]
    if pool is not None:
        pool._setter(None)
        # A background part in flight at the fork is the parent's: nothing here waits for it.
        pool._background = False
        _installed[0] = None


os.register_at_fork(after_in_child=_forked_child)


def available() -> bool:
    """Whether a pool can run here: a machine it is written for (x86-64 Linux: its pause
    instruction and futex system call) and a BLAS with the callback and 2 to 8 threads."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    found = openblas()
    return found is not None and 2 <= found[1]() <= MAX_WORKERS + 1


def wanted(hidden, kernels: str) -> bool:
    """Whether a training loop of this net pays for the pool (see the module's figures), where
    one is :func:`available` and none is installed already."""
    if kernels != "numba" or not hidden or _installed[0] is not None:
        return False
    return available()


@contextmanager
def pool_for_training(hidden, kernels: str) -> Iterator[NativePool | None]:
    """The pool, installed for the ``with`` block where :func:`wanted`, else None. A pool that
    cannot start (its compiled callback failing to load, say) leaves OpenBLAS's threads."""
    pool = None
    if wanted(hidden, kernels):
        try:
            pool = NativePool()
        except Exception:       # noqa: BLE001 - OpenBLAS's own threads do the same work
            pool = None
        else:
            pool.install()
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()
