"""RunRecorder: the training-loop callback that keeps a run directory up to date.

One callback among others (:mod:`fmnist_mlp.training.callbacks`): it hears the loop's events
itself and passes none on; the progress display and TensorBoard are callbacks of their own.

At each epoch end it serialises a checkpoint to memory (cheap: one copy of the parameters and
optimiser state), appends the metrics line, writes ``last``/``best`` when due and refreshes
``summary.json``. The in-memory snapshot is what Ctrl-C saves, so ``last`` always describes a
completed epoch and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir import guard, layout
from fmnist_mlp.rundir.files import format_epoch


class RunRecorder:
    """Writes a run's files as it trains: ``config`` is the run's resolved config as a plain dict
    (the plan's record, kept in every checkpoint), ``engine`` holds the model and optimiser whose
    state the checkpoints keep, ``state`` the loop's progress counters (a ``TrainState``).

    Made before the loop runs, it writes nothing until the loop starts it (``on_train_start``:
    the run marked running, its log and metrics opened), as the loop ends it."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], epochs: int,
                 checkpoint_every: int, engine: Any, streams: Mapping[str, np.random.Generator],
                 state: Any, resumed: bool = False,
                 normalization: Mapping[str, float] | None = None):
        self.run_dir, self.engine = run_dir, engine
        self.model, self.optimizer = engine.model, engine.optimizer
        self.config = config
        self.epochs, self.checkpoint_every = epochs, checkpoint_every
        # The input normalisation (pixel mean and std of the training rows), kept in every
        # checkpoint so predict and export need not reload the dataset to know it.
        self.normalization = dict(normalization) if normalization is not None else None
        self.streams = streams
        self.resumed = resumed
        self.snapshot: tuple[int, bytes] | None = None
        self.saved_epoch = state.epoch           # the epoch last.npz holds
        self.state = state
        self.started = time.time()
        self.prior_wall_time = 0.0
        self.metrics: runs.MetricsWriter | None = None      # open once the loop starts the run
        self.log: runs.RunLog | None = None
        self.summary: dict[str, Any] = {}

    # --------------------------------------------------------------- callback protocol
    def on_train_start(self, event: Any = None) -> None:
        """The run starts: its metrics and log opened (a resumed run's metrics cut back to its
        checkpoint), summary.json marked running, the start logged."""
        run_dir, state, resumed = self.run_dir, self.state, self.resumed
        self.metrics = runs.MetricsWriter(run_dir, keep_epochs_upto=state.epoch if resumed else None)
        self.log = runs.RunLog(run_dir)
        self.started = time.time()
        previous = runs.read_summary(run_dir) if resumed else {}
        wall_time = previous.get("wall_time")   # a hand-edited summary must not stop a resume
        self.prior_wall_time = (float(wall_time) if isinstance(wall_time, (int, float))
                                and not isinstance(wall_time, bool)
                                and 0 <= wall_time < 1e12 else 0.0)
        kernels = _kernels(self.engine)         # who computes (read before the model is asked)
        self.summary = {
            "status": "running", "name": layout.run_name_of(run_dir),
            "run_dir": str(run_dir), "best_epoch": state.best_epoch or None,
            "best_val_acc": state.best_val_acc if state.best_epoch else None,
            "final": previous.get("final"), "test_loss": None, "test_acc": None,
            "epochs_completed": state.epoch, "wall_time": self.prior_wall_time,
            "num_parameters": self.model.num_parameters(),
            "kernels": kernels,
            "versions": _versions(), "message": "", **runs.process_owner(),
        }
        switched = resumed and _kernels_of(previous) not in (None, self.summary["kernels"])
        if switched:        # exact resume holds within one kernel choice: say it changed
            self.summary["kernels_before_resume"] = previous["kernels"]
        runs.write_summary(run_dir, self.summary)
        verb = f"resumed at epoch {state.epoch}" if resumed else "started"
        self.log.write(f"run {verb}: {run_dir}")
        if switched:
            self.log.write(f"kernels: {previous['kernels']} before, {self.summary['kernels']} "
                           f"now; the run continues, not bit for bit as it would have")

    def on_epoch_end(self, event: Any) -> None:
        metrics, state, is_best = event.metrics, event.state, event.is_best
        # A stale owner's late epoch is not written, nor finished if it was frozen mid-way.
        with guard.fenced(self.run_dir), _signals_held():   # Ctrl-C waits for the epoch's end
            self.snapshot = (state.epoch, runs.checkpoint_bytes(self._checkpoint(state)))
            self.metrics.write(metrics)
            due = (state.epoch % self.checkpoint_every == 0
                   or state.epoch >= self.epochs or state.early_stopped)
            paths = ([layout.last_checkpoint(self.run_dir)] if due else []) + (
                [layout.best_checkpoint(self.run_dir)] if is_best else [])
            runs.save_checkpoint(paths, self.snapshot[1], base=self.run_dir)
            if due:
                self.saved_epoch = state.epoch
            self.summary.update(best_epoch=state.best_epoch, best_val_acc=state.best_val_acc,
                                final=dict(metrics), epochs_completed=state.epoch,
                                wall_time=self._wall_time())
            runs.write_summary(self.run_dir, self.summary)
            self.log.write(format_epoch(metrics, self.epochs, is_best))

    def on_train_end(self, event: Any) -> None:
        """The loop ended the run: finished (with its test scores) or stopped, and why."""
        if event.status == "finished":
            self.finish(event.scores)
        elif event.status == "interrupted":
            self.interrupted()
        else:
            self.stop(event.status, event.message)

    # --------------------------------------------------------------- endings
    def interrupted(self) -> None:
        """Ctrl-C, SIGTERM or a sweep's take-over: save the last completed epoch, and say how
        to continue (the session's error repeats it: :meth:`resume_hint`)."""
        if self.saved_epoch == 0 and self.snapshot is None:
            self.stop("interrupted", "interrupted before the first epoch ended")
        else:
            self.stop("interrupted", f"interrupted; resume with: {self.resume_command}")

    @property
    def resume_command(self) -> str:
        return f"fmnist-mlp train --resume {self.run_dir}"

    def stop(self, status: str, message: str) -> None:
        """Interrupted or failed: save the last completed epoch as ``last`` and mark the run.

        Each step is tried even when an earlier one fails (a full disk): the status in
        summary.json matters most, so a run is never left marked running by its own failure.
        A run taken over by another process is left to it: nothing is written.
        """
        try:
            # A second signal (Slurm's scancel after its time-limit warning, a second Ctrl-C)
            # waits until the stop is recorded: it used to cut the log's last line off.
            with guard.fenced(self.run_dir), _signals_held():
                self._record_stop(status, message)
        finally:
            self._close()

    def _record_stop(self, status: str, message: str) -> None:
        if self.log is None:        # stopped before the loop started it: marked all the same
            self.on_train_start()
        try:
            self._save_pending_last()
        except guard.RunTakenOver:
            raise
        except (OSError, FmnistMlpError) as exc:
            status, message = "failed", f"{message}; last checkpoint not saved: {exc}"
        self.summary.update(status=status, message=message, wall_time=self._wall_time(),
                            epochs_completed=self.saved_epoch)
        try:
            runs.write_summary(self.run_dir, self.summary)
        except guard.RunTakenOver:
            raise
        except (OSError, FmnistMlpError):
            runs.overwrite_summary_in_place(self.run_dir, self.summary)
        try:
            self.log.write(f"{status}: {message}")
        except OSError:
            pass

    def finish(self, test_scores: Mapping[str, float]) -> dict[str, Any]:
        with guard.fenced(self.run_dir), _signals_held():
            self._save_pending_last()
            message = (f"early stopped after epoch {self.state.epoch}" if self.state.early_stopped
                       else "")
            self.summary.update(status="finished", message=message, wall_time=self._wall_time(),
                                **test_scores)
            runs.write_summary(self.run_dir, self.summary)
            self.log.write(f"finished: test_acc={test_scores.get('test_acc', float('nan')):.4f}")
        self._close()
        return dict(self.summary)

    def _save_pending_last(self) -> None:
        if self.snapshot is not None and self.snapshot[0] > self.saved_epoch:
            runs.save_checkpoint(layout.last_checkpoint(self.run_dir), self.snapshot[1],
                                 base=self.run_dir)
            self.saved_epoch = self.snapshot[0]

    def _checkpoint(self, state: Any) -> runs.Checkpoint:
        meta = {"config": self.config, "model_spec": self.model.spec(),
                "epoch": state.epoch, "state": state.to_dict(),
                "best": {"epoch": state.best_epoch, "val_acc": state.best_val_acc}}
        if self.normalization is not None:
            meta["normalization"] = self.normalization
        return runs.Checkpoint(
            # Parameters and the BN running statistics; serialised immediately, so no copy.
            params=self.model.named_arrays(),
            optim_state=self.optimizer.state_dict(),
            rng_states={name: gen.bit_generator.state for name, gen in self.streams.items()},
            meta=meta)

    def _wall_time(self) -> float:
        return self.prior_wall_time + (time.time() - self.started)

    def _close(self) -> None:
        for f in (self.metrics, self.log):
            try:
                if f is not None:
                    f.close()
            except OSError:        # a full disk fails the final flush too
                pass


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT, SIGTERM and SIGUSR1 (each stops training; SIGUSR1 is Slurm's time-limit
    warning) until the block ends, then act on the first.

    Recording an epoch (checkpoint, metrics line, summary, log line) takes a few file writes;
    a signal in between left summary.json and train.log an epoch behind the checkpoint. Here a
    signal is only noted, and once the epoch is recorded the handler it was meant for runs
    (Ctrl-C's KeyboardInterrupt). Python's handlers swap, not the thread's signal mask: any
    thread (BLAS, a progress bar's) may be the one the kernel delivers a signal to. Handlers
    belong to the main thread, so elsewhere nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1")
                                              else [])
    # A handler installed outside Python (faulthandler's, say) reads as None: left alone.
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
                for signum in held if signal.getsignal(signum) is not None}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])     # the default action, now that it is due


def _kernels(engine: Any) -> dict[str, str]:
    """Who ran the elementwise work (numpy | numba): the layers' chains and the update."""
    return {"layers": getattr(engine.model, "kernels", "numpy"),
            "optimizer": getattr(engine.optimizer, "kernels", "numpy")}


def _kernels_of(summary: Mapping[str, Any]) -> dict[str, str] | None:
    """A summary's kernels entry when it is one this recorder writes (a hand-edited summary
    must not stop a resume), else None."""
    kernels = summary.get("kernels")
    if (isinstance(kernels, dict) and set(kernels) == {"layers", "optimizer"}
            and all(v in ("numpy", "numba") for v in kernels.values())):
        return kernels
    return None


def _versions() -> dict[str, str]:
    """Package versions, recorded so a result can be traced to the code that produced it."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("fmnist-mlp", "click", "tqdm", "pyyaml", "numba"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
