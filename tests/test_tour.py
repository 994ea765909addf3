"""The README's tour runs as written, in a fresh shell after the two set-up commands.

Every ``$ `` line of the tour's blocks, in order, in one ``bash --norc`` whose PATH does not hold
``fmnist-mlp`` (the tour's first line activates ``.venv``), from a directory laid out as a
checkout after ``make train``: ``configs/``, ``sweeps/`` and ``scripts/`` of this repository and
``.venv`` (the environment running the tests). Then the tour's Python blocks. On small settings:
every ``train`` gets ``--set train.epochs=2`` and ``sweeps/tour.yaml`` trains 1 epoch per trial;
nothing else is changed. Each command must exit 0, and the first output line the README shows
for it must appear, up to its first measured number (run names, times and pids aside). A step
written with a trailing ``&`` runs in the background and is stopped when the tour ends.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_or_skip

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARK = "@@tour-command@@"


def tour_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## A five-minute tour")
    return text[start:text.index("\n## ", start + 1)]


def blocks(section: str, language: str = "") -> list[str]:
    """The section's fenced blocks of ``language`` ("" = plain), fence by fence."""
    found, current, lang = [], None, ""
    for line in section.splitlines():
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang == language:
                    found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found


def tour_commands(section: str) -> list[tuple[str, list[str]]]:
    """``[(command, the output lines the README shows under it)]`` from the plain blocks."""
    steps: list[tuple[str, list[str]]] = []
    for block in blocks(section):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:].split("  #")[0].strip(), []))
            elif steps:
                steps[-1][1].append(line)
    return steps


def shown_prefix(line: str) -> str:
    """A shown line up to its first measured number; run names, dates and host[pid] made
    placeholders (they differ from run to run)."""
    line = re.sub(r"\d{8}-\d{6}-[\w.+=-]*?-[0-9a-f]{6}", "RUN", line)
    line = re.sub(r"sweep-\d{8}-\d{6}", "sweep-WHEN", line)
    line = re.sub(r"^\d{4}-\d\d-\d\dT[\d:]+\+\d{4} \S+\[\d+\]", "WHEN", line)
    line = re.sub(r"/\S*/runs/", "runs/", line)
    match = re.search(r"\d*\.\d", line)
    return line[:match.start()] if match else line


def smaller(command: str, port: int = 8000) -> str:
    if command.startswith("fmnist-mlp train") or "$(fmnist-mlp train" in command:
        if "--dry-run" not in command:
            command = command.replace("fmnist-mlp train", "fmnist-mlp train --set train.epochs=2")
    if command.startswith("fmnist-mlp serve"):          # a free port, not the tour's 8000
        command = command.replace("fmnist-mlp serve", f"fmnist-mlp serve --port {port}")
    return command.replace("localhost:8000", f"localhost:{port}")


def test_the_tour_is_parsed_into_its_commands():
    steps = tour_commands(tour_section())
    commands = [c for c, _ in steps]
    assert commands[0] == ". .venv/bin/activate"
    assert any(c.startswith("RUN=$(fmnist-mlp train") for c in commands)
    for verb in ("eval", "runs", "gradcheck", "test-images", "predict", "export", "serve",
                 "sweep run", "sweep report"):
        assert any(c.startswith(f"fmnist-mlp {verb}") for c in commands), verb
    assert smaller("fmnist-mlp serve $RUN &", 5123) == "fmnist-mlp serve --port 5123 $RUN &"
    assert smaller("curl -s localhost:8000/predict", 5123) == "curl -s localhost:5123/predict"
    assert shown_prefix("epoch  1/15  train loss 1.2232 acc") == "epoch  1/15  train loss "
    assert shown_prefix("sweep /tmp/x/runs/sweep-tour: 4 finished") == "sweep runs/sweep-tour: 4 finished"


@pytest.mark.slow
@pytest.mark.realdata
def test_the_readme_tour_runs_as_written_in_a_fresh_shell(real_data_dir, tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "fmnist-mlp").is_file():
        require_or_skip(f"the tests do not run in a virtual env with fmnist-mlp ({venv})")
    (tmp_path / ".venv").symlink_to(venv)
    for folder in ("configs", "scripts"):
        (tmp_path / folder).symlink_to(REPO / folder)
    shutil.copytree(REPO / "sweeps", tmp_path / "sweeps")
    tour_yaml = tmp_path / "sweeps" / "tour.yaml"
    tour_yaml.write_text(tour_yaml.read_text(encoding="utf-8").replace(
        "set: {train.epochs: 3}", "set: {train.epochs: 1}"), encoding="utf-8")

    section = tour_section()
    steps = tour_commands(section)
    script = ["set -e", "exec 2>&1", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    with socket.socket() as probe:                      # a port free now, for the tour's server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for i, (command, _) in enumerate(steps):
        # On a line of its own even after output with no final newline (curl's JSON).
        script += [f"printf '\\n{MARK} {i}\\n'", smaller(command, port)]
    # A step the tour starts in the background (`… &`, a server, say) is stopped at the end.
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if not (Path(p) / "fmnist-mlp").exists()]
    env = {"PATH": os.pathsep.join(path), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "FMNIST_MLP_DATA_DIR": str(real_data_dir), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-c", "\n".join(script)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    outputs = re.split(rf"^{MARK} \d+\n", proc.stdout, flags=re.M)[1:]
    assert proc.returncode == 0, (f"tour stopped at: {steps[len(outputs) - 1][0]!r}\n"
                                  f"{proc.stdout[-3000:]}")
    assert len(outputs) == len(steps)
    for (command, shown), output in zip(steps, outputs):
        first = next((line for line in shown if line.strip() and "…" not in line), None)
        if first is None:
            continue
        actual = [shown_prefix(line) for line in output.splitlines()]
        want = shown_prefix(first)
        assert any(line.startswith(want) for line in actual), (command, want, output[-1500:])

    python = blocks(section, "python")
    assert len(python) == 3
    for block in python:
        run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (block[:200], run.stderr[-2000:])
        if "onnxruntime" in block:
            assert run.stdout.strip() == "[8]"         # the bag is a bag


def test_sweep_sh_finds_the_checkouts_venv_when_fmnist_mlp_is_not_on_path(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "fmnist-mlp").is_file():
        require_or_skip(f"the tests do not run in a virtual env with fmnist-mlp ({venv})")
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "sweep.sh", tmp_path / "scripts" / "sweep.sh")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(p) / "fmnist-mlp").exists())
    env = {"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    args = ["bash", "scripts/sweep.sh", "-n", "-c", "configs/fast.yaml", "optimizer.lr=1e-3,3e-3"]
    missing = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and ". .venv/bin/activate" in missing.stderr
    (tmp_path / ".venv").symlink_to(venv)
    found = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.splitlines()) == 2 and "fmnist-mlp train" in found.stdout
