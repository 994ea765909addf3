"""Hostile inputs, round three (issue 25), part one: what ``predict`` is given -- images
written by Pillow (EPS named .png, float TIFFs with NaN, 9000 x 9000 pictures under a memory
limit), FIFOs, link loops, hostile names -- what it writes (--save-preprocessed on a full tmpfs,
long names, SIGTERM), and the scripts' options. The CLI runs as a subprocess, importing the
checkout this file lies in (PYTHONPATH), so the same file shows the failures on an older checkout.
(Part two: tests/test_hostile_round3_models.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from round3_helpers import (ENV, GiB, REPO, TINY, fmnist, need, one_line, peak_rss, shirt,
                            sigterm_when, work)

pytestmark = pytest.mark.realdata


# ------------------------------------------------------------------------- running a program


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 28 28
newpath 2 2 moveto 26 26 lineto 1 setlinewidth stroke
showpage
%%EOF
"""


def test_postscript_named_png_is_refused_without_running_ghostscript(work, shirt, tmp_path):
    # Pillow picks the decoder from the content: an EPS file called .png was rendered by running
    # `gs`. A stand-in `gs` first on PATH records whether anything ran it.
    need("PIL")
    bin_dir, marker = tmp_path / "bin", tmp_path / "gs-ran"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> '{marker}'\nexit 0\n")
    gs.chmod(0o755)
    evil = tmp_path / "evil.png"
    evil.write_bytes(EPS)
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}"}
    proc = fmnist("predict", work["run"], evil, shirt, env=env)
    assert not marker.exists(), "Ghostscript was run on a file given as an image"
    assert proc.returncode == 1
    line = one_line(proc)
    assert line.startswith(f"error: {evil}: ") and "PNG, JPEG, BMP, GIF, WebP or TIFF" in line
    assert proc.stdout.startswith(f"{shirt}: ")


# ------------------------------------------------------------------------- --save-preprocessed


def test_save_preprocessed_on_a_full_disk_names_the_file_and_still_predicts(work, shirt,
                                                                            tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        seen = mnt / "seen"
        seen.mkdir()
        with open(mnt / "filler", "wb", buffering=0) as f:     # fill the disk to the last block
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        proc = fmnist("predict", work["run"], shirt, "--save-preprocessed", seen)
        assert proc.returncode == 1
        line = one_line(proc)
        assert str(seen / "shirt.png") in line and "No space left" in line
        assert proc.stdout.startswith(f"{shirt}: ")         # the prediction is still printed
        assert os.listdir(seen) == []                        # no empty PNG, no temporary
    finally:
        subprocess.run(["umount", str(mnt)])


def test_a_251_character_stem_is_saved_twice(work, tmp_path):
    # 251 + ".png" is 255 bytes, the longest name; the second save ("-2") was 257: [Errno 36],
    # and no prediction was printed.
    need("PIL")
    from PIL import Image

    long = tmp_path / ("s" * 251 + ".png")
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(long)
    seen = tmp_path / "seen"
    for _ in range(2):
        proc = fmnist("predict", work["run"], long, "--save-preprocessed", seen)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"{long}: ")
    names = sorted(os.listdir(seen))
    assert len(names) == 2 and all(len(os.fsencode(n)) <= 255 for n in names)
    assert all(n.endswith(".png") and n.startswith("s" * 200) for n in names)
    for name in names:
        assert Image.open(seen / name).size == (28, 28)


def test_sigterm_during_predict_exits_130_and_leaves_only_whole_pngs(work, tmp_path):
    need("PIL")
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{i:02d}.png")
    seen = tmp_path / "seen"
    proc = sigterm_when(["predict", work["run"], photos, "--save-preprocessed", seen],
                        ready=lambda: seen.is_dir() and any(seen.iterdir()))
    assert proc.returncode == 130
    assert one_line(proc) == "interrupted"
    for path in seen.iterdir():                   # whatever was saved is a whole PNG
        assert not path.name.startswith("."), path
        with Image.open(path) as image:
            assert image.size == (28, 28)
            image.load()


def test_float_tiffs_holding_nan_or_inf_are_refused_in_one_line(work, shirt, tmp_path):
    need("PIL")
    from PIL import Image

    bad = []
    for name, value in (("nan.tif", np.nan), ("inf.tif", np.inf), ("minus-inf.tif", -np.inf)):
        pixels = np.full((40, 40), 200.0, np.float32)
        pixels[10:30, 10:30] = 3.0
        pixels[5, 7] = value
        Image.fromarray(pixels, mode="F").save(tmp_path / name)
        bad.append(tmp_path / name)
    proc = fmnist("predict", work["run"], *bad, shirt)
    assert proc.returncode == 1
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip(bad, lines):
        assert line.startswith(f"error: {path}: ") and "NaN or infinite" in line
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith(f"{shirt}: ")


# ------------------------------------------------------------------------- hangs and memory


def test_a_fifo_given_by_name_is_refused_without_hanging(work, shirt, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    proc = fmnist("predict", work["run"], fifo, shirt, timeout=60)
    assert proc.returncode == 1
    line = one_line(proc)
    assert line.startswith(f"error: {fifo}: ") and "not a regular file" in line
    assert proc.stdout.startswith(f"{shirt}: ")


def _big_image(path: Path, kind: str, side: int) -> Path:
    """A dark square on a light side x side background, small on disk (one colour per row)."""
    from PIL import Image

    pixels = np.full((side, side), 235, np.uint8)
    pixels[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 20
    if kind == "L":
        Image.fromarray(pixels).save(path, compress_level=1)
    elif kind == "RGBA":
        rgba = np.zeros((side, side, 4), np.uint8)
        rgba[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = (20, 20, 20, 255)
        Image.fromarray(rgba).save(path, compress_level=1)
    elif kind == "I;16":
        Image.fromarray(pixels.astype(np.uint16) * 257).save(path, compress_level=1)
    elif kind == "F":
        Image.fromarray(pixels.astype(np.float32)).save(path, compression="tiff_deflate")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind, name", [("L", "big.png"), ("RGBA", "big-rgba.png"),
                                        ("I;16", "big-16.png"), ("F", "big-float.tif")])
def test_a_huge_small_file_is_preprocessed_in_bounded_memory(work, shirt, tmp_path, kind, name):
    # A 9000 x 9000 PNG of 99 KB took 2.0 GB (float64 copies, np.nonzero index arrays), 2.4-2.6 GB
    # as RGBA, 16-bit or float TIFF; under a tighter limit: a MemoryError, and the other images of
    # the call were never predicted.
    need("PIL")
    big = _big_image(tmp_path / name, kind, 9000)
    code, out, err, peak = peak_rss(["predict", work["run"], big, shirt], limit_bytes=GiB)
    assert code == 0, err
    assert "Traceback" not in err and err == ""
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(big), str(shirt)]
    assert peak < 600 * (1 << 20), f"peak resident memory {peak / (1 << 20):.0f} MiB"


# ------------------------------------------------------------------------- names


def test_terminal_escapes_in_image_names_never_reach_the_terminal(work, shirt, tmp_path):
    good = tmp_path / "\x1b]0;owned\x07\x1b[2Jgood.png"
    shutil.copy(shirt, good)
    bad = tmp_path / "\x1b[31mbad.png"
    bad.write_text("not an image")
    proc = fmnist("predict", work["run"], good, bad)
    assert proc.returncode == 1
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "\x1b" not in proc.stderr
    assert proc.stdout.startswith(str(tmp_path / "\\x1b]0;owned\\x07\\x1b[2Jgood.png") + ": ")
    assert one_line(proc).startswith("error: " + str(tmp_path / "\\x1b[31mbad.png") + ": ")


def test_non_utf8_file_names_come_out_of_json_as_valid_text(work, shirt, tmp_path):
    # They came out as lone surrogates ("\udcff"), which jq cannot map back.
    name = os.fsdecode(b"\xffshirt\xfe.png")
    shutil.copy(shirt, tmp_path / name)
    bad = tmp_path / os.fsdecode(b"bad\xff.png")
    bad.write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "predict", str(work["run"]),
                           str(tmp_path / name), str(bad), "--json"], env=ENV,
                          capture_output=True, timeout=120)
    assert proc.returncode == 1
    document = json.loads(proc.stdout.decode("utf-8"))     # strict UTF-8
    text = json.dumps(document, ensure_ascii=False)
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text), text
    assert document["predictions"][0]["file"] == str(tmp_path / "\\xffshirt\\xfe.png")
    assert document["errors"][0]["file"] == str(tmp_path / "bad\\xff.png")
    # ...and in the plain lines, the same escapes
    plain = subprocess.run([sys.executable, "-m", "fmnist_mlp", "predict", str(work["run"]),
                            str(tmp_path / name)], env=ENV, capture_output=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.decode("utf-8").startswith(str(tmp_path / "\\xffshirt\\xfe.png") + ": ")


def test_a_symlink_loop_given_as_an_image_is_reported_as_such(work, shirt, tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    proc = fmnist("predict", work["run"], loop, shirt)
    assert proc.returncode == 1
    line = one_line(proc)
    assert line.startswith(f"error: {loop}: ") and "symbolic link loop" in line
    assert "no such file" not in line


# ------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("argv", [
    ["results-table.sh", "-r"],
    ["distill.sh", "-r"],
    ["distill.sh", "-s"],
    ["sweep.sh", "-d", "--help", "-i", "1", "model.hidden=[8]"],
    ["sweep.sh", "-r", "--runs-dir=/x", "-i", "1", "model.hidden=[8]"],
    ["sweep.sh", "-r", "--runs-dir=x", "-i", "1", "model.hidden=[8]"],
], ids=["results-table-r", "distill-r", "distill-s", "sweep-d-help", "sweep-r-abs", "sweep-r-rel"])
def test_script_options_missing_their_value_are_a_usage_error_that_creates_nothing(work, tmp_path,
                                                                                   argv):
    # results-table.sh -r: "$2: unbound variable"; sweep.sh -d --help created a folder named
    # "--help" and downloaded into it; -r --runs-dir=/x created "--runs-dir=".
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    extra = ["--", *TINY, "--data-dir", str(work["data"])] if argv[0] == "sweep.sh" else []
    env = {**ENV, "FMNIST_MLP_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / argv[0]), *argv[1:], *extra], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(argv[0].replace(".sh", "") + ".sh: ")
    assert "unbound" not in proc.stderr
    assert list(cwd.iterdir()) == [] and not (tmp_path / "data").exists()
    assert not Path("/x").exists()

