"""What the training loop tells the world: its events, fanned out to a list of callbacks.

The loop calls ``on_train_start(settings, state)`` once, then per epoch
``on_epoch_start(epoch, num_batches)``, ``on_batch(batch, loss, acc)`` (1-based, running means so
far) and ``on_epoch_end(metrics, state, is_best)``; a session adds ``on_train_end(summary)`` when
the run ends (``summary`` None when it did not finish). Each
listener is one callback: the run recorder (:mod:`fmnist_mlp.rundir.recorder`), the progress
display, TensorBoard, early stopping below, a sweep's pruning. A callback implements the events it
needs; :class:`CallbackList` calls, in list order, those that exist.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

EVENTS = ("on_train_start", "on_epoch_start", "on_batch", "on_epoch_end", "on_train_end")


class Callback:
    """A callback that does nothing: subclass it and override the events you need."""

    def on_train_start(self, settings: Any, state: Any) -> None:
        """Before the first epoch: the loop's settings (``epochs``, ...) and its starting state."""

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        pass

    def on_batch(self, batch: int, loss: float, acc: float) -> None:
        pass

    def on_epoch_end(self, metrics: dict[str, float], state: Any, is_best: bool) -> None:
        pass

    def on_train_end(self, summary: Mapping[str, Any] | None) -> None:
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

    def on_train_start(self, settings: Any, state: Any) -> None:
        for listener in self._listeners["on_train_start"]:
            listener(settings, state)

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        for listener in self._listeners["on_epoch_start"]:
            listener(epoch, num_batches)

    def on_batch(self, batch: int, loss: float, acc: float) -> None:
        for listener in self._listeners["on_batch"]:
            listener(batch, loss, acc)

    def on_epoch_end(self, metrics: dict[str, float], state: Any, is_best: bool) -> None:
        for listener in self._listeners["on_epoch_end"]:
            listener(metrics, state, is_best)

    def on_train_end(self, summary: Mapping[str, Any] | None) -> None:
        """Every listener is told, even when an earlier one raises (each may hold open files);
        the first error is raised afterwards."""
        error: BaseException | None = None
        for listener in self._listeners["on_train_end"]:
            try:
                listener(summary)
            except Exception as exc:        # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error


class EarlyStopping(Callback):
    """Stops training after ``patience`` epochs without a better validation accuracy, by setting
    ``state.early_stopped`` (the loop checks it before each epoch; checkpoints keep it).

    Must come before the run recorder in the list: the recorder saves the state it sets."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, metrics: dict[str, float], state: Any, is_best: bool) -> None:
        if state.stale_epochs >= self.patience:
            state.early_stopped = True
