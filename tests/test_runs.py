"""Run directories, atomic writes, metrics files and .npz checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir.start import check_new_run, create_run_dir
from fmnist_mlp.errors import CheckpointError, ConfigError


def _checkpoint(rng_seed: int = 0) -> runs.Checkpoint:
    gen = np.random.default_rng(rng_seed)
    gen.random(5)   # move the stream off its start so a restore is meaningful
    params = {"layer0.W": np.arange(12, dtype=np.float32).reshape(3, 4),
              "layer0.b": np.zeros(4, dtype=np.float32)}
    optim = {"m/layer0.W": np.full((3, 4), 0.5), "t": np.array(7)}
    meta = {"config": {"seed": 0, "model": {"hidden": [4]}}, "epoch": 3,
            "model_spec": {"input_size": 3, "hidden": [], "num_classes": 4},
            "best": {"epoch": 2, "val_acc": 0.9}}
    return runs.Checkpoint(params, optim, {"shuffle": gen.bit_generator.state}, meta)


# ------------------------------------------------------------------------- run directories


def test_run_dir_layout_and_name(tmp_path):
    run_dir = create_run_dir(check_new_run(tmp_path / "runs", "my-exp"))
    assert run_dir.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}-my-exp-[0-9a-f]{6}", run_dir.name)
    assert (run_dir / "checkpoints").is_dir()


def test_run_dirs_never_reused_even_when_the_random_id_collides(tmp_path, monkeypatch):
    ids = iter(["aaaaaa", "aaaaaa", "aaaaaa", "bbbbbb"])
    from fmnist_mlp.rundir import start

    monkeypatch.setattr(start.secrets, "token_hex", lambda n: next(ids))
    monkeypatch.setattr(start.time, "strftime", lambda fmt: "20240101-000000")
    first = create_run_dir(check_new_run(tmp_path, "x"))
    second = create_run_dir(check_new_run(tmp_path, "x"))
    assert first.name == "20240101-000000-x-aaaaaa"
    assert second.name == "20240101-000000-x-bbbbbb"


def test_many_run_dirs_in_the_same_second_are_distinct(tmp_path):
    made = {create_run_dir(check_new_run(tmp_path, "same")) for _ in range(40)}
    assert len(made) == 40


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".hidden", "", "a b", "x" * 81])
def test_names_that_escape_or_are_odd_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="--name"):
        create_run_dir(check_new_run(tmp_path / "runs", name))
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_content(tmp_path):
    path = tmp_path / "f.json"
    runs.atomic_write_json(path, {"a": 1})
    runs.atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["f.json"]


def test_interrupted_write_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    runs.save_checkpoint(path, _checkpoint())
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        runs.save_checkpoint(path, _checkpoint(rng_seed=1))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.npz"]


# ------------------------------------------------------------------------- metrics / summary


def test_metrics_lines_are_flushed_and_truncated_lines_skipped(tmp_path):
    writer = runs.MetricsWriter(tmp_path)
    writer.write({"epoch": 1, "val_acc": 0.5})
    assert runs.read_metrics(tmp_path) == [{"epoch": 1, "val_acc": 0.5}]   # before close
    writer.write({"epoch": 2, "val_acc": 0.6})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "val_')           # a crash mid-line
    assert [m["epoch"] for m in runs.read_metrics(tmp_path)] == [1, 2]


def test_resume_drops_metrics_newer_than_the_checkpoint(tmp_path):
    writer = runs.MetricsWriter(tmp_path)
    for epoch in (1, 2, 3):
        writer.write({"epoch": epoch})
    writer.close()
    runs.MetricsWriter(tmp_path, keep_epochs_upto=2).close()
    assert [m["epoch"] for m in runs.read_metrics(tmp_path)] == [1, 2]


def test_a_running_run_whose_process_is_gone_is_stale():
    import socket
    import subprocess
    import sys

    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()                      # reaped: the pid no longer names a process
    host = socket.gethostname()
    assert runs.is_stale({"status": "running", "pid": dead_pid.pid, "host": host})
    assert not runs.is_stale({"status": "running", "pid": os.getpid(), "host": host})
    assert not runs.is_stale({"status": "running", "pid": dead_pid.pid, "host": host + "-other"})
    assert not runs.is_stale({"status": "finished", "pid": dead_pid.pid, "host": host})


def test_summary_round_trip_and_missing_summary(tmp_path):
    runs.write_summary(tmp_path, {"status": "running"})
    assert runs.read_summary(tmp_path) == {"status": "running"}
    with pytest.raises(CheckpointError, match="summary.json"):
        runs.read_summary(tmp_path / "elsewhere")


# ------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_restores_everything(tmp_path):
    ckpt = _checkpoint()
    path = tmp_path / "c.npz"
    runs.save_checkpoint(path, ckpt)
    back = runs.load_checkpoint(path)
    assert back.params.keys() == ckpt.params.keys()
    for name in ckpt.params:
        assert np.array_equal(back.params[name], ckpt.params[name])
        assert back.params[name].dtype == ckpt.params[name].dtype
    assert all(np.array_equal(back.optim_state[k], v) for k, v in ckpt.optim_state.items())
    assert back.meta["epoch"] == 3 and back.meta["config"] == ckpt.meta["config"]
    restored = np.random.default_rng(99)
    restored.bit_generator.state = back.rng_states["shuffle"]
    original = np.random.default_rng(0)
    original.random(5)
    assert np.array_equal(restored.random(10), original.random(10))


def test_checkpoint_is_one_npz_with_the_documented_keys(tmp_path):
    path = tmp_path / "c.npz"
    runs.save_checkpoint(path, _checkpoint())
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"param/layer0.W", "param/layer0.b", "optim/m/layer0.W",
                                  "optim/t", "rng/shuffle", "meta"}


class _Exploit:
    """Unpickling this would create a marker file: the test checks it never happens."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Exploit(marker)
    meta = np.array(json.dumps({"format": runs.CHECKPOINT_FORMAT, "version": 1}))
    np.savez(path, **{"param/layer0.W": payload, "meta": meta})
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickle"):
        runs.load_checkpoint(path)
    assert not marker.exists()
    # Sanity: the payload really would have run with pickle allowed.
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.npz"
    runs.save_checkpoint(path, _checkpoint())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.npz"):
        runs.load_checkpoint(path)


@pytest.mark.parametrize("write", [
    lambda p: p.write_text("hello, not a checkpoint"),
    lambda p: np.savez(p, weights=np.zeros(3)),                          # foreign npz
    lambda p: np.savez(p, meta=np.array(json.dumps({"format": "other"}))),
    lambda p: np.savez(p, meta=np.zeros(2)),
])
def test_foreign_files_are_refused(tmp_path, write):
    path = tmp_path / "x.npz"
    write(path)
    with pytest.raises(CheckpointError, match="x.npz"):
        runs.load_checkpoint(path)


def test_find_checkpoint_prefers_best_then_last(tmp_path):
    run_dir = create_run_dir(check_new_run(tmp_path, "r"))
    with pytest.raises(CheckpointError, match="no checkpoints"):
        runs.find_checkpoint(run_dir)
    runs.save_checkpoint(run_dir / "checkpoints" / "last.npz", _checkpoint())
    assert runs.find_checkpoint(run_dir).name == "last.npz"
    runs.save_checkpoint(run_dir / "checkpoints" / "best.npz", _checkpoint())
    assert runs.find_checkpoint(run_dir).name == "best.npz"
    with pytest.raises(CheckpointError, match="no such"):
        runs.find_checkpoint(tmp_path / "missing")


def test_a_run_directory_is_born_locked_with_its_record(tmp_path):
    """What start_run makes: locked and holding its config.yaml the moment another process can
    see it; the lock goes with the run's stack."""
    import contextlib

    from fmnist_mlp.rundir import layout
    from fmnist_mlp.rundir.guard import RunLock

    with contextlib.ExitStack() as held:
        new = check_new_run(tmp_path / "runs", "born")
        run_dir = create_run_dir(new, record="seed: 1\n", held=held)
        assert (run_dir / layout.CONFIG).read_text() == "seed: 1\n"
        with pytest.raises(CheckpointError, match="already running"):
            RunLock(run_dir).acquire()
    RunLock(run_dir).acquire().release()


def _started_run(tmp_path, held):
    from fmnist_mlp.config.load import config_from
    from fmnist_mlp.config.plan import build_engine, make_plan
    from fmnist_mlp.rundir.start import check_new_run, start_run
    from fmnist_mlp.training.loop import TrainState

    plan = make_plan(config_from({"model": {"hidden": [8]}}))
    engine = build_engine(plan.engine, init_rng=np.random.default_rng(0))
    return start_run(check_new_run(tmp_path / "runs", "rec"), held, plan.record, 2, 1, engine,
                     {}, TrainState(), {"mean": 0.5, "std": 0.25})


def test_the_recorder_writes_nothing_until_the_loop_starts_it(tmp_path):
    import contextlib

    from fmnist_mlp.rundir import layout
    from fmnist_mlp.training.callbacks import LoopEvent

    with contextlib.ExitStack() as held:
        recorder = _started_run(tmp_path, held)
        run_dir = recorder.run_dir
        assert {p.name for p in run_dir.iterdir()} == {layout.CONFIG, layout.LOCK,
                                                        layout.CHECKPOINTS}
        recorder.on_train_start(LoopEvent(None, recorder.state, run_dir))
        summary = runs.read_summary(run_dir)
        assert summary["status"] == "running" and summary["name"] == "rec"
        assert summary["num_parameters"] == 784 * 8 + 8 + 8 * 10 + 10
        log = (run_dir / layout.LOG).read_text().splitlines()
        assert log[0].endswith(f"run started: {run_dir}")
        assert (run_dir / layout.METRICS).read_text() == ""
        recorder.stop("interrupted", "stopped by the test")
        assert runs.read_summary(run_dir)["status"] == "interrupted"


def test_a_recorder_stopped_before_the_loop_started_it_still_marks_its_run(tmp_path):
    """TensorBoard failing to start, say: the run is not left without a summary."""
    import contextlib

    from fmnist_mlp.rundir import layout

    with contextlib.ExitStack() as held:
        recorder = _started_run(tmp_path, held)
        recorder.stop("failed", "TensorBoard could not start")
    summary = runs.read_summary(recorder.run_dir)
    assert (summary["status"], summary["message"]) == ("failed", "TensorBoard could not start")
    assert (recorder.run_dir / layout.LOG).read_text().splitlines()[-1].endswith(
        "failed: TensorBoard could not start")
