"""Sweeps that survive their database and their stragglers (issue 30), against real parts: a
private PostgreSQL server stopped and started mid-sweep, a worker frozen with SIGSTOP past the
grace period and woken, a partition through a TCP proxy that stops forwarding, a database
that only takes a password (which must appear nowhere on disk or on a command line).

Every window is shortened through the environment (a beat every 1 s, taken over after 4 s,
database calls cut after 2 s and retried for 60 s), so each test runs in seconds. What each
one checks at the end: no traceback, no trial failed, every epoch of every run trained once.
Needs root and PostgreSQL: skipped with the reason where absent, required when CI=true."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import REPO, cli_env, run_cli, run_dirs, status, write_spec
from sweep_services import StallingProxy, start_postgres

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("needs_optuna")]

EPOCHS = 60
TINY = {"train.epochs": EPOCHS, "data.subset": 3000, "data.val_size": 500, "model.hidden": [16]}
WINDOWS = {"FMNIST_MLP_SWEEP_HEARTBEAT": "1", "FMNIST_MLP_SWEEP_GRACE": "4",
           "FMNIST_MLP_SWEEP_DB_TIMEOUT": "2", "FMNIST_MLP_SWEEP_DB_RETRY": "60"}


@pytest.fixture(scope="module")
def postgres():
    pg = start_postgres()
    yield pg
    pg.stop()


class Sweep:
    """``sweep run`` as a subprocess, its stderr in a file the test can read while it runs."""

    def __init__(self, tmp: Path, url: str, data_dir: Path, jobs: int = 2, trials: int = 4,
                 epochs: int = EPOCHS, **env):
        self.dir, self.url = tmp / "sw", url
        self.spec = write_spec(tmp / "spec.yaml", trials=trials,
                               set={**TINY, "train.epochs": epochs})
        self.err_path = tmp / "stderr.txt"
        self.args = ["sweep", "run", str(self.spec), "--dir", str(self.dir), "--storage", url,
                     "--jobs", str(jobs), "--data-dir", str(data_dir)]
        self.env = cli_env(**{**WINDOWS, **env})
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        with open(self.err_path, "a") as err:
            return subprocess.Popen([sys.executable, "-m", "fmnist_mlp", *self.args], cwd=REPO,
                                    env=self.env, stdout=subprocess.DEVNULL, stderr=err)

    def again(self) -> None:
        self.proc = self._start()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            assert time.monotonic() < deadline, f"never said {text!r}: {self.stderr()}"
            assert self.proc.poll() is None, self.stderr()
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def trial_mid_way(self, timeout: float = 120) -> dict:
        """A running trial with at least one epoch saved and most still to train: its number,
        run directory and worker pid (as the study records them)."""
        import optuna

        deadline = time.monotonic() + timeout
        study = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            try:
                if study is None:
                    name = json.loads((self.dir / "sweep.json").read_text())["study_name"]
                    study = optuna.load_study(study_name=name, storage=self.url)
                trials = study.get_trials(deepcopy=False)
            except Exception:       # noqa: BLE001 - not created yet
                trials = []
            for t in trials:
                run = t.user_attrs.get("run_dir")
                if t.state.name != "RUNNING" or not run:
                    continue
                try:
                    summary = json.loads((self.dir / "runs" / run / "summary.json").read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if 1 <= summary.get("epochs_completed", 0) <= EPOCHS // 3:
                    pid = int(t.user_attrs["worker"].split(":")[1].split()[0])
                    return {"number": t.number, "run_dir": self.dir / "runs" / run, "pid": pid}
            time.sleep(0.02)
        raise AssertionError("no trial reached its first epoch in time")


def _every_epoch_once(sweep_dir: Path, trials: int, epochs: int = EPOCHS) -> list[dict]:
    st = status(sweep_dir)
    assert [t["state"] for t in st["trials"]] == ["finished"] * trials, st["trials"]
    assert st["budget_left"] == 0
    assert len(run_dirs(sweep_dir)) == trials
    for t in st["trials"]:
        lines = (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1)), t
        assert json.loads((Path(t["run_dir"]) / "summary.json").read_text())["status"] \
            == "finished"
    return st["trials"]


def _finishes_cleanly(sweep: Sweep, trials: int) -> list[dict]:
    """The sweep ends 0 with no traceback, every trial finished, every epoch trained once."""
    code = sweep.finish()
    assert code == 0, sweep.stderr()
    assert "Traceback" not in sweep.stderr(), sweep.stderr()
    return _every_epoch_once(sweep.dir, trials)


def test_a_database_stopped_mid_sweep_is_waited_for_and_loses_nothing(postgres, real_data_dir,
                                                                      tmp_path):
    """PostgreSQL stopped for 10 s mid-trial (two workers, both training): they retry, go on
    when it is back, and the sweep finishes its budget with every epoch trained once. (The
    issue's 30 s: FMNIST_MLP_TEST_OUTAGE=30, as docs/many-machines.md reports.)"""
    sweep = Sweep(tmp_path, postgres.createdb("blip"), real_data_dir, trials=2)
    sweep.trial_mid_way()
    postgres.halt()
    try:
        sweep.wait_for("unreachable")           # noticed, and said in one line
        time.sleep(float(os.environ.get("FMNIST_MLP_TEST_OUTAGE", "10")))
    finally:
        postgres.restart()
    _finishes_cleanly(sweep, 2)
    assert "retrying for up to 60 s" in sweep.stderr()


def test_a_database_away_past_the_retry_window_saves_the_trial_and_exits_75(postgres,
                                                                            real_data_dir,
                                                                            tmp_path):
    """Past the retry window (5 s here) the worker saves its trial, marks its run interrupted
    (never failed), exits 75 with one line; run again once the database is back, the trial
    resumes from its checkpoint and the budget is finished with no trial failed."""
    sweep = Sweep(tmp_path, postgres.createdb("outage"), real_data_dir, jobs=1, trials=1,
                  FMNIST_MLP_SWEEP_DB_RETRY="5")
    victim = sweep.trial_mid_way()
    postgres.halt()
    try:
        code = sweep.finish(timeout=120)
        err = sweep.stderr()
        assert code == 75, err
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "unreachable for 5 s" in last, err
        assert "continue with: fmnist-mlp sweep run" in last
        summary = json.loads((victim["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "interrupted", summary
    finally:
        postgres.restart()
    sweep.again()
    assert sweep.finish() == 0, sweep.stderr()
    trials = _every_epoch_once(sweep.dir, 1)
    log = (victim["run_dir"] / "train.log").read_text()
    assert "resumed at epoch" in log and "failed" not in log, log
    assert Path(trials[victim["number"]]["run_dir"]) == victim["run_dir"]


def test_a_worker_frozen_past_the_grace_is_taken_over_and_moves_on_when_woken(postgres,
                                                                              real_data_dir,
                                                                              tmp_path):
    """SIGSTOP on a worker mid-trial: the other worker takes the trial over after the grace
    period (breaking the run's lock, which the frozen one still holds); SIGCONT: the woken one
    writes nothing more to that run and goes on to its next trial; every epoch once."""
    sweep = Sweep(tmp_path, postgres.createdb("frozen"), real_data_dir, trials=3)
    victim = sweep.trial_mid_way()
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        sweep.wait_for(f"trial {victim['number']}: broke the run lock of its previous owner")
        sweep.wait_for(f"trial {victim['number']}: resuming")
        time.sleep(1.0)             # the taker trains on in the run
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
    code = sweep.finish()
    err = sweep.stderr()
    assert code == 0, err
    assert "Traceback" not in err, err
    assert f"[{victim['pid']}] trial {victim['number']}: " in err
    woken = [line for line in err.splitlines()
             if f"[{victim['pid']}] trial {victim['number']}: " in line and "taken over" in line]
    assert woken and "on to the next trial" in woken[0], err
    trials = _every_epoch_once(sweep.dir, 3)
    log = (victim["run_dir"] / "train.log").read_text()
    assert "resumed at epoch" in log and "interrupted" not in log, log
    assert str(victim["pid"]) not in trials[victim["number"]]["worker"]


def test_a_partition_is_noticed_not_waited_out(postgres, real_data_dir, tmp_path):
    """The worker reaches the database through a proxy that stops forwarding (the client's
    kernel still sees a healthy connection): its calls are cut after 2 s and retried, which it
    says while the partition lasts; when the proxy forwards again the sweep finishes. (The
    partition lasts 3 s past the first notice; the issue's 70 s: FMNIST_MLP_TEST_PARTITION=70,
    with a retry window that outlasts it, as the default 300 s does.)"""
    partition = float(os.environ.get("FMNIST_MLP_TEST_PARTITION", "3"))
    url = postgres.createdb("partition")
    proxy = StallingProxy(postgres.port)
    try:
        via = url.replace(f":{postgres.port}/", f":{proxy.port}/")
        sweep = Sweep(tmp_path, via, real_data_dir, jobs=1, trials=1,
                      FMNIST_MLP_SWEEP_DB_RETRY=str(int(max(60, partition + 60))))
        sweep.url = url                          # the test reads the study directly
        sweep.trial_mid_way()
        proxy.stall()
        try:
            sweep.wait_for("unreachable", timeout=60)
            time.sleep(partition)
        finally:
            proxy.resume()
        _finishes_cleanly(sweep, 1)            # (before the proxy closes: sweep.json names it)
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def password_server():
    """A server where the role ``sweeper`` must give its password (scram-sha-256)."""
    pg = start_postgres()
    hba = pg.data / "pg_hba.conf"
    hba.write_text("host all sweeper 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    pg.psql("postgres", "CREATE ROLE sweeper LOGIN PASSWORD 'pw-Zq8-secret'")
    pg._run("pg_ctl", "-D", str(pg.data), "reload")
    yield pg
    pg.stop()


def test_a_password_reaches_the_workers_but_no_file_or_command_line(password_server,
                                                                     real_data_dir, tmp_path,
                                                                     monkeypatch):
    pg = password_server
    pg.psql("postgres", "CREATE DATABASE secretive OWNER sweeper")
    url = f"postgresql://sweeper:pw-Zq8-secret@127.0.0.1:{pg.port}/secretive"
    refused = run_cli("sweep", "run", write_spec(tmp_path / "s0.yaml"), "--dir", tmp_path / "no",
                      "--storage", url.replace("pw-Zq8-secret", "wrong"))
    assert refused.returncode == 2 and "password authentication failed" in refused.stderr
    sweep = Sweep(tmp_path, url, real_data_dir, jobs=2, trials=2, epochs=40)
    seen = []
    while sweep.proc.poll() is None:            # every worker's command line, while it runs
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"fmnist_mlp" in cmdline and str(sweep.dir).encode() in cmdline:
                seen.append(cmdline)
        time.sleep(0.05)
    assert sweep.finish() == 0, sweep.stderr()
    assert len({c for c in seen if b"--jobs\x001\x00" in c}) >= 1, seen
    # (the command the user typed holds what they typed; the workers' hold no password)
    assert not any(b"pw-Zq8-secret" in c for c in seen if b"--jobs\x001\x00" in c)
    for path in sweep.dir.rglob("*"):
        if path.is_file():
            assert b"pw-Zq8-secret" not in path.read_bytes(), path
    assert "pw-Zq8-secret" not in sweep.stderr()
    info = json.loads((sweep.dir / "sweep.json").read_text())
    assert info["storage"] == f"postgresql://sweeper@127.0.0.1:{pg.port}/secretive"
    # later runs find the password in the environment (or ~/.pgpass), never in sweep.json
    again = run_cli("sweep", "status", sweep.dir)
    assert again.returncode == 2 and "no password supplied" in again.stderr, again.stderr
    pgpass = tmp_path / "pgpass"                   # libpq's password file, mode 0600
    pgpass.write_text(f"127.0.0.1:{pg.port}:secretive:sweeper:pw-Zq8-secret\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    _every_epoch_once(sweep.dir, 2, epochs=40)
    monkeypatch.delenv("PGPASSFILE")
    monkeypatch.setenv("PGPASSWORD", "pw-Zq8-secret")
    assert status(sweep.dir)["budget_left"] == 0
    dry = run_cli("sweep", "run", sweep.spec, "--dir", tmp_path / "dry", "--storage", url,
                  "--slurm", "--dry-run")
    assert dry.returncode == 0 and "pw-Zq8-secret" not in dry.stdout
    assert f"sweeper@127.0.0.1:{pg.port}/secretive" in dry.stdout


def test_a_trial_whose_workers_keep_dying_is_failed_after_the_cap(tmp_path, monkeypatch):
    """A trial taken over from dead workers more than FMNIST_MLP_SWEEP_MAX_TAKEOVERS times (1
    here) is told FAIL with the reason, and the sweep goes on; a trial released in good order
    is taken without counting. Real Optuna study in a SQLite database; workers simulated by
    claims that never beat again (as a SIGKILLed worker leaves its trial)."""
    import optuna

    from fmnist_mlp.sweep import ownership
    from fmnist_mlp.sweep.spec import load_spec
    from fmnist_mlp.sweep.status import format_status, sweep_status
    from fmnist_mlp.sweep.study import open_sweep
    from fmnist_mlp.sweep.worker import claim_next

    monkeypatch.setenv("FMNIST_MLP_SWEEP_HEARTBEAT", "1")
    monkeypatch.setenv("FMNIST_MLP_SWEEP_GRACE", "2")
    monkeypatch.setenv("FMNIST_MLP_SWEEP_MAX_TAKEOVERS", "1")
    spec = load_spec(write_spec(tmp_path / "spec.yaml", trials=3))
    sweep = open_sweep(tmp_path / "sw", spec, f"sqlite:///{tmp_path / 'study.db'}")
    first = claim_next(sweep, "w1")
    assert first.number == 0
    time.sleep(3.2)             # w1 dies silent (grace 2 s; SQLite's clock: whole seconds)
    again = claim_next(sweep, "w2")
    assert again.number == 0                         # taken over once: within the cap
    time.sleep(3.2)                                  # w2 dies silent too
    third = claim_next(sweep, "w3")
    assert third.number == 1                         # trial 0 is failed, not taken again
    trials = sweep.study.get_trials(deepcopy=False)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert "taken over 1 times" in trials[0].user_attrs["fail_reason"]
    ownership.release(sweep.rdb, third.trial_id, "w3")          # stopped in good order
    fourth = claim_next(sweep, "w4")
    assert fourth.number == 1                        # released: taken at once, not counted
    assert ownership.takeovers_of(sweep.study.get_trials(deepcopy=False)[1]) == 0
    shown = format_status(sweep_status(sweep))
    assert "trial 0 failed: taken over 1 times" in shown, shown


def test_copies_of_the_folder_share_one_budget_and_do_not_restart_each_others_trials(
        postgres, real_data_dir, tmp_path):
    """Two copies of the sweep folder (two machines without a shared filesystem) meet in one
    study: the budget is the study's, extended from either copy; a trial whose run is in the
    other copy is not started over from epoch 1 here: it is left to that copy, said in one
    line, and resumed there."""
    url = postgres.createdb("copies")
    a = Sweep(tmp_path / "a" if (tmp_path / "a").mkdir() is None else None, url, real_data_dir,
              jobs=1, trials=1)
    victim = a.trial_mid_way()
    os.kill(victim["pid"], signal.SIGKILL)           # copy A's machine dies mid-trial
    a.finish()
    (tmp_path / "b").mkdir()
    b = Sweep(tmp_path / "b", url, real_data_dir, jobs=1, trials=1)
    assert b.finish() == 130, b.stderr()
    err = b.stderr()
    assert "Traceback" not in err, err
    assert f"trial 0: its run {victim['run_dir'].name} is not in this copy" in err, err
    assert not any((b.dir / "runs").iterdir())      # nothing started over here
    a.again()                                        # copy A's machine is back
    assert a.finish() == 0, a.stderr()
    log = (victim["run_dir"] / "train.log").read_text()
    assert "resumed at epoch" in log, log
    _every_epoch_once(a.dir, 1)
    # the budget lives in the study: extended from copy A, copy B counts it too
    a.args += ["--trials", "2"]
    a.again()
    assert a.finish() == 0, a.stderr()
    b.again()
    assert b.finish() == 0, b.stderr()
    assert "budget left 0 of 2" in b.stderr().strip().splitlines()[-1], b.stderr()
    assert status(b.dir)["budget"] == 2 and status(b.dir)["budget_left"] == 0
    # the spec's lower trials (1) after --trials 2 extended the sweep: said, and the budget kept
    a.args = a.args[:-2]
    a.again()
    assert a.finish() == 0, a.stderr()
    assert "trials: 1 is below this sweep's budget of 2" in a.stderr(), a.stderr()


def test_a_broken_run_lock_refuses_its_old_holders_writes(tmp_path):
    """The run lock's side of a take-over, alone: the holder's lock file is replaced by a fresh
    one (the database declared the holder dead); the taker can lock the run, and the old
    holder's next write is refused."""
    from fmnist_mlp.rundir import guard
    from fmnist_mlp.rundir.start import check_new_run, create_run_dir

    run = create_run_dir(check_new_run(tmp_path, "r"))
    old = guard.RunLock(run).acquire()
    try:
        guard.refuse_if_taken(run)                   # still its own: nothing raised
        assert guard.break_lock(run) is True
        with pytest.raises(guard.RunTakenOver, match="taken over by another process"):
            guard.refuse_if_taken(run)
        old.release()
        new = guard.RunLock(run).acquire()            # the taker's lock, on the fresh file
        guard.refuse_if_taken(run)
        new.release()
        assert guard.break_lock(run) is False        # nobody holds it: nothing to break
    finally:
        old.release()


def test_a_holder_frozen_inside_its_writes_and_taken_over_stops_them_when_continued(tmp_path):
    """The fence (guard.fenced): a holder frozen in the middle of a group of writes whose run is
    taken over meanwhile raises RunTakenOver the moment it is continued (SIGCONT), before its
    next write; continued with its lock intact (a shell's Ctrl-Z, then fg), it writes on. Its
    SIGCONT handler is put back afterwards."""
    from fmnist_mlp.rundir import guard
    from fmnist_mlp.rundir.start import check_new_run, create_run_dir

    run = create_run_dir(check_new_run(tmp_path, "r"))
    before = signal.getsignal(signal.SIGCONT)
    lock = guard.RunLock(run).acquire()
    written = []
    try:
        with guard.fenced(run):
            signal.raise_signal(signal.SIGCONT)          # continued, still its own run
            written.append("its own")
        with pytest.raises(guard.RunTakenOver, match="taken over by another process"):
            with guard.fenced(run):
                guard.break_lock(run)                    # the taker, while this one is frozen
                signal.raise_signal(signal.SIGCONT)
                written.append("stale")
    finally:
        lock.release()
    assert written == ["its own"]
    assert signal.getsignal(signal.SIGCONT) == before


def test_a_trainer_frozen_while_saving_an_epoch_writes_nothing_more_once_taken_over(
        real_data_dir, tmp_path, monkeypatch):
    """The race behind a flaky take-over: a worker frozen after the recorder's check, in the
    middle of saving epoch 2's checkpoint, its run taken over while it slept. Continued, it
    must not write its stale summary or log line over its successor's (a finished run was left
    marked running): the run's files stay as epoch 1 left them."""
    import fmnist_mlp
    from fmnist_mlp.rundir import files as runs
    from fmnist_mlp.rundir import guard

    save = runs.save_checkpoint

    def save_and_freeze(paths, data, base):
        save(paths, data, base=base)
        if json.loads((Path(base) / "summary.json").read_text())["epochs_completed"] == 1 \
                and any("last" in str(p) for p in paths):
            guard.break_lock(base)                       # taken over while frozen here ...
            signal.raise_signal(signal.SIGCONT)          # ... then continued

    monkeypatch.setattr(runs, "save_checkpoint", save_and_freeze)
    config = {"model": {"hidden": [8]}, "data": {"subset": 2000, "val_size": 500},
              "train": {"epochs": 4, "checkpoint_every": 1, "kernels": "numpy"}}
    with pytest.raises(guard.RunTakenOver):
        fmnist_mlp.train(config, runs_dir=tmp_path / "runs", data_dir=real_data_dir,
                         progress=False)
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "running" and summary["epochs_completed"] == 1, summary
    log = (run / "train.log").read_text().splitlines()
    assert not any(line.startswith("epoch 2/") for line in log), log



def test_a_second_interrupt_while_the_stop_is_recorded_waits_for_it(real_data_dir, tmp_path,
                                                                     monkeypatch):
    """Slurm's time-limit warning, then scancel's SIGTERM a moment later (or Ctrl-C twice): the
    second signal lands while the first one's stop is being written. It waits until the run is
    marked interrupted and its log says so, then acts (a flaky cluster test lost that line)."""
    import fmnist_mlp
    from fmnist_mlp.rundir import files as runs

    write_summary = runs.write_summary

    def write_then_signal(run_dir, summary):
        write_summary(run_dir, summary)
        if summary["status"] == "running" and summary["epochs_completed"] == 2:
            signal.raise_signal(signal.SIGINT)           # the first: ends training at epoch 2
        elif summary["status"] == "interrupted":
            signal.raise_signal(signal.SIGINT)           # the second, while the stop is written

    monkeypatch.setattr(runs, "write_summary", write_then_signal)
    config = {"model": {"hidden": [8]}, "data": {"subset": 2000, "val_size": 500},
              "train": {"epochs": 5, "kernels": "numpy"}}
    with pytest.raises((KeyboardInterrupt, fmnist_mlp.errors.TrainingInterrupted)):
        fmnist_mlp.train(config, runs_dir=tmp_path / "runs", data_dir=real_data_dir,
                         progress=False)
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    last = (run / "train.log").read_text().splitlines()[-1]
    assert last.split(" ", 2)[2].startswith("interrupted: interrupted; resume with: "), last
