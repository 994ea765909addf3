"""Issue 31, the read side: whatever another user or process could have replaced is opened
without following a link where none is expected, as a regular file (a FIFO or device is one line,
never a wait), with a byte bound from what it should hold and its header checked before its data
is read; a directory that is checked and then written into is written through one open
descriptor, so a swap between the check and the writes is harmless.

Attacks that hang on a vulnerable tree run in a subprocess with a timeout, so they fail instead
of hanging the suite."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from fmnist_mlp.data import FASHION_MNIST_FILES, load_raw
from fmnist_mlp.data.decoded import decoded_path
from fmnist_mlp.data.synthetic import write_synthetic_dataset
from fmnist_mlp.errors import FmnistMlpError
from round3_helpers import ENV, REPO, fmnist, need, one_line

FIXTURE_RUN = REPO / "tests" / "fixtures" / "run-v1"


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter on this tree; a hang is a TimeoutExpired, not a stuck suite."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def synthetic_cache(tmp_path):
    """A source folder of synthetic files, and a cache filled (and decoded) from it."""
    folder, cache = tmp_path / "src", tmp_path / "cache"
    specs = write_synthetic_dataset(folder, n_train=100, n_test=20, seed=3)
    load_raw(cache, [str(folder)], progress=False, specs=specs)
    return folder, cache, specs


@pytest.fixture
def real_cache(real_data_dir, tmp_path):
    """A copy of the verified real .gz files and their manifest (the decoded arrays are not
    copied: the next load decodes them again)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in [spec.filename for spec in FASHION_MNIST_FILES] + ["fmnist-mlp-manifest.json"]:
        shutil.copyfile(real_data_dir / name, cache / name)
    return cache


# ------------------------------------------------------------------------- the data cache's files


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_a_cache_file_swapped_for_a_fifo_or_a_device_link_is_refused_not_waited_on(real_cache,
                                                                                   tmp_path,
                                                                                   kind):
    # Cause 4: idx_digest / file_sha256 opened the cached .gz by name: `train` hung for ever.
    target = real_cache / "t10k-labels-idx1-ubyte.gz"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    empty = tmp_path / "no-sources"
    empty.mkdir()
    proc = fmnist("download", "-q", "--data-dir", real_cache, "--source", empty, timeout=60)
    assert proc.returncode == 1
    line = one_line(proc)
    assert str(target) in line and "untouched" in line
    assert ("not a regular file" in line) if kind == "fifo" else ("symbolic link" in line)
    assert (target.is_fifo() if kind == "fifo" else os.readlink(target) == "/dev/zero")


def test_a_gzip_bomb_under_a_cache_name_is_not_inflated_past_the_size_it_should_have(real_cache,
                                                                                    tmp_path):
    # Cause 4: a gzip that inflates to 45 GB was read to its end (minutes of CPU) before it
    # was found not to be the 47 MB file it is named after. Concatenated gzip members are one
    # gzip stream: 690 members of 64 MiB of zeros each, about 45 MB on disk.
    member = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    target = real_cache / "train-images-idx3-ubyte.gz"
    with open(target, "wb") as bomb:
        for _ in range(45_000_000 // len(member)):
            bomb.write(member)
    empty = tmp_path / "no-sources"
    empty.mkdir()
    proc = fmnist("download", "-q", "--data-dir", real_cache, "--source", empty, timeout=60)
    assert proc.returncode == 1
    line = one_line(proc)
    assert str(target) in line and "not Fashion-MNIST's" in line and "untouched" in line


def test_reading_an_idx_file_stops_past_its_expected_size(tmp_path):
    from fmnist_mlp.data.idx import read_idx_bytes
    from fmnist_mlp.errors import DataError

    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(bytes(8) * (1 << 20), mtime=0))   # inflates to 8 MiB
    with pytest.raises(DataError, match="inflates to more than 60008 bytes"):
        read_idx_bytes(path, max_size=60_008)
    assert len(read_idx_bytes(path)) == 8 << 20             # no bound asked: all of it


def test_a_manifest_that_is_a_fifo_is_ignored_not_waited_on(synthetic_cache):
    folder, cache, specs = synthetic_cache
    manifest = cache / "fmnist-mlp-manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    proc = run_python(f"""
        from pathlib import Path
        from fmnist_mlp.data.manifest import load_manifest
        print(load_manifest(Path({str(cache)!r}))["files"])
        """, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "{}", proc.stderr


# ------------------------------------------------------------------------- decoded arrays


def _npy_claiming(path: Path, shape: tuple[int, ...]) -> None:
    """A valid .npy header claiming ``shape`` of uint8, followed by a few bytes."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint8))
    header["shape"] = shape
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(64))


def test_a_decoded_array_whose_header_claims_1e13_elements_is_damage_and_is_rebuilt(
        synthetic_cache):
    # Cause 3: np.load read the header's 10^13 elements before comparing the shape with the
    # manifest; the MemoryError was not damage, so every train/eval failed from then on.
    folder, cache, specs = synthetic_cache
    spec = specs[1]                                     # train labels
    path = decoded_path(cache, spec)
    good = np.load(path)
    _npy_claiming(path, (10 ** 13,))
    raw = load_raw(cache, [], progress=False, specs=specs)
    assert np.array_equal(raw.train_labels, good)
    assert np.array_equal(np.load(path), good)          # repaired in place


def test_download_repairs_a_damaged_decoded_array(real_cache, real_data_dir):
    load_raw(real_cache, [], progress=False)            # decoded/ as a run leaves it
    path = decoded_path(real_cache, FASHION_MNIST_FILES[3])
    good = np.load(path)
    _npy_claiming(path, (10 ** 13,))
    proc = fmnist("download", "-q", "--force", "--data-dir", real_cache, "--source",
                  real_data_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(path), good)


def test_read_npy_checks_the_header_and_the_size_before_reading(tmp_path):
    from fmnist_mlp.io.reader import read_npy

    path = tmp_path / "a.npy"
    np.save(path, np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert read_npy(path, (3, 4), "|u1").tolist() == np.arange(12).reshape(3, 4).tolist()
    with pytest.raises(FmnistMlpError, match=r"expected \|u1 \(4, 3\)"):
        read_npy(path, (4, 3), "|u1")
    with pytest.raises(FmnistMlpError, match="expected <f4"):
        read_npy(path, (3, 4), "<f4")
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(FmnistMlpError, match="13 bytes of data, expected 12"):
        read_npy(path, (3, 4), "|u1")
    _npy_claiming(path, (10 ** 13,))
    with pytest.raises(FmnistMlpError, match="holds"):
        read_npy(path, (3, 4), "|u1")


def test_a_decoded_folder_planted_as_a_link_is_never_written_through(tmp_path):
    # Cause 2: decoded/ was created with mkdir(exist_ok) and written by path: the user's files
    # in the link's target were replaced.
    folder, cache = tmp_path / "src", tmp_path / "cache"
    specs = write_synthetic_dataset(folder, n_train=100, n_test=20, seed=4)
    victim = tmp_path / "victim"
    victim.mkdir()
    cache.mkdir()
    (cache / "decoded").symlink_to(victim)
    for spec in specs:
        (victim / decoded_path(cache, spec).name).write_bytes(b"the user's own file")
    raw = load_raw(cache, [str(folder)], progress=False, specs=specs)
    assert raw.train_images.shape == (100, 28, 28)
    assert {p.read_bytes() for p in victim.iterdir()} == {b"the user's own file"}
    assert len(list(victim.iterdir())) == 4


# ------------------------------------------------------------------------- plots/ swapped mid-way


def test_plots_folder_swapped_for_a_link_while_plotting_is_never_written_through(
        real_data_dir, tmp_path, monkeypatch):
    # Cause 1: plot checked plots/ once, then wrote each PNG by path; a link swapped in between
    # was followed and the user's files in its target replaced. The swap is made to happen
    # exactly there: after the first picture, before the second.
    need("matplotlib")
    from fmnist_mlp import plots

    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("confusion_matrix.png", "first_layer_weights.png", "confident_mistakes.png"):
        (victim / name).write_bytes(b"the user's own file")
    real_confusion = plots.plot_confusion_matrix

    def swap_then_plot(*args, **kwargs):
        (run / "plots").rename(run / "plots-moved")
        (run / "plots").symlink_to(victim)
        return real_confusion(*args, **kwargs)

    monkeypatch.setattr(plots, "plot_confusion_matrix", swap_then_plot)
    plots.plot_run(run, data_dir=real_data_dir)
    assert {p.read_bytes() for p in victim.iterdir()} == {b"the user's own file"}
    written = sorted(p.name for p in (run / "plots-moved").iterdir())
    assert "confusion_matrix.png" in written and "first_layer_weights.png" in written


# ------------------------------------------------------------------------- the reader itself


def test_open_regular_refuses_links_fifos_devices_and_oversized_files(tmp_path):
    from fmnist_mlp.io.reader import open_regular, read_regular

    real = tmp_path / "real"
    real.write_bytes(b"12345")
    link = tmp_path / "link"
    link.symlink_to(real)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_regular(real, "file", 5) == b"12345"
    assert read_regular(link, "file", 5, follow_links=True) == b"12345"
    with pytest.raises(FmnistMlpError, match="symbolic link"):
        open_regular(link, "file")
    with pytest.raises(FmnistMlpError, match="not a regular file"):
        open_regular(fifo, "file")                       # returns at once: O_NONBLOCK
    with pytest.raises(FmnistMlpError, match="not a regular file"):
        open_regular("/dev/zero", "file", follow_links=True)
    with pytest.raises(FmnistMlpError, match="too large"):
        read_regular(real, "file", 4)
    with pytest.raises(FmnistMlpError, match="not found"):
        read_regular(tmp_path / "missing", "file", 4)
    sub = tmp_path / "base" / "sub"
    sub.mkdir(parents=True)
    (sub / "f").write_bytes(b"x")
    (tmp_path / "base" / "linked").symlink_to(sub)
    assert open_regular(sub / "f", "file", base=tmp_path / "base").read() == b"x"
    with pytest.raises(FmnistMlpError, match="symbolic link"):
        open_regular(tmp_path / "base" / "linked" / "f", "file", base=tmp_path / "base")


def test_a_source_file_larger_than_the_file_it_stands_for_is_not_copied(tmp_path):
    from fmnist_mlp.data.download import ensure_dataset
    from fmnist_mlp.errors import DataError

    folder, cache = tmp_path / "src", tmp_path / "cache"
    specs = write_synthetic_dataset(folder, n_train=100, n_test=20, seed=5)
    with open(folder / specs[0].filename, "r+b") as f:      # a sparse 1 GB file of that name
        f.truncate(1 << 30)
    with pytest.raises(DataError, match="too large for a dataset file"):
        ensure_dataset(cache, [str(folder)], progress=False, specs=specs)
    assert not any(p.stat().st_size > 1 << 20 for p in cache.iterdir())
