"""The loop's events reach a list of callbacks; a run directory's names are spelled in one module."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from fmnist_mlp.rundir import layout
from fmnist_mlp.training.callbacks import Callback, CallbackList, EarlyStopping, LoopEvent

PACKAGE = Path(__file__).resolve().parents[1] / "fmnist_mlp"


class Log(Callback):
    def __init__(self, name, heard):
        self.name, self.heard = name, heard

    def on_epoch_end(self, event):
        self.heard.append((self.name, event.metrics["epoch"]))


class OnlyBatches:                      # a callback need not implement every event
    def __init__(self, heard):
        self.heard = heard

    def on_batch(self, event):
        self.heard.append(("batches", event.batch))


def test_each_event_reaches_every_callback_that_listens_in_list_order():
    heard = []
    callbacks = CallbackList([Log("a", heard), None, OnlyBatches(heard), Log("b", heard)])
    event = LoopEvent(SimpleNamespace(epochs=1), None)
    callbacks.on_train_start(event)
    callbacks.on_epoch_start(event)
    event.batch = 1
    callbacks.on_batch(event)
    event.metrics = {"epoch": 1}
    callbacks.on_epoch_end(event)
    callbacks.on_train_end(event)
    assert heard == [("batches", 1), ("a", 1), ("b", 1)]


def test_train_end_reaches_every_callback_even_when_one_fails():
    closed = []

    class Fails(Callback):
        def on_train_end(self, event):
            raise OSError("disk full")

    class Closes(Callback):
        def on_train_end(self, event):
            closed.append(event.status)

    event = LoopEvent(None, None, status="finished")
    with pytest.raises(OSError, match="disk full"):
        CallbackList([Fails(), Closes()]).on_train_end(event)
    assert closed == ["finished"]


def test_early_stopping_is_a_callback_that_sets_the_flag():
    state = SimpleNamespace(stale_epochs=1, early_stopped=False)
    stopping = EarlyStopping(patience=2)
    stopping.on_epoch_end(LoopEvent(None, state))
    assert not state.early_stopped
    state.stale_epochs = 2
    stopping.on_epoch_end(LoopEvent(None, state))
    assert state.early_stopped


def test_the_run_recorder_forwards_nothing():
    from fmnist_mlp.rundir.recorder import RunRecorder

    parameters = inspect.signature(RunRecorder).parameters
    assert "forward" not in parameters and "callback" not in parameters
    assert not hasattr(RunRecorder, "on_batch") and not hasattr(RunRecorder, "on_epoch_start")


def test_a_run_directory_name_is_built_and_parsed_in_one_place():
    name = layout.run_dir_name("20240101-000000", "my-run-2", "a1b2c3")
    assert name == "20240101-000000-my-run-2-a1b2c3"
    assert layout.run_name_of(Path("runs") / name) == "my-run-2"
    assert layout.run_name_of("odd") == "odd"


RUN_FILE_NAMES = {layout.CONFIG, layout.SUMMARY, layout.METRICS, layout.LOG, layout.LAST,
                  layout.BEST, "last.npz", "best.npz", *layout.EXPORT_NAMES.values()}


def test_run_file_names_are_spelled_only_in_the_layout_module():
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "rundir" / "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in RUN_FILE_NAMES:
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not spelled, "run file names spelled outside rundir/layout.py:\n" + "\n".join(spelled)
