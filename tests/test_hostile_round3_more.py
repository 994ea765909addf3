"""Hostile inputs, round three (issue 25), part three: new cases in the same families, found by
attacking the newer surfaces again -- safetensors headers a JSON parser reads two ways (duplicate
keys, integers too long to convert), stored normalisations outside the pixel range, finite
weights whose outputs overflow, models of another class count, model files known by content
rather than suffix, export -o of the other format's suffix, a LAB TIFF, a runs directory with a
newline through scripts/distill.sh, scripts asked for help, and a MemoryError anywhere in a
command. CLI as a subprocess, as in parts one and two.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from round3_helpers import (ENV, GiB, REPO, TINY, fmnist, model_spec, need, one_line, peak_rss,
                            shirt, st_parts, st_write, with_meta, work)

pytestmark = pytest.mark.realdata


def _raw_header_file(path: Path, text: str, body: bytes) -> Path:
    """A safetensors file whose JSON header is ``text`` exactly (padded with spaces)."""
    import struct

    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def _refused(proc, path: Path, *words: str) -> str:
    assert proc.returncode == 1 and proc.stdout == "", (proc.stdout, proc.stderr)
    line = one_line(proc)
    assert line.startswith(f"error: {path}: "), line
    for word in words:
        assert word in line, line
    return line


# ------------------------------------------------------------------------- safetensors headers


def test_a_header_integer_too_long_to_convert_is_one_line(work, shirt, tmp_path):
    # A 5000-digit shape entry: Python's json raises ValueError (the 4300-digit limit), not
    # JSONDecodeError, and it escaped as a traceback.
    header, body = st_parts(work["st"])
    text = json.dumps(header).replace('"shape": [8]', '"shape": [' + "9" * 5000 + "]", 1)
    path = _raw_header_file(tmp_path / "long-int.safetensors", text, body)
    _refused(fmnist("predict", path, shirt), path, "JSON")
    # ...and inside a metadata value (the model spec), the same
    spec = json.dumps(model_spec(header)).replace('"hidden": [8]',
                                                  '"hidden": [' + "9" * 5000 + "]")
    header["__metadata__"]["model_spec"] = spec
    path = st_write(tmp_path / "long-int-spec.safetensors", header, body)
    _refused(fmnist("predict", path, shirt), path, "model_spec")


def test_duplicate_keys_in_a_header_are_refused(work, shirt, tmp_path):
    # JSON readers disagree on a repeated key (Python keeps the last, others the first or
    # refuse): one file, two models. A repeated model_spec was silently read as the last one.
    header, body = st_parts(work["st"])
    text = json.dumps(header)
    first = json.dumps(json.dumps({**model_spec(header), "hidden": [100000, 100000]}))
    doubled = text.replace('"__metadata__": {', f'"__metadata__": {{"model_spec": {first}, ', 1)
    path = _raw_header_file(tmp_path / "dup-meta.safetensors", doubled, body)
    _refused(fmnist("predict", path, shirt), path, "duplicate", "model_spec")
    # a tensor named twice, the second entry consistent with the first
    entry = json.dumps(header["layer1.b"])
    doubled = text[:-1] + f', "layer1.b": {entry}}}'
    path = _raw_header_file(tmp_path / "dup-tensor.safetensors", doubled, body)
    _refused(fmnist("predict", path, shirt), path, "duplicate", "layer1.b")
    # a key repeated inside a metadata value's JSON (the config)
    config = json.dumps(json.loads(header["__metadata__"]["config"]))
    header["__metadata__"]["config"] = config[:-1] + ', "seed": 7}'
    path = st_write(tmp_path / "dup-config.safetensors", header, body)
    _refused(fmnist("predict", path, shirt), path, "duplicate", "seed")


# ------------------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("normalization", [
    {"mean": 1e308, "std": 1e308},            # ratio 1, but float32 overflows: nan probabilities
    {"mean": 10 ** 400, "std": 1},            # int too large for a float: a traceback
    {"mean": True, "std": True},              # booleans read as 1.0: another model, exit 0
    {"mean": "0.3", "std": "0.3"},            # strings read as numbers
    {"mean": -0.5, "std": 0.3},               # a pixel mean outside 0..1 cannot be a real one
    {"mean": 0.3, "std": 7.0},                # pixels 0..1 have a std of at most 0.5
], ids=["1e308", "int-10^400", "bools", "strings", "mean-below-0", "std-above-1"])
def test_a_stored_normalisation_outside_the_pixel_range_is_refused(work, shirt, tmp_path,
                                                                   normalization):
    header, body = st_parts(work["st"])
    path = tmp_path / "norm.safetensors"
    if normalization["mean"] == 10 ** 400:        # json.dumps cannot be asked for this one
        header["__metadata__"]["normalization"] = '{"mean": 1' + "0" * 400 + ', "std": 1}'
        st_write(path, header, body)
    else:
        st_write(path, with_meta(header, "normalization", normalization), body)
    proc = fmnist("predict", path, shirt)
    line = _refused(proc, path, "normalization")
    assert "Warning" not in proc.stderr and "nan" not in proc.stdout, line


def test_a_checkpoint_normalisation_that_overflows_float32_is_refused(work, shirt, tmp_path):
    # The same 1e308 in a .npz checkpoint's metadata: NumPy overflow warnings, nan, exit 0.
    import zipfile

    from numpy.lib import format as npy_format

    source = work["run"] / "checkpoints" / "best.npz"
    path = tmp_path / "norm.npz"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "meta.npy":
                import io

                meta = json.loads(str(npy_format.read_array(io.BytesIO(data))))
                meta["normalization"] = {"mean": 1e308, "std": 1e308}
                out = io.BytesIO()
                npy_format.write_array(out, np.array(json.dumps(meta)))
                data = out.getvalue()
            zout.writestr(info.filename, data)
    _refused(fmnist("predict", path, shirt), path, "normalization")


@pytest.fixture(scope="module")
def bn_export(work):
    """A tiny batch-norm run exported as safetensors (its running statistics are tensors)."""
    runs = work["root"] / "bn-runs"
    proc = fmnist("train", *TINY, "--set", "model.batchnorm=true", "--name", "bn",
                  "--data-dir", work["data"], "--runs-dir", runs, "-q")
    assert proc.returncode == 0, proc.stderr
    run = Path(proc.stdout.strip().splitlines()[-1])
    path = work["root"] / "bn.safetensors"
    proc = fmnist("export", run, "--format", "safetensors", "-o", path)
    assert proc.returncode == 0, proc.stderr
    return path


def _edited_tensor(source: Path, out: Path, name: str, value: float) -> Path:
    header, body = st_parts(source)
    begin, end = header[name]["data_offsets"]
    count = (end - begin) // 4
    body = body[:begin] + np.full(count, value, "<f4").tobytes() + body[end:]
    return st_write(out, header, body)


def test_finite_weights_whose_outputs_overflow_are_refused(work, shirt, bn_export, tmp_path):
    # Weights of 3e38 are finite, so the NaN check passed them; every output overflowed:
    # predict printed "T-shirt/top nan" with NumPy warnings, eval reported loss nan and an
    # accuracy, exit 0 -- and as a teacher, "training diverged; try a lower learning rate".
    huge = _edited_tensor(work["st"], tmp_path / "huge.safetensors", "layer0.W", 3e38)
    for argv in (["predict", huge, shirt], ["eval", huge, "--data-dir", work["data"]],
                 ["export", huge, "--format", "onnx", "-o", tmp_path / "x.onnx"]):
        proc = fmnist(*argv)
        line = _refused(proc, huge, "overflow")
        assert "Warning" not in proc.stderr, line
    assert not (tmp_path / "x.onnx").exists()
    proc = fmnist("train", *TINY, "--set", f"distill.teachers=[{huge}]",
                  "--data-dir", work["data"], "--runs-dir", tmp_path / "runs", "-q")
    assert proc.returncode == 1 and "overflow" in one_line(proc)
    assert not (tmp_path / "runs").exists()
    # A negative running variance: sqrt of a negative number, nan everywhere.
    negative = _edited_tensor(bn_export, tmp_path / "neg-var.safetensors",
                              "layer0.running_var", -4.0)
    proc = fmnist("predict", negative, shirt)
    _refused(proc, negative, "running_var")
    assert "Warning" not in proc.stderr


def _five_class_file(work, tmp_path) -> Path:
    """The tiny export cut down to a consistent 5-class model (spec and tensors agree)."""
    header, body = st_parts(work["st"])
    spec = {**model_spec(header), "num_classes": 5}
    header = with_meta(header, "model_spec", spec)
    (w1_begin, w1_end), (b1_begin, b1_end) = (header["layer1.W"]["data_offsets"],
                                              header["layer1.b"]["data_offsets"])
    w1 = np.frombuffer(body[w1_begin:w1_end], "<f4").reshape(8, 10)[:, :5].copy()
    b1 = np.frombuffer(body[b1_begin:b1_end], "<f4")[:5].copy()
    header["layer1.W"] = {"dtype": "F32", "shape": [8, 5],
                          "data_offsets": [w1_begin, w1_begin + 160]}
    header["layer1.b"] = {"dtype": "F32", "shape": [5],
                          "data_offsets": [w1_begin + 160, w1_begin + 180]}
    return st_write(tmp_path / "five.safetensors", header,
                    body[:w1_begin] + w1.tobytes() + b1.tobytes())


def test_a_model_of_another_class_count_is_refused_by_every_reader(work, shirt, tmp_path):
    # predict named the 5 classes with Fashion-MNIST's first five names (exit 0), eval and
    # predict -m were tracebacks (broadcast error), export wrote an ONNX ensemble of a 10- and a
    # 5-class model and a 5-class graph with 10 class names, exit 0.
    five = _five_class_file(work, tmp_path)
    for argv in (["predict", five, shirt], ["predict", work["run"], "-m", five, shirt],
                 ["eval", five, "--data-dir", work["data"]],
                 ["export", five, "--format", "onnx", "-o", tmp_path / "a.onnx"],
                 ["export", work["run"], five, "--format", "onnx", "-o", tmp_path / "b.onnx"]):
        _refused(fmnist(*argv), five, "5 classes", "10")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


# ------------------------------------------------------------------------- model files


def test_a_model_file_is_read_by_its_content_not_its_suffix(work, shirt, tmp_path):
    # "model.SAFETENSORS" was read as a .npz ("not a .npz checkpoint"); a checkpoint copied to
    # "best.safetensors" was parsed as safetensors ("its header claims 193340853072 bytes").
    upper = tmp_path / "MODEL.SAFETENSORS"
    shutil.copy(work["st"], upper)
    npz_named_st = tmp_path / "best.safetensors"
    shutil.copy(work["run"] / "checkpoints" / "best.npz", npz_named_st)
    expected = fmnist("predict", work["run"], shirt).stdout
    for model in (upper, npz_named_st):
        proc = fmnist("predict", model, shirt)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == expected


def test_a_fifo_or_device_as_a_model_is_named_for_what_it_is(work, shirt, tmp_path):
    # Said "checkpoint not found" of a FIFO (as model and as teacher) and of /dev/zero.
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    for model in (fifo, Path("/dev/zero")):
        _refused(fmnist("predict", model, shirt, timeout=60), model, "not a regular file")
    proc = fmnist("train", *TINY, "--set", f"distill.teachers=[{fifo}]",
                  "--data-dir", work["data"], "--runs-dir", tmp_path / "runs", "-q", timeout=60)
    assert proc.returncode == 1 and "not a regular file" in one_line(proc)


# ------------------------------------------------------------------------- export -o


@pytest.mark.parametrize("fmt, name", [("onnx", "model.safetensors"),
                                       ("safetensors", "model.onnx"),
                                       ("safetensors", "model.npz"),
                                       ("onnx", "model.ONNX.safetensors")])
def test_export_refuses_an_output_named_for_another_format(work, tmp_path, fmt, name):
    # --format onnx -o model.safetensors wrote ONNX bytes under that name (exit 0); predict then
    # said "its header claims 7597129906443651080 bytes", and a safetensors file named .onnx
    # was turned away as "an ONNX export".
    out = tmp_path / name
    proc = fmnist("export", work["run"], "--format", fmt, "-o", out)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert str(out) in line and fmt in line
    assert list(tmp_path.iterdir()) == []


def test_export_to_any_other_suffix_is_still_allowed(work, tmp_path):
    for fmt, name in (("onnx", "model.bin"), ("safetensors", "model"), ("onnx", "m.Onnx")):
        proc = fmnist("export", work["run"], "--format", fmt, "-o", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / name).is_file()


# ------------------------------------------------------------------------- images


def test_a_lab_tiff_is_predicted_from_its_lightness(work, shirt, tmp_path):
    # A CIELAB TIFF (a mode Pillow opens) failed with "conversion from LAB to RGB not supported".
    need("PIL")
    from PIL import Image

    lab = Image.open(shirt).convert("RGB").convert("LAB")
    path = tmp_path / "shirt-lab.tif"
    lab.save(path)
    proc = fmnist("predict", work["run"], path, "--json")
    assert proc.returncode == 0, proc.stderr
    gray = fmnist("predict", work["run"], shirt, "--json")
    got = json.loads(proc.stdout)["predictions"][0]
    want = json.loads(gray.stdout)["predictions"][0]
    assert got["label"] == want["label"]


# ------------------------------------------------------------------------- scripts


def test_distill_sh_keeps_teachers_found_in_a_runs_dir_with_a_newline(work, tmp_path):
    # The sweep's finished runs were read one per line: a runs directory with a newline in its
    # name became two teachers that do not exist ("/tmp/.../dn: no such run directory").
    spec = tmp_path / "teachers.yaml"
    spec.write_text(textwrap.dedent(f"""\
        base: {REPO / 'configs' / 'default.yaml'}
        set: {{data.subset: 300, data.val_size: 200, model.hidden: [8], train.epochs: 1,
              train.batch_size: 100, data.split_seed: 0}}
        metric: best_val_acc
        method: grid
        trials: 1
        pruner: none
        space:
          seed: {{choice: [0]}}
        """))
    runs_dir = tmp_path / "dist\nill"
    runs_dir.mkdir()    # made by the user: the tool refuses to create such a name (issue 31)
    env = {**ENV, "FMNIST_MLP_DATA_DIR": str(work["data"])}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "distill.sh"), "-r", str(runs_dir),
                           "-s", str(spec), "-j", "1", "--", *TINY,
                           "--set", "model.batchnorm=false", "--set", "data.augment.flip=false",
                           "--set", "data.augment.shift=0",
                           "--set", "data.augment.test_flip=false"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import yaml

    student = Path(proc.stdout.rstrip("\n"))          # the run directory, newline and all
    teachers = yaml.safe_load((student / "config.yaml").read_text())["distill"]["teachers"]
    assert len(teachers) == 1 and teachers[0].startswith(str(runs_dir / "teachers"))
    assert Path(teachers[0]).is_dir()


@pytest.mark.parametrize("argv, code", [(["-h"], 0), (["--help"], 0), (["--runs"], 2),
                                        (["-r", str(Path("x")), "-r", "y"], 2)],
                         ids=["-h", "--help", "unknown-option", "-r-twice"])
def test_results_table_sh_help_and_unknown_options_create_nothing(tmp_path, argv, code):
    # `results-table.sh --help` trained a config named "--help" ("config file not found") and
    # exited 1; an unknown option or a second -r was taken for a config the same way.
    env = {**ENV, "FMNIST_MLP_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "results-table.sh"), *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    shown = proc.stdout if code == 0 else proc.stderr
    assert "Usage: scripts/results-table.sh" in shown or "usage: scripts/results-table.sh" in shown
    assert "config file not found" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- MemoryError


def test_a_memory_error_anywhere_in_a_command_is_one_line(tmp_path):
    # A MemoryError outside the places that expect one (here: listing runs) was a traceback.
    code = textwrap.dedent("""\
        import sys
        import fmnist_mlp.rundir.table as table
        def boom(*args, **kwargs):
            raise MemoryError()
        table.collect_runs = boom
        from fmnist_mlp.cli import main
        main(["runs", "--runs-dir", sys.argv[1]])
        """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc)
    assert line.startswith("error: ") and "memory" in line


def test_a_memory_error_preprocessing_one_image_leaves_the_others_predicted(work, shirt,
                                                                            tmp_path):
    # read_grayscale turned a MemoryError into one error line; the preprocessing after it did
    # not: a traceback, and no image of the call was predicted.
    need("PIL")
    other = tmp_path / "other.png"
    shutil.copy(shirt, other)
    code = textwrap.dedent("""\
        import sys
        import fmnist_mlp.predict.run as run
        real = run.to_fashion_mnist
        calls = []
        def once(gray):
            calls.append(1)
            if len(calls) == 1:
                raise MemoryError()
            return real(gray)
        run.to_fashion_mnist = once
        from fmnist_mlp.cli import main
        main(["predict", *sys.argv[1:]])
        """)
    proc = subprocess.run([sys.executable, "-c", code, str(work["run"]), str(other), str(shirt)],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc)
    assert line.startswith(f"error: {other}: ") and "memory" in line
    assert proc.stdout.startswith(f"{shirt}: ")


# ------------------------------------------------------------------------- more images


def test_a_corrupt_exif_block_is_ignored_without_a_warning(work, shirt, tmp_path):
    # A JPEG or PNG whose EXIF block is cut short leaked Pillow's "UserWarning: Corrupt EXIF
    # data" (two lines of source) onto stderr; the picture itself is fine and is predicted.
    need("PIL")
    import struct
    import zlib

    from PIL import Image

    png = shirt.read_bytes()
    exif = b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x00" * 20      # 65535 entries, 20 bytes
    chunk = (struct.pack(">I", len(exif)) + b"eXIf" + exif
             + struct.pack(">I", zlib.crc32(b"eXIf" + exif) & 0xFFFFFFFF))
    bad_png = tmp_path / "exif.png"
    bad_png.write_bytes(png[:33] + chunk + png[33:])                  # after IHDR
    jpeg = tmp_path / "plain.jpg"
    Image.open(shirt).save(jpeg)
    app1 = b"Exif\x00\x00II\x2a\x00\xff\xff\xff\x7f" + b"\x00" * 30
    bad_jpeg = tmp_path / "exif.jpg"
    data = jpeg.read_bytes()
    bad_jpeg.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
                         + data[2:])
    proc = fmnist("predict", work["run"], bad_png, bad_jpeg)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert [line.split(": ")[0] for line in proc.stdout.splitlines()] == [str(bad_png),
                                                                          str(bad_jpeg)]


def test_save_preprocessed_onto_something_that_is_not_a_folder_says_so(work, shirt, tmp_path):
    # "--save-preprocessed /dev/null: cannot create the folder (File exists)", and the same for
    # a link to a missing folder: true of mkdir, not a reason a user can act on.
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "missing" / "dir")
    for target, words in ((Path("/dev/null"), "not a folder"),
                          (dangling, "symbolic link to a missing folder")):
        proc = fmnist("predict", work["run"], shirt, "--save-preprocessed", target)
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc)
        assert line.startswith(f"error: --save-preprocessed {target}: ") and words in line
        assert "File exists" not in line
    assert not (tmp_path / "missing").exists()


def test_a_safetensors_header_of_megabytes_is_refused_before_it_is_parsed(work, shirt, tmp_path):
    # A header of 16 MB of "{}," (the old cap) parsed into 5 million dicts: 475 MB resident for
    # a file fmnist-mlp never writes (its headers are a few kB).

    header, body = st_parts(work["st"])
    text = json.dumps(header)
    room = (1 << 24) - len(text) - 64
    bomb = text[:-1] + ', "x": [' + ",".join(["{}"] * (room // 3)) + "]}"
    path = _raw_header_file(tmp_path / "bomb.safetensors", bomb, body)
    code, out, err, peak = peak_rss(["predict", path, shirt], limit_bytes=GiB)
    assert code == 1 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and "header" in lines[0]
    assert peak < 200 * (1 << 20), f"peak resident memory {peak / (1 << 20):.0f} MiB"


def test_export_prints_a_run_name_with_terminal_escapes_escaped(work, tmp_path):
    # The written path was echoed as is: a run directory named "\x1b]0;...\x07\x1b[2J" cleared
    # the screen and retitled the window (click strips escapes only when stdout is no terminal,
    # so the test gives it one).
    import pty
    import select

    odd = tmp_path / "\x1b]0;owned\x07\x1b[2Jrun"
    shutil.copytree(work["run"], odd)
    main_fd, child_fd = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "fmnist_mlp", "export", str(odd),
                                 "--format", "safetensors"], env=ENV, stdout=child_fd,
                                stderr=subprocess.PIPE)
        os.close(child_fd)
        child_fd = -1
        shown = b""
        while True:
            ready, _, _ = select.select([main_fd], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:             # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        os.close(main_fd)
        if child_fd >= 0:
            os.close(child_fd)
    assert (odd / "model.safetensors").is_file()
    assert b"\x1b" not in shown and b"\x07" not in shown, shown
    assert b"\\x1b]0;owned\\x07\\x1b[2Jrun" in shown


@pytest.mark.parametrize("given", ["out/", "model.onnx/", "-", ""],
                         ids=["missing-folder-slash", "file-name-slash", "dash", "empty"])
def test_export_o_that_names_a_folder_stdout_or_nothing_is_refused(work, tmp_path, given):
    # "-o out/" (a folder that does not exist yet) wrote an ONNX file named "out"; "-o -" wrote a
    # file named "-" rather than stdout; "-o ''" was taken for "." ("-o .: already exists").
    proc = fmnist("export", work["run"], "--format", "onnx", "-o", given, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_line(proc)
    assert line.startswith("error: -o ") and "already exists" not in line
    assert list(tmp_path.iterdir()) == []


def test_save_preprocessed_with_an_empty_name_writes_nowhere(work, shirt, tmp_path):
    # --save-preprocessed "" (an unset shell variable) was taken for "." and the PNGs were
    # written into the current directory.
    proc = fmnist("predict", work["run"], shirt, "--save-preprocessed", "", cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert one_line(proc).startswith("error: --save-preprocessed ''")
    assert list(tmp_path.iterdir()) == []


def _tall_png(path: Path, width: int, height: int) -> Path:
    """A grayscale PNG of ``width`` x ``height`` light pixels, written row by row (zlib stream),
    so that making it costs no memory here."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\xeb" * width                       # filter 0, then the pixels
    rows_per_step = max(1, (1 << 20) // len(row))
    idat = []
    for start in range(0, height, rows_per_step):
        idat.append(packer.compress(row * min(rows_per_step, height - start)))
    idat.append(packer.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


@pytest.mark.slow
def test_a_one_pixel_wide_picture_of_89_million_rows_is_refused_from_its_header(work, shirt,
                                                                               tmp_path):
    # Under Pillow's pixel limit, but Pillow keeps a pointer per row: a 1 x 89,000,000 PNG of
    # 170 KB took 917 MB resident (more than 1 GB as RGBA) for a picture no camera makes.

    tall = _tall_png(tmp_path / "tall.png", 1, 89_000_000)
    code, out, err, peak = peak_rss(["predict", work["run"], tall, shirt], limit_bytes=2 * GiB)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tall}: ") and "65535" in lines[0]
    assert out.startswith(f"{shirt}: ")
    assert peak < 300 * (1 << 20), f"peak resident memory {peak / (1 << 20):.0f} MiB"


def test_an_onnx_export_past_protobufs_2_gb_is_refused_before_loading(work, tmp_path):
    # A (sparse) safetensors model of 2.4 GB, which fits the machine's memory, was loaded, copied
    # into the graph (9.2 GB resident, 37 s) and died in protobuf: an EncodeError traceback.
    # ONNX files hold at most 2 GB; the size is known from the stored spec alone.
    header, _ = st_parts(work["st"])
    hidden = [24000, 24000]
    shapes = {"layer0.W": [784, 24000], "layer0.b": [24000], "layer1.W": [24000, 24000],
              "layer1.b": [24000], "layer2.W": [24000, 10], "layer2.b": [10]}
    out = {"__metadata__": with_meta(header, "model_spec",
                                     {**model_spec(header), "hidden": hidden})["__metadata__"]}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        out[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    big = st_write(tmp_path / "big.safetensors", out, total_data=offset)

    target = tmp_path / "big.onnx"
    # Address space for the memory estimate (5 arrays per parameter, 11 GiB) to pass where the
    # machine has that much available; elsewhere the estimate refuses first, also in one line.
    code, stdout, err, peak = peak_rss(["export", big, "--format", "onnx", "-o", target],
                                       limit_bytes=16 << 30, timeout=60)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and stdout == "", err
    if "memory (estimated)" in lines[0]:
        assert code == 1
    else:
        assert code == 2 and "2 GB" in lines[0] and "safetensors" in lines[0], err
    assert peak < 300 * (1 << 20), f"peak resident memory {peak / (1 << 20):.0f} MiB"
    assert not target.exists()


def test_a_large_float_tiff_of_extreme_finite_values_is_scaled_without_overflow(work, tmp_path):
    # Finite values of +-3e38 passed the NaN check, but the shrinking (a box average in float32)
    # overflowed to inf: three NumPy warnings and a blank picture predicted, exit 0.
    need("PIL")
    from PIL import Image

    obj = np.zeros((3000, 3000), bool)
    obj[500:2500, 800:2200] = True
    floats = tmp_path / "extreme.tif"
    Image.fromarray(np.where(obj, -3e38, 3e38).astype(np.float32), "F").save(
        floats, compression="tiff_deflate")
    same = tmp_path / "same.png"                      # the same picture as 8-bit grayscale
    Image.fromarray(np.where(obj, 0, 255).astype(np.uint8)).save(same)
    proc = fmnist("predict", work["run"], floats, same, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    got, want = json.loads(proc.stdout)["predictions"]
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-3)


def _repeated_scans_jpeg(path: Path, side: int, repeats: int, mpo: bool = False) -> Path:
    """A progressive JPEG of a uniform side x side picture whose first AC scan is repeated
    ``repeats`` times: libjpeg warns of the bogus progression and decodes every one of them,
    each over the whole picture, while each costs ~100 bytes of file. ``mpo``: as the first
    picture of a multi-picture file (which Pillow names "MPO", not "JPEG")."""
    import io
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    if mpo:
        Image.new("RGB", (side, side), (128,) * 3).save(
            buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))],
            progressive=True, quality=50)
    else:
        Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True, quality=50)
    data = buffer.getvalue()
    out, i, repeated = [data[:2]], 2, False
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append(data[i:])
            break
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        end = i + 2 + length
        if marker == 0xDA:                     # the entropy-coded data runs to the next marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segment = data[i:end]
        out.append(segment)
        if marker == 0xDA and not repeated and segment[5 + 2 * segment[4]] > 0:   # Ss > 0
            out.append(segment * repeats)
            repeated = True
        i = end
    path.write_bytes(b"".join(out))
    return path


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(work, shirt, tmp_path):
    # A 2 MB progressive JPEG (8000 x 8000) repeating one scan 20,000 times took 94 s to
    # predict: every scan is decoded over the whole picture. The scans are counted first.
    need("PIL")
    import time

    bomb = _repeated_scans_jpeg(tmp_path / "scans.jpg", 8000, 2000)
    mpo = _repeated_scans_jpeg(tmp_path / "scans-mpo.jpg", 8000, 2000, mpo=True)
    plain = _repeated_scans_jpeg(tmp_path / "plain.jpg", 8000, 0)
    started = time.monotonic()
    proc = fmnist("predict", work["run"], bomb, mpo, plain, shirt, timeout=120)
    assert time.monotonic() - started < 15
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    for path, line in zip((bomb, mpo), lines):
        assert line.startswith(f"error: {path}: ") and "scans" in line
    assert [row.split(": ")[0] for row in proc.stdout.splitlines()] == [str(plain), str(shirt)]


def _structure_bomb(kind: str, shirt: Path, path: Path, steps: int = 2_000_000) -> Path:
    """The shirt with ``steps`` empty structure items Pillow parses one by one in Python:
    empty private PNG chunks after IHDR, empty APP15 markers after a JPEG's SOI, or a GIF
    comment of 1-byte sub-blocks before the first picture."""
    import io
    import struct
    import zlib

    from PIL import Image

    picture = Image.open(shirt)
    buffer = io.BytesIO()
    if kind == "png":
        picture.save(buffer, "PNG")
        data = buffer.getvalue()
        empty = b"\x00\x00\x00\x00abCd" + struct.pack(">I", zlib.crc32(b"abCd") & 0xFFFFFFFF)
        path.write_bytes(data[:33] + empty * steps + data[33:])
    elif kind == "jpeg":
        picture.save(buffer, "JPEG")
        data = buffer.getvalue()
        path.write_bytes(data[:2] + b"\xff\xef\x00\x02" * steps + data[2:])
    else:
        picture.convert("P").save(buffer, "GIF")
        data = buffer.getvalue()
        table = 3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0
        start = 13 + table
        path.write_bytes(data[:start] + b"\x21\xfe" + b"\x01a" * steps + b"\x00" + data[start:])
    return path


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif"])
def test_a_file_of_millions_of_empty_structure_items_is_refused_before_pillow_parses_it(
        work, shirt, tmp_path, kind):
    # Pillow parses these in Python, keeping ~100-200 bytes per item: 2 million empty JPEG
    # markers (8 MB) took 330 MB, a GIF comment of 4 million 1-byte sub-blocks (8 MB) 409 MB,
    # 2 million empty PNG chunks (24 MB) 297 MB and 6 s (8 million: 1.0 GB, 24 s).
    need("PIL")

    bomb = _structure_bomb(kind, shirt, tmp_path / f"bomb.{kind}")
    code, out, err, peak = peak_rss(["predict", work["run"], bomb, shirt], limit_bytes=GiB)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bomb}: ") and "100000" in lines[0]
    assert out.startswith(f"{shirt}: ")
    assert peak < 150 * (1 << 20), f"peak resident memory {peak / (1 << 20):.0f} MiB"


def test_files_with_ordinary_structure_are_still_read(work, shirt, tmp_path):
    # The walk must not refuse what Pillow reads: progressive JPEG, APNG, animated GIF, EXIF.
    need("PIL")
    from PIL import Image

    picture = Image.open(shirt)
    files = []
    for name, kwargs in (("p.jpg", {"progressive": True}), ("e.jpg", {"exif": b"Exif\x00\x00"}),
                         ("a.png", {"save_all": True, "append_images": [picture] * 50}),
                         ("a.gif", {"save_all": True, "append_images": [picture] * 50,
                                    "comment": b"x" * 1000}),
                         ("i.png", {"pnginfo": None})):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        picture.save(tmp_path / name, **kwargs)
        files.append(tmp_path / name)
    proc = fmnist("predict", work["run"], *files)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(proc.stdout.splitlines()) == len(files)


def _strips_tiff(path: Path, strips: int, big_endian: bool = False) -> Path:
    """An 8 x 8 grayscale TIFF whose first directory declares ``strips`` one-byte strips, all
    pointing at the same 64 pixels (Pillow reads both arrays into tuples, then decodes every
    strip)."""
    import struct

    e = ">" if big_endian else "<"
    tags = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, strips, None), (277, 3, 1, 1), (278, 3, 1, 1), (279, 4, strips, None)]
    pixels_at = 8 + 2 + 12 * len(tags) + 4
    offsets_at = pixels_at + 64
    counts_at = offsets_at + 4 * strips
    directory = struct.pack(e + "H", len(tags))
    for tag, kind, count, value in tags:
        if value is None:
            directory += struct.pack(e + "HHII", tag, kind, count,
                                     offsets_at if tag == 273 else counts_at)
        else:
            directory += struct.pack(e + "HHIHH", tag, kind, count, value, 0)
    head = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", 8)
    path.write_bytes(head + directory + struct.pack(e + "I", 0) + b"\xc8" * 64
                     + struct.pack(e + "I", pixels_at) * strips + struct.pack(e + "I", 1) * strips)
    return path


def test_a_tiff_declaring_millions_of_strips_is_refused_before_pillow_reads_them(work, shirt,
                                                                                 tmp_path):
    # An 80 MB TIFF of an 8 x 8 picture declaring 10 million one-byte strips took 2.65 GB and
    # 79 s (Pillow keeps the offsets as Python ints, then decodes each strip); 2 million (16 MB):
    # over 500 MB and 16 s. And 100,000 strips cannot fit in 8 rows at all.
    need("PIL")
    import time


    many = _strips_tiff(tmp_path / "many.tif", 2_000_000)
    started = time.monotonic()
    code, out, err, peak = peak_rss(["predict", work["run"], many, shirt], limit_bytes=2 * GiB)
    assert time.monotonic() - started < 10
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {many}: ") and "TIFF" in lines[0]
    assert out.startswith(f"{shirt}: ")
    assert peak < 150 * (1 << 20), f"peak resident memory {peak / (1 << 20):.0f} MiB"
    for name, big_endian in (("room.tif", False), ("room-mm.tif", True)):
        room = _strips_tiff(tmp_path / name, 100_000, big_endian)
        proc = fmnist("predict", work["run"], room, shirt)
        assert proc.returncode == 1
        assert one_line(proc).startswith(f"error: {room}: ") and "strips" in proc.stderr


def _zip_directory_bomb(path: Path, entries: int) -> Path:
    """A zip64 archive of one empty local file whose central directory lists ``entries``
    members (all pointing at it): ~57 bytes of directory per member, ~500 bytes of ZipInfo in
    Python's zipfile."""
    import struct

    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 5, 0) + b"a.npy"
    directory = bytearray()
    for i in range(entries):
        name = b"%07d.npy" % i
        directory += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0,
                                 0, len(name), 0, 0, 0, 0, 0, 0) + name
    end64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                        len(directory), len(local))
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(local) + len(directory), 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory),
                      len(local), 0)
    path.write_bytes(local + bytes(directory) + end64 + locator + end)
    return path


def test_a_checkpoint_listing_a_million_members_is_refused_from_its_end_record(work, shirt,
                                                                             tmp_path):
    # Python's zipfile builds a ZipInfo per listed member before anything can be checked: a
    # 57 MB archive listing a million members took 517 MB and 5.6 s to be refused.

    bomb = _zip_directory_bomb(tmp_path / "bomb.npz", 1_000_000)
    code, out, err, peak = peak_rss(["predict", bomb, shirt], limit_bytes=2 * GiB)
    assert peak < 150 * (1 << 20), f"peak resident memory {peak / (1 << 20):.0f} MiB"
    assert code == 1 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bomb}: ") and "members" in lines[0]


def test_an_empty_image_argument_is_a_usage_error_not_the_current_folder(tmp_path):
    # Path("") is ".": `predict RUN ""` used to predict every image in the current folder.
    (tmp_path / "here.png").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "fmnist_mlp", "predict", str(tmp_path / "no-run"), ""],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "image argument is empty" in proc.stderr and "here.png" not in proc.stderr


def test_a_fifo_in_place_of_best_npz_is_named_not_skipped(tmp_path):
    from fmnist_mlp.errors import CheckpointError
    from fmnist_mlp.rundir.files import find_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.mkfifo(run / "checkpoints" / "best.npz")
    (run / "checkpoints" / "last.npz").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match=r"best\.npz: not a regular file"):
        find_checkpoint(run)
