"""Requests batched where that pays: the rows of every request that arrives while a forward pass
runs are scored together in the next one.

One pass at a time, in one worker thread (a pass of a few rows on the event loop itself, where
the hand-over would cost more than the arithmetic): the network is not thread safe, and a
matrix product of many rows costs far less per row than many products of one row (NumPy's BLAS
uses the cores within a pass). An idle server starts a pass at once, so a lone request never
waits for company; under load the passes grow by themselves, up to ``max_rows`` rows (a request
larger than that passes alone). Nothing queues without bound: the requests in flight are
bounded before they get here (:class:`fmnist_mlp.serve.exchange.Limits`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Callable

import numpy as np


class Batcher:
    def __init__(self, score: Callable[[np.ndarray], np.ndarray], executor: Executor,
                 max_rows: int = 4096, inline_rows: int = 0):
        self.score, self.executor, self.max_rows = score, executor, max_rows
        self.inline_rows = inline_rows           # passes this small run on the event loop
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.running: asyncio.Task | None = None
        self.passes = self.rows = 0              # counters for /metrics

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 784) raw pixels -> (n, 10) outputs, scored in the next pass."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((pixels, future))
        if self.running is None:
            self.running = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, taken = [], 0
                while self.pending and (not batch
                                        or taken + len(self.pending[0][0]) <= self.max_rows):
                    pixels, future = self.pending.pop(0)
                    if not future.cancelled():           # its client gave up (time limit)
                        batch.append((pixels, future))
                        taken += len(pixels)
                if not batch:
                    continue
                rows = np.concatenate([p for p, _ in batch]) if len(batch) > 1 else batch[0][0]
                try:
                    # A few rows take less time to score than to hand to a thread and back.
                    outputs = (self.score(rows) if len(rows) <= self.inline_rows else
                               await loop.run_in_executor(self.executor, self.score, rows))
                except Exception as exc:  # noqa: BLE001 - handed to every request of the pass
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.passes += 1
                self.rows += taken
                start = 0
                for pixels, future in batch:
                    if not future.done():
                        future.set_result(outputs[start:start + len(pixels)])
                    start += len(pixels)
        finally:
            self.running = None
