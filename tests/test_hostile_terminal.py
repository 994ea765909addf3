"""Issue 31, every byte on the terminal: one door (``fmnist_mlp/io/terminal.py``) through which
all output passes -- text for people made printable, what scripts read (paths, JSON) written
exactly -- and standard streams that are closed or full never turn a finished job into a
traceback or a wrong exit code."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from round3_helpers import ENV, REPO, TINY, fmnist, one_line

PACKAGE = REPO / "fmnist_mlp"
DOOR = PACKAGE / "io" / "terminal.py"
FIXTURE_RUN = REPO / "tests" / "fixtures" / "run-v1"
ESCAPE = "\x1b]0;pwned\x07\x1b[2J"


# ------------------------------------------------------------------------- the door, from the source


def _output_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that write to a terminal stream by themselves: print(), click.echo/secho (or an
    imported echo), any use of sys.stdout/sys.stderr, and tqdm(...) without
    ``file=progress_stream()``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "print":        # called, or passed on
            found.append((node.lineno, "print"))
        if isinstance(node, ast.ImportFrom) and node.module == "click":
            found += [(node.lineno, f"click.{a.name}") for a in node.names
                      if a.name in ("echo", "secho", "echo_via_pager")]
        if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") \
                and isinstance(node.value, ast.Name) and node.value.id == "sys":
            found.append((node.lineno, f"sys.{node.attr}"))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr \
            if isinstance(func, ast.Attribute) else ""
        if isinstance(func, ast.Attribute) and name in ("echo", "secho", "echo_via_pager") \
                and isinstance(func.value, ast.Name) and func.value.id == "click":
            found.append((node.lineno, f"click.{name}()"))
        if name == "tqdm":
            stream = next((k.value for k in node.keywords if k.arg == "file"), None)
            door = (isinstance(stream, ast.Call) and isinstance(stream.func, ast.Name)
                    and stream.func.id == "progress_stream") or (
                    isinstance(stream, ast.Attribute) and stream.attr == "stream")
            if not door:
                found.append((node.lineno, "tqdm() without file=progress_stream()"))
        if isinstance(func, ast.Attribute) and name == "write" \
                and isinstance(func.value, ast.Name) and func.value.id == "tqdm":
            found.append((node.lineno, "tqdm.write()"))
    return found


def test_every_output_call_in_the_package_goes_through_the_one_door():
    bypasses = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == DOOR:
            continue
        for line, what in _output_calls(ast.parse(path.read_text(), str(path))):
            bypasses.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not bypasses, ("output around fmnist_mlp/io/terminal.py (use show() for people, "
                          "emit() for what scripts read):\n" + "\n".join(bypasses))


def test_the_scan_finds_what_it_looks_for():
    # A scan that finds nothing proves nothing unless it can find something.
    source = ("import sys, click\nfrom tqdm import tqdm\nprint(1)\nclick.echo(2)\n"
              "sys.stderr.write('x')\ntqdm(total=3)\ntqdm(total=3, file=progress_stream())\n"
              "from click import echo\nf(note=print)\n")
    assert sorted(what for _, what in _output_calls(ast.parse(source))) == sorted([
        "print", "click.echo()", "sys.stderr", "tqdm() without file=progress_stream()",
        "click.echo", "print"])


# ------------------------------------------------------------------------- closed and full streams


def _closing(*fds):
    def close():
        for fd in fds:
            os.close(fd)
    return close


def _runs(tmp_path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    return runs


def test_a_closed_stdout_ends_quietly_with_141_not_a_traceback(tmp_path):
    # Cause 8: with stdout closed (>&-) every command ended in a traceback from flushing None.
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "runs", "--runs-dir",
                           str(_runs(tmp_path))], env=ENV, stderr=subprocess.PIPE, text=True,
                          preexec_fn=_closing(1), timeout=60)
    assert proc.returncode == 141 and proc.stderr == ""


def test_train_with_stdout_closed_finishes_its_run_and_exits_quietly(real_data_dir, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "train", *TINY, "-q",
                           "--data-dir", str(real_data_dir), "--runs-dir", str(runs)],
                          env=ENV, stderr=subprocess.PIPE, text=True, preexec_fn=_closing(1),
                          timeout=120)
    assert "Traceback" not in proc.stderr and proc.returncode == 141, proc.stderr
    (run,) = runs.iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert (run / "checkpoints" / "best.npz").stat().st_size > 0      # no line written into it


def test_train_with_stderr_closed_exits_0_and_prints_its_run_directory(real_data_dir, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "train", *TINY,
                           "--data-dir", str(real_data_dir), "--runs-dir", str(runs)],
                          env=ENV, stdout=subprocess.PIPE, text=True, preexec_fn=_closing(2),
                          timeout=120)
    assert proc.returncode == 0
    (run,) = runs.iterdir()
    assert proc.stdout == f"{run}\n"


def test_a_full_stdout_is_one_line_and_exit_1(tmp_path):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "runs", "--runs-dir",
                               str(_runs(tmp_path))], env=ENV, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1
    assert one_line(proc) == "error: cannot write to standard output (No space left on device)"


def test_a_full_stderr_does_not_change_the_exit_code(tmp_path):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "eval", str(tmp_path / "x")],
                              env=ENV, stdout=subprocess.PIPE, stderr=full, text=True,
                              timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""


# ------------------------------------------------------------------------- escapes from names


@pytest.fixture(scope="module")
def escaped_runs(real_data_dir, tmp_path_factory):
    """A runs folder (made by the user) whose name holds escape sequences, and one run in it."""
    runs = tmp_path_factory.mktemp("terminal") / f"runs{ESCAPE}"
    runs.mkdir()
    proc = fmnist("train", *TINY, "--data-dir", real_data_dir, "--runs-dir", runs)
    return runs, proc


def test_train_prints_the_exact_run_directory_and_shows_it_escaped(escaped_runs):
    # Cause 10: the "run directory:" line on stderr bypassed the filter, and click stripped the
    # escape sequence from the stdout line scripts read, so it named no directory.
    runs, proc = escaped_runs
    assert proc.returncode == 0, proc.stderr
    (run,) = runs.iterdir()
    assert proc.stdout == f"{run}\n" and Path(proc.stdout[:-1]).is_dir()
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "run directory: " in proc.stderr and "\\x1b]0;pwned\\x07" in proc.stderr


def test_eval_and_runs_show_names_escaped(escaped_runs, real_data_dir, tmp_path):
    runs, _ = escaped_runs
    (run,) = runs.iterdir()
    for argv in (["eval", run, "--data-dir", real_data_dir], ["runs", "--runs-dir", runs]):
        proc = fmnist(*argv)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout + proc.stderr
    empty = tmp_path / f"empty{ESCAPE}"
    empty.mkdir()
    proc = fmnist("runs", "--runs-dir", empty)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout
    assert proc.stdout == "no runs in " + str(empty).replace("\x1b", "\\x1b").replace(
        "\x07", "\\x07") + "\n"


def test_eval_shows_a_run_name_from_its_summary_escaped(real_data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["name"] = f"x{ESCAPE}"
    (run / "summary.json").write_text(json.dumps(summary))
    for argv in (["eval", run, "--data-dir", real_data_dir], ["runs", "--runs-dir", tmp_path]):
        proc = fmnist(*argv)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout


def test_a_folder_whose_new_name_holds_control_characters_is_not_created(tmp_path):
    for argv, made in (
            (["train", *TINY, "--runs-dir", tmp_path / f"new{ESCAPE}"], tmp_path / f"new{ESCAPE}"),
            (["download", "--data-dir", tmp_path / "d\nx" / "cache"], tmp_path / "d\nx")):
        proc = fmnist(*argv)
        assert proc.returncode == 2
        assert "control characters" in one_line(proc) and "\x1b" not in proc.stderr
        assert not made.exists()


def test_a_usage_error_naming_an_escape_sequence_shows_it_escaped(tmp_path):
    proc = fmnist("eval", tmp_path, "--split", ESCAPE)
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "\\x1b]0;pwned" in proc.stderr


def test_sweep_status_and_report_show_a_journals_run_dir_escaped(needs_optuna, real_data_dir,
                                                                  tmp_path):
    # Cause 10: sweep status/report printed a trial's run_dir from the journal unfiltered.
    from sweep_helpers import run_tiny_sweep

    _, sweep_dir = run_tiny_sweep(tmp_path, real_data_dir, trials=1)
    journal = sweep_dir / "study.journal"
    (run,) = (sweep_dir / "runs").iterdir()
    text = journal.read_text()
    assert text.count(json.dumps(run.name)[1:-1]) >= 1
    journal.write_text(text.replace(run.name, run.name + "\\u001b]0;pwned\\u0007"))
    for argv in (["sweep", "status", sweep_dir], ["sweep", "report", sweep_dir, "--out",
                                                  tmp_path / "report"]):
        proc = fmnist(*argv)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout + proc.stderr and "\\x1b]0;pwned" in proc.stdout
