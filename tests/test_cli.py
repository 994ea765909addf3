"""The command line end to end: subprocess runs on a small slice of the real data, plus in-process
checks of error handling through :func:`fmnist_mlp.cli.main`."""

from __future__ import annotations

import json
import shlex
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir.start import check_new_run, create_run_dir
from fmnist_mlp.cli import main
from training_helpers import InterruptAt

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")
SMALL = ["--set", "data.subset=1000", "--set", "data.val_size=500", "--set", "model.hidden=[32]",
         "--set", "train.epochs=2", "--set", "train.batch_size=100"]
# One BLAS thread per process: the tests run trainings side by side on a small machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def data_dir(real_data_dir):
    return real_data_dir


def fmnist(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def run_main(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(map(str, args)))
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """One small finished run, shared by the read-only tests below."""
    work = tmp_path_factory.mktemp("work")
    proc = fmnist("train", *SMALL, "--name", "small", "--data-dir", data_dir, "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work, proc


# ------------------------------------------------------------------------- help and imports


def test_cli_module_does_not_import_heavy_packages():
    code = ("import sys, fmnist_mlp.cli; "
            "print([m for m in ('numpy', 'tqdm', 'requests', 'yaml') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_help_documents_exit_codes(args, capsys):
    code, out, _ = run_main(args, capsys)
    assert code == 0
    assert "Exit codes" in out and "130" in out and "diverged" in out and "resumed" in out


@pytest.mark.parametrize("command", ["eval", "predict", "export", "runs", "plot", "download",
                                     "gradcheck"])
def test_help_shows_only_the_exit_codes_the_command_can_give(command, capsys):
    code, out, _ = run_main([command, "--help"], capsys)
    assert code == 0
    codes = out.split("Exit codes:")[1]
    assert "diverged" not in codes and "resumed" not in codes     # only training diverges
    for listed in ("0 ", "1 ", "2 ", "130", "141"):
        assert f"  {listed}" in codes


def _all_commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))


def test_every_option_of_every_command_says_what_it_does():
    # `gradcheck --help` listed "--set KEY.PATH=VALUE" and `runs --help` "--runs-dir" with no
    # word about them; every option a user can type must say what it does.
    import click

    from fmnist_mlp.cli import cli

    bare = [f"{' '.join(path)} {param.opts[0]}" for path, command in _all_commands(cli)
            for param in command.params
            if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert bare == []


def test_runs_json_help_says_what_it_prints(tmp_path, capsys):
    # `runs --json` prints an array of rows; its help said "one JSON object".
    code, out, _ = run_main(["runs", "--help"], capsys)
    assert code == 0 and "JSON array" in " ".join(out.split())
    code, out, _ = run_main(["runs", "--runs-dir", str(tmp_path), "--json"], capsys)
    assert code == 0 and json.loads(out) == []


# ------------------------------------------------------------------------- end to end


@pytest.mark.realdata
def test_train_json_is_the_only_stdout_and_describes_the_run(trained):
    work, proc = trained
    summary = json.loads(proc.stdout)        # the whole of stdout is one JSON object
    run_dir = work / summary["run_dir"]
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert summary["name"] == "small" and 0.0 < summary["test_acc"] <= 1.0
    assert str(run_dir) in proc.stderr or summary["run_dir"] in proc.stderr
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log",
                 "checkpoints/last.npz", "checkpoints/best.npz"):
        assert (run_dir / name).is_file(), name
    metrics = runs.read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                               "epoch_time", "samples_per_sec"}
    assert summary["best_val_acc"] == max(m["val_acc"] for m in metrics)
    # The per-epoch line is formatted once: train.log holds the lines printed on stderr.
    printed = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    logged = (run_dir / "train.log").read_text().splitlines()
    # ... followed on stderr, before the last epoch, by the whole run's time left.
    assert "  eta " in printed[0] and "eta" not in printed[1]
    printed = [line.split("  eta ")[0] for line in printed]
    assert len(printed) == 2 and all(any(log.endswith(line) for log in logged) for line in printed)


@pytest.mark.realdata
def test_resolved_config_reproduces_the_run(trained):
    from fmnist_mlp.config.load import load_config

    work, proc = trained
    cfg = load_config(work / json.loads(proc.stdout)["run_dir"] / "config.yaml")
    assert (cfg.data.subset, cfg.data.val_size, cfg.model.hidden) == (1000, 500, (32,))


@pytest.mark.realdata
def test_eval_reports_the_accuracy_in_the_summary(trained, data_dir):
    work, proc = trained
    summary = json.loads(proc.stdout)
    result = fmnist("eval", summary["run_dir"], "--data-dir", data_dir, "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["accuracy"] == summary["test_acc"]
    assert np.array(scores["confusion_matrix"]).sum() == scores["num_samples"] == 10000
    table = fmnist("eval", summary["run_dir"], "--data-dir", data_dir, "--split", "val", cwd=work)
    assert table.returncode == 0 and "per-class accuracy" in table.stdout
    assert "Ankle boot" in table.stdout and "split: val (500 images)" in table.stdout


@pytest.mark.realdata
def test_test_flip_scores_the_mirror_averaged_model_everywhere(data_dir, tmp_path):
    """With data.augment.test_flip, training, the summary and eval all score the averaged model."""
    proc = fmnist("train", *SMALL, "--set", "data.augment.test_flip=true", "--name", "tta",
                  "--data-dir", data_dir, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    result = fmnist("eval", summary["run_dir"], "--data-dir", data_dir, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == summary["test_acc"]

    from fmnist_mlp.config.plan import load_splits as load_splits_for
    from fmnist_mlp.rundir.trained import load_model
    from fmnist_mlp.rundir.flips import FlipAveraged

    model, config = load_model(tmp_path / summary["run_dir"])
    assert isinstance(model, FlipAveraged)
    test = load_splits_for(config, data_dir).test
    plain_acc = float((model.model.predict(test.x) == test.y).mean())
    assert summary["test_acc"] == model.evaluate(test.x, test.y)[1] != plain_acc


@pytest.mark.realdata
def test_runs_lists_the_run(trained, capsys):
    work, proc = trained
    summary = json.loads(proc.stdout)
    code, out, _ = run_main(["runs", "--runs-dir", work / "runs", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1
    assert rows[0]["name"] == "small" and rows[0]["status"] == "finished"
    assert rows[0]["test_acc"] == summary["test_acc"]
    code, out, _ = run_main(["runs", "--runs-dir", work / "runs", "--csv"], capsys)
    assert out.splitlines()[0].startswith("run,name,") and "finished" in out


@pytest.mark.realdata
def test_runs_sort_by_an_unknown_column_is_a_usage_error(trained, capsys):
    work, _ = trained
    code, _, err = run_main(["runs", "--runs-dir", work / "runs", "--sort", "accuracy"], capsys)
    assert code == 2 and "--sort 'accuracy'" in err and "best_val_acc" in err


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, key", [
    (["model.hiden=[10]"], "model.hiden"),
    (["train.epochs=many"], "train.epochs"),
    (["optimizer.lr=-0.01"], "optimizer.lr"),
    (["model.hidden="], "model.hidden"),
    (["model.batchnorm=3"], "model.batchnorm"),
])
def test_bad_config_exits_2_naming_the_key_and_creates_nothing(overrides, key, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train"] + [a for o in overrides for a in ("--set", o)]
    code, out, err = run_main(args, capsys)
    assert code == 2
    assert key in err and len(err.strip().splitlines()) == 1 and out == ""
    assert list(tmp_path.iterdir()) == []


def test_unknown_key_in_a_config_file_is_exit_2_with_suggestion(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text("optimizer:\n  learning_rate: 0.1\n")
    code, _, err = run_main(["train", "--config", "exp.yaml"], capsys)
    assert code == 2 and "optimizer.learning_rate" in err and "did you mean" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../escape", "/etc", "a/b"])
def test_run_names_that_escape_the_runs_dir_are_refused(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["train", "--name", name, "--set", "train.epochs=1"], capsys)
    assert code == 2 and "--name" in err
    assert list(tmp_path.iterdir()) == []


def test_resume_cannot_be_mixed_with_a_config(tmp_path, capsys):
    code, _, err = run_main(["train", "--resume", tmp_path, "--set", "train.epochs=1"], capsys)
    assert code == 2 and "--resume" in err


def test_train_without_config_is_a_usage_error(capsys):
    code, _, err = run_main(["train"], capsys)
    assert code == 2 and "--config" in err


@pytest.mark.parametrize("make", [
    lambda d: d / "missing.npz",
    lambda d: (d / "junk.npz").write_text("junk") and d / "junk.npz",
    lambda d: d,                                       # a directory that is not a run
])
def test_eval_of_bad_targets_is_one_line(make, tmp_path, capsys):
    code, out, err = run_main(["eval", make(tmp_path)], capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.realdata
def test_eval_of_a_truncated_checkpoint_is_one_line(trained, tmp_path, capsys):
    work, proc = trained
    best = work / json.loads(proc.stdout)["run_dir"] / "checkpoints" / "best.npz"
    broken = tmp_path / "broken.npz"
    broken.write_bytes(best.read_bytes()[:5000])
    code, _, err = run_main(["eval", broken], capsys)
    assert code == 1 and "broken.npz" in err and len(err.strip().splitlines()) == 1


def test_runs_of_an_empty_dir(tmp_path, capsys):
    code, out, _ = run_main(["runs", "--runs-dir", tmp_path], capsys)
    assert code == 0 and "no runs" in out


# ------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("overrides", [
    ["model.hidden=[12, 7]"],
    ["model.hidden=[9]", "model.activation=sigmoid", "model.output=sigmoid",
     "loss.name=squared_error"],
])
def test_gradcheck_passes_for_real_architectures(overrides, capsys):
    args = ["gradcheck"] + [a for o in overrides for a in ("--set", o)]
    code, out, _ = run_main(args, capsys)
    assert code == 0 and "max relative error" in out and "ok" in out


def test_gradcheck_exits_nonzero_above_the_tolerance(capsys):
    # Finite differences are never exact, so an absurdly tight tolerance must fail.
    code, out, _ = run_main(["gradcheck", "--set", "model.hidden=[5]", "--tolerance", "1e-30"],
                            capsys)
    assert code == 1 and "FAILED" in out


# ------------------------------------------------------------------------- failure modes


@pytest.mark.realdata
def test_divergence_marks_the_run_failed_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    # Epoch 1 trains normally; the step schedule then multiplies the learning rate by 1e30.
    proc = fmnist("train", *SMALL, "--set", "train.epochs=3", "--set", "optimizer.name=sgd",
                  "--set", "optimizer.lr=0.1", "--set", "schedule.name=step",
                  "--set", "schedule.step_epochs=1", "--set", "schedule.gamma=1e30",
                  "--data-dir", data_dir, "--quiet", cwd=tmp_path)
    assert proc.returncode == 3
    assert "learning rate" in proc.stderr and "Traceback" not in proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "failed" and summary["epochs_completed"] == 1
    assert runs.load_checkpoint(run_dir / "checkpoints" / "last.npz").meta["epoch"] == 1


def _start_endless_training(data_dir, cwd, stdout, stderr) -> subprocess.Popen:
    """`fmnist-mlp train` with a practically endless epoch count, to be stopped by a signal."""
    args = [sys.executable, "-m", "fmnist_mlp", "train", *SMALL, "--set", "train.epochs=100000",
            "--data-dir", str(data_dir), "--quiet"]
    return subprocess.Popen(args, cwd=cwd, env=ENV, stdout=stdout, stderr=stderr, text=True)


def _wait_for_epochs(runs_dir, epochs: int, timeout: float = 300) -> None:
    """Poll until the (single) run under ``runs_dir`` has logged ``epochs`` epochs (generous: a
    loaded machine is slow, and a signal sent before the first epoch tests something else)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = list(runs_dir.glob("*/metrics.jsonl"))
        if metrics and metrics[0].read_text().count("\n") >= epochs:
            return
        time.sleep(0.05)
    pytest.fail(f"no run under {runs_dir} logged {epochs} epochs within {timeout} s")


@pytest.mark.realdata
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_marks_interrupted_and_prints_the_resume_command(signum, data_dir, tmp_path):
    proc = _start_endless_training(data_dir, tmp_path, subprocess.PIPE, subprocess.PIPE)
    try:
        _wait_for_epochs(tmp_path / "runs", 2)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "fmnist-mlp train --resume" in err and "Traceback" not in err and out == ""
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["epochs_completed"] >= 2
    last = runs.load_checkpoint(run_dir / "checkpoints" / "last.npz")
    assert last.meta["epoch"] == summary["epochs_completed"]


@pytest.mark.realdata
def test_kill_9_leaves_loadable_checkpoints_and_a_stale_run(data_dir, tmp_path, capsys):
    proc = _start_endless_training(data_dir, tmp_path, subprocess.DEVNULL, subprocess.DEVNULL)
    try:
        _wait_for_epochs(tmp_path / "runs", 3)
    finally:
        proc.kill()                      # SIGKILL: no handler runs, writes stop wherever they are
        proc.wait()
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("last.npz", "best.npz"):
        assert runs.load_checkpoint(run_dir / "checkpoints" / name).meta["epoch"] >= 1
    code, out, _ = run_main(["runs", "--runs-dir", tmp_path / "runs", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["status"] == "stale"


def test_resume_of_a_run_that_is_still_running_is_refused(tmp_path, capsys):
    run_dir = create_run_dir(check_new_run(tmp_path, "live"))
    (run_dir / "config.yaml").write_text("seed: 0\n")
    runs.write_summary(run_dir, {"status": "running", **runs.process_owner()})
    # Running means holding the run's lock, as a trainer does (issue 31: liveness by the lock,
    # not by a pid that another process may have been given since).
    from fmnist_mlp.rundir.guard import RunLock

    lock = RunLock(run_dir).acquire()
    try:
        code, _, err = run_main(["train", "--resume", run_dir], capsys)
    finally:
        lock.release()
    assert code == 1 and "already running" in err


@pytest.mark.realdata
def test_four_trainings_at_once_get_their_own_directories(data_dir, tmp_path):
    args = [sys.executable, "-m", "fmnist_mlp", "train", *SMALL, "--set", "train.epochs=1",
            "--name", "same", "--data-dir", str(data_dir), "--quiet"]
    procs = [subprocess.Popen(args + ["--set", f"seed={i}"], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outputs]
    printed = {out.strip() for out, _ in outputs}
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(printed) == 4 and len(dirs) == 4
    assert {str(Path("runs") / d.name) for d in dirs} == printed
    assert all(runs.read_summary(d)["status"] == "finished" for d in dirs)


# ------------------------------------------------------------------------- exact resume


@pytest.mark.realdata
@pytest.mark.parametrize("batchnorm", [False, True])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(batchnorm, kernels, data_dir,
                                                                 tmp_path):
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.session import run_training
    from fmnist_mlp.errors import TrainingInterrupted

    # Every random stream matters here: dropout masks, flips, shifts and mixup, shuffling,
    # one-cycle lr.
    # With batchnorm the running statistics must be restored too: validation uses them.
    cfg = load_config(None, ["data.subset=1000", "data.val_size=500", "model.hidden=[32, 16]",
                             "model.dropout=0.2", "data.augment.flip=true", "data.augment.shift=1",
                             "data.augment.mixup=0.4", "schedule.name=onecycle", "train.epochs=4", "train.batch_size=100",
                             f"model.batchnorm={str(batchnorm).lower()}",
                             f"train.kernels={kernels}"])
    straight = run_training(cfg, name="straight", runs_dir=tmp_path, data_dir=data_dir)
    assert straight.summary["kernels"] == {"layers": kernels, "optimizer": kernels}

    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_training(cfg, name="stopped", runs_dir=tmp_path, data_dir=data_dir,
                     callbacks=[InterruptAt(epoch=3, batch=4)])
    (stopped,) = tmp_path.glob("*-stopped-*")
    assert runs.read_summary(stopped)["status"] == "interrupted"
    assert runs.load_checkpoint(stopped / "checkpoints" / "last.npz").meta["epoch"] == 2

    # In-process like the straight run: BLAS results may depend on the thread count.
    resumed = run_training(None, resume=stopped, data_dir=data_dir).summary
    assert resumed["status"] == "finished" and resumed["epochs_completed"] == 4

    a = runs.load_checkpoint(straight.run_dir / "checkpoints" / "last.npz")
    b = runs.load_checkpoint(stopped / "checkpoints" / "last.npz")
    assert a.params.keys() == b.params.keys()
    assert ("layer1.running_var" in a.params) == batchnorm
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    for name in a.optim_state:
        assert np.array_equal(a.optim_state[name], b.optim_state[name]), name
    assert a.rng_states == b.rng_states
    assert resumed["test_acc"] == straight.summary["test_acc"]
    losses = lambda d: [m["train_loss"] for m in runs.read_metrics(d)]   # noqa: E731
    assert losses(stopped) == losses(straight.run_dir) and len(losses(stopped)) == 4
    val_accs = lambda d: [m["val_acc"] for m in runs.read_metrics(d)]   # noqa: E731
    assert val_accs(stopped) == val_accs(straight.run_dir)


@pytest.mark.realdata
def test_resume_through_the_cli_finishes_the_run_in_its_directory(data_dir, tmp_path):
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.session import run_training
    from fmnist_mlp.errors import TrainingInterrupted

    cfg = load_config(None, SMALL[1::2] + ["train.epochs=3"])
    with pytest.raises(TrainingInterrupted):
        run_training(cfg, name="cli", runs_dir=tmp_path / "runs", data_dir=data_dir,
                     callbacks=[InterruptAt(epoch=2, batch=2)])
    (run_dir,) = (tmp_path / "runs").iterdir()
    proc = fmnist("train", "--resume", run_dir, "--data-dir", data_dir, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run_dir)
    assert list((tmp_path / "runs").iterdir()) == [run_dir]
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "finished" and summary["epochs_completed"] == 3
    assert [m["epoch"] for m in runs.read_metrics(run_dir)] == [1, 2, 3]


@pytest.mark.realdata
def test_ctrl_c_between_checkpoints_still_saves_the_last_completed_epoch(data_dir, tmp_path):
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.session import run_training
    from fmnist_mlp.errors import TrainingInterrupted

    cfg = load_config(None, SMALL[1::2] + ["train.epochs=5", "train.checkpoint_every=5"])
    with pytest.raises(TrainingInterrupted):
        run_training(cfg, name="sparse", runs_dir=tmp_path, data_dir=data_dir,
                     callbacks=[InterruptAt(epoch=3, batch=1)])
    (run_dir,) = tmp_path.iterdir()
    assert runs.load_checkpoint(run_dir / "checkpoints" / "last.npz").meta["epoch"] == 2


@pytest.mark.realdata
def test_ctrl_c_while_an_epoch_is_being_recorded_finishes_recording_it(data_dir, tmp_path,
                                                                       monkeypatch):
    # A sweep's Ctrl-C landed between an epoch's checkpoint write and its summary/log lines:
    # summary.json kept the previous epoch's best val acc beside the new epoch count, train.log
    # lost the epoch's line, and the message said "interrupted during epoch 3" of a 2-epoch run.
    # The real SIGINT is sent right after the first checkpoint is written.
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.session import run_training
    from fmnist_mlp.errors import TrainingInterrupted

    real_save = runs.save_checkpoint
    sent = []

    def save_then_ctrl_c(*args, **kwargs):
        real_save(*args, **kwargs)
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(runs, "save_checkpoint", save_then_ctrl_c)
    cfg = load_config(None, SMALL[1::2] + ["train.epochs=1"])
    with pytest.raises(TrainingInterrupted) as stopped:
        run_training(cfg, name="mid", runs_dir=tmp_path, data_dir=data_dir)
    (run_dir,) = tmp_path.iterdir()
    (epoch1,) = runs.read_metrics(run_dir)
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert summary["best_val_acc"] == epoch1["val_acc"]
    assert "epoch 1/1" in (run_dir / "train.log").read_text()
    assert "during epoch 2" not in str(stopped.value) and "saved epoch 1" in str(stopped.value)


@pytest.mark.realdata
def test_ctrl_c_in_the_first_epoch_says_there_is_nothing_to_resume(data_dir, tmp_path, capsys):
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.session import run_training
    from fmnist_mlp.errors import TrainingInterrupted

    cfg = load_config(None, SMALL[1::2])
    with pytest.raises(TrainingInterrupted, match="nothing to resume"):
        run_training(cfg, name="early", runs_dir=tmp_path, data_dir=data_dir,
                     callbacks=[InterruptAt(epoch=1, batch=2)])
    (run_dir,) = tmp_path.iterdir()
    assert runs.read_summary(run_dir)["status"] == "interrupted"
    assert not (run_dir / "checkpoints" / "last.npz").exists()
    code, _, err = run_main(["train", "--resume", run_dir, "--data-dir", data_dir], capsys)
    assert code == 1 and "last.npz" in err


@pytest.mark.realdata
def test_early_stopping_ends_the_run_when_validation_stops_improving(data_dir, tmp_path):
    from fmnist_mlp.config.load import load_config
    from fmnist_mlp.training.session import run_training

    # A learning rate this small leaves the predictions, hence the val accuracy, unchanged.
    cfg = load_config(None, SMALL[1::2] + ["train.epochs=6", "train.early_stopping_patience=2",
                                           "optimizer.name=sgd", "optimizer.lr=1e-12"])
    summary = run_training(cfg, name="patience", runs_dir=tmp_path, data_dir=data_dir).summary
    assert summary["status"] == "finished" and summary["epochs_completed"] == 3
    assert summary["best_epoch"] == 1 and "early stopped" in summary["message"]


@pytest.mark.realdata
def test_each_command_reads_and_validates_its_config_once(data_dir, tmp_path, capsys,
                                                          monkeypatch):
    """The real code path, counted: every config check goes through build_checked."""
    from fmnist_mlp.config import validate

    calls = []
    checked = validate.build_checked

    def counting(*args, **kwargs):
        calls.append(args[2])               # the source: file, --set, or the checkpoint
        return checked(*args, **kwargs)

    monkeypatch.setattr(validate, "build_checked", counting)
    code, out, err = run_main(["train", *SMALL, "--set", "data.augment.test_flip=true",
                               "--name", "once", "--runs-dir", tmp_path / "runs",
                               "--data-dir", data_dir, "--json"], capsys)
    assert code == 0, err
    assert calls == ["--set"]
    calls.clear()
    run_dir = json.loads(out)["run_dir"]
    code, _, err = run_main(["eval", run_dir, "--data-dir", data_dir, "--json"], capsys)
    assert code == 0, err
    assert len(calls) == 1
    calls.clear()
    code, _, err = run_main(["gradcheck", "--set", "model.hidden=[4]", "--samples", "2"], capsys)
    assert code == 0, err
    assert calls == ["--set"]


@pytest.mark.realdata
def test_plot_command_prints_the_png_paths(trained, data_dir, capsys):
    pytest.importorskip("matplotlib")
    work, proc = trained
    run_dir = work / json.loads(proc.stdout)["run_dir"]
    code, out, _ = run_main(["plot", run_dir, "--data-dir", data_dir], capsys)
    paths = [Path(line) for line in out.splitlines()]
    assert code == 0 and paths and all(p.suffix == ".png" and p.is_file() for p in paths)


@pytest.mark.realdata
def test_resuming_a_finished_run_is_refused(trained, capsys):
    work, proc = trained
    run_dir = work / json.loads(proc.stdout)["run_dir"]
    code, _, err = run_main(["train", "--resume", run_dir], capsys)
    assert code == 1 and "already finished" in err


# ------------------------------------------------------------------------- sweep script


@pytest.mark.realdata
def test_sweep_runs_the_grid_prints_the_table_and_reports_failures(data_dir, tmp_path):
    import shutil

    if shutil.which("fmnist-mlp") is None or shutil.which("bash") is None:
        pytest.skip("needs bash and the fmnist-mlp console script on PATH")
    script = Path(__file__).resolve().parent.parent / "scripts" / "sweep.sh"
    # Two trials train; the negative learning rate is a config error, so the sweep must fail.
    proc = subprocess.run(["bash", str(script), "-c", str(script.parent.parent / "configs" / "default.yaml"),
                           "-j", "2", "-r", "grid", "-d", str(data_dir),
                           "optimizer.lr=1e-3,-1,3e-3", "--", *SMALL, "--set", "train.epochs=1"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "1 of 3 trial(s) failed" in proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert "optimizer.lr" in header and "best_val_acc" in header
    assert len(rows) == 2 and all("finished" in r for r in rows)
    dry = subprocess.run(["bash", str(script), "-n", "-r", "grid", "model.hidden=[8],[16,8]"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert dry.returncode == 0 and len(dry.stdout.splitlines()) == 2
    assert "model.hidden=[16,8]" in shlex.split(dry.stdout.splitlines()[1])


@pytest.mark.parametrize("filename, expected", [
    ("configs/default.yaml", "default"), ("my exp.yaml", "my-exp"), ("..yaml", "run")])
def test_default_run_name_is_the_config_stem_made_safe(filename, expected):
    from fmnist_mlp.config.plan import default_run_name
    from fmnist_mlp.rundir.files import validate_run_name

    assert default_run_name(Path(filename)) == expected
    assert validate_run_name(expected) == expected


@pytest.mark.parametrize("how", ["sigterm, chain cut", "ctrl-c, chained", "no interrupt"])
def test_an_interrupt_a_library_turns_into_its_own_error_is_still_an_interrupt(how, capsys,
                                                                              monkeypatch):
    # SIGTERM landing while matplotlib's C extension was imported (`sweep report`) surfaced as
    # "ImportError: initialization failed": a traceback and exit 1 instead of "interrupted", 130.
    import click

    from fmnist_mlp.cli import cli

    @click.command("boom")
    def boom():
        try:
            if how.startswith("sigterm"):
                os.kill(os.getpid(), signal.SIGTERM)        # the real signal, our real handler
                time.sleep(10)
            elif how.startswith("ctrl-c"):
                raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            if how.startswith("sigterm"):
                raise ImportError("initialization failed") from None
            raise ImportError("initialization failed") from exc
        raise ImportError("initialization failed")

    monkeypatch.setitem(cli.commands, "boom", boom)
    if how == "no interrupt":                   # a real error stays a real error
        with pytest.raises(ImportError):
            main(["boom"])
        return
    code, _, err = run_main(["boom"], capsys)
    assert (code, err) == (130, "interrupted\n")
