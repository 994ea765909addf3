"""Progress reporting on stderr: a tqdm bar per epoch on a terminal, else one plain line per epoch.

Stdout is kept for data (run paths, JSON), so nothing here ever writes to it. No colour is used,
so NO_COLOR is trivially honoured.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, TextIO

from fmnist_mlp.io.terminal import ProgressStream, progress_stream, show
from fmnist_mlp.rundir.files import format_epoch


class ProgressReporter:
    """A training-loop callback (:mod:`fmnist_mlp.training.callbacks`) that draws progress."""

    def __init__(self, total_epochs: int | None = None, quiet: bool = False,
                 stream: TextIO | None = None):
        self.stream = stream or progress_stream()     # the one door to the terminal
        self.total_epochs = total_epochs      # None: learnt from the loop's settings at the start
        self.use_bars = not quiet and _isatty(self.stream)
        self._bar: Any = None
        self._next_postfix = 0.0

    def on_train_start(self, settings: Any, state: Any) -> None:
        self.total_epochs = settings.epochs

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        if self.use_bars:
            from tqdm import tqdm

            self._bar = tqdm(total=num_batches, desc=f"epoch {epoch}/{self.total_epochs}",
                             unit="batch", file=self.stream, leave=False, dynamic_ncols=True)

    def on_batch(self, batch: int, loss: float, acc: float) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.monotonic()
        if now >= self._next_postfix:      # formatting the postfix every batch would cost time
            self._bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", refresh=False)
            self._next_postfix = now + 0.25

    def on_epoch_end(self, metrics: Mapping[str, float], state: Any, is_best: bool) -> None:
        self.close()
        self._line(format_epoch(metrics, self.total_epochs, is_best))

    def message(self, text: str) -> None:
        self.close()
        self._line(text)

    def _line(self, text: str) -> None:
        if self.stream is None or isinstance(self.stream, ProgressStream):
            show(text)
        else:                                   # a caller's own stream (tests, notebooks)
            self.stream.write(f"{text}\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
