"""What the training loop tells the world: its events, fanned out to a list of callbacks.

One calling convention: every event is a method taking one argument, the loop's
:class:`LoopEvent`, the same object throughout a run (read it during the call; it changes as the
loop goes on). The loop calls, in order::

    on_train_start(event)                    event.settings, event.state, event.run_dir
    per epoch: on_epoch_start(event)         event.epoch (1-based), event.num_batches
               on_batch(event)               event.batch, event.loss, event.acc (running means)
               on_epoch_end(event)           event.metrics, event.is_best, event.state
    on_train_end(event)                      event.status: finished | interrupted | failed |
                                             pruned; event.message; event.scores (finished)

The loop starts and ends every run it trains: ``on_train_end`` comes whatever stopped it, so
each callback can close what it holds. Each listener is one callback: the run recorder
(:mod:`fmnist_mlp.rundir.recorder`), the progress display, TensorBoard, early stopping below, a
sweep's pruning. A callback implements the events it needs; :class:`CallbackList` calls, in
list order, those that exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

EVENTS = ("on_train_start", "on_epoch_start", "on_batch", "on_epoch_end", "on_train_end")
ENDINGS = ("finished", "interrupted", "failed", "pruned")


@dataclass
class LoopEvent:
    """What every callback is told: the loop's settings and state, and where it is."""

    settings: Any                   # LoopSettings: epochs, batch sizes, patience, mixup
    state: Any                      # TrainState: epochs and steps done, the best epoch so far
    run_dir: Any = None             # where the run is kept (a Path), when it is kept
    epoch: int = 0                  # the epoch under way or just ended (1-based)
    num_batches: int = 0            # minibatches in this epoch
    batch: int = 0                  # minibatches done in this epoch
    loss: float = math.nan          # running mean training loss of this epoch so far
    acc: float = math.nan           # running training accuracy of this epoch so far
    metrics: dict[str, float] = field(default_factory=dict)   # the last finished epoch's
    is_best: bool = False           # that epoch has the best validation accuracy so far
    status: str = "running"         # at the end: one of ENDINGS
    message: str = ""               # why it ended, when not finished
    scores: dict[str, float] = field(default_factory=dict)    # the final (test) scores


class Callback:
    """A callback that does nothing: subclass it and override the events you need."""

    def on_train_start(self, event: LoopEvent) -> None:
        pass

    def on_epoch_start(self, event: LoopEvent) -> None:
        pass

    def on_batch(self, event: LoopEvent) -> None:
        pass

    def on_epoch_end(self, event: LoopEvent) -> None:
        pass

    def on_train_end(self, event: LoopEvent) -> None:
        pass


class CallbackList(Callback):
    """Fans each event out to its callbacks, in order. Listeners are looked up once, here, so a
    batch costs one call per callback that listens to batches (usually one or none)."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks: list[Any] = []
        for c in callbacks:             # a list inside a list is flattened: one call per event
            if isinstance(c, CallbackList):
                self.callbacks.extend(c.callbacks)
            elif c is not None:
                self.callbacks.append(c)
        self._listeners = {event: [getattr(c, event) for c in self.callbacks if hasattr(c, event)]
                           for event in EVENTS}

    def on_train_start(self, event: LoopEvent) -> None:
        self._tell("on_train_start", event)

    def on_epoch_start(self, event: LoopEvent) -> None:
        self._tell("on_epoch_start", event)

    def on_batch(self, event: LoopEvent) -> None:
        for listener in self._listeners["on_batch"]:
            listener(event)

    def on_epoch_end(self, event: LoopEvent) -> None:
        self._tell("on_epoch_end", event)

    def on_train_end(self, event: LoopEvent) -> None:
        """Every listener is told, even when an earlier one raises (each may hold open files);
        the first error is raised afterwards."""
        error: BaseException | None = None
        for listener in self._listeners["on_train_end"]:
            try:
                listener(event)
            except Exception as exc:        # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error

    def _tell(self, name: str, event: LoopEvent) -> None:
        for listener in self._listeners[name]:
            listener(event)


class EarlyStopping(Callback):
    """Stops training after ``patience`` epochs without a better validation accuracy, by setting
    ``state.early_stopped`` (the loop checks it before each epoch; checkpoints keep it).

    Must come before the run recorder in the list: the recorder saves the state it sets."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, event: LoopEvent) -> None:
        if event.state.stale_epochs >= self.patience:
            event.state.early_stopped = True
