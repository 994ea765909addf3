"""Progress reporting on stderr: a tqdm bar per epoch on a terminal, else one plain line per epoch;
either way the whole run's estimated time left (ETA) after each epoch.

Stdout is kept for data (run paths, JSON), so nothing here ever writes to it. No colour is used,
so NO_COLOR is trivially honoured.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from fmnist_mlp.io.printable import printable
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
        self._clock = RunClock()

    def on_train_start(self, event: Any) -> None:
        self.total_epochs = event.settings.epochs
        if event.run_dir is not None:
            self.message(f"run directory: {event.run_dir}")
        self._clock.start(event.state.epoch, event.settings.epochs)

    def on_epoch_start(self, event: Any) -> None:
        if self.use_bars:
            from tqdm import tqdm

            self._bar = tqdm(total=event.num_batches,
                             desc=f"epoch {event.epoch}/{self.total_epochs}", unit="batch",
                             file=self.stream, leave=False, dynamic_ncols=True)

    def on_batch(self, event: Any) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.monotonic()
        if now >= self._next_postfix:      # formatting the postfix every batch would cost time
            self._bar.set_postfix(loss=f"{event.loss:.4f}", acc=f"{event.acc:.4f}",
                                  run_eta=self._clock.left(event.epoch - 1 + event.batch
                                                           / max(event.num_batches, 1)),
                                  refresh=False)
            self._next_postfix = now + 0.25

    def on_epoch_end(self, event: Any) -> None:
        self.close()
        line = format_epoch(event.metrics, self.total_epochs, event.is_best)
        if event.state.epoch < self.total_epochs and not event.state.early_stopped:
            line += f"  eta {self._clock.left(event.state.epoch)}"
        self._line(line)

    def on_train_end(self, event: Any) -> None:
        self.close()

    def message(self, text: str) -> None:
        self.close()
        self._line(text)

    def _line(self, text: str) -> None:
        if isinstance(self.stream, ProgressStream):
            show(text)
        else:                                   # a caller's own stream (tests, notebooks)
            self.stream.write(printable(text, keep_newlines=True) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RunClock:
    """The whole run's time left, from the epochs this process has trained so far: (time so
    far) / (epochs done here) × (epochs left). A resumed run counts from where it resumed."""

    def __init__(self) -> None:
        self.t0, self.first, self.epochs = time.monotonic(), 0, 0

    def start(self, first_epoch: int, epochs: int) -> None:
        self.t0, self.first, self.epochs = time.monotonic(), first_epoch, epochs

    def left(self, epochs_done: float) -> str:
        """The estimate as text (``1m05s``), or ``?`` before anything is done."""
        done = epochs_done - self.first
        if done <= 0:
            return "?"
        seconds = (time.monotonic() - self.t0) / done * max(self.epochs - epochs_done, 0.0)
        return format_duration(seconds)


def format_duration(seconds: float) -> str:
    """``7s``, ``1m05s``, ``2h03m``: short enough for a progress line."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
