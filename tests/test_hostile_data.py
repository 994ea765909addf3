"""Hostile data folders (issue 13): files with Fashion-MNIST's names but other contents are never
deleted or overwritten, `download` verifies what it reports ready, and the decoded .npy cache is
checked against what it was decoded from on every load (and rebuilt when it does not match)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmnist_mlp.data import DEBIAN_DIR, FASHION_MNIST_FILES, load_raw
from fmnist_mlp.data.decoded import decoded_path
from fmnist_mlp.data.synthetic import synthetic_arrays, write_synthetic_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def fmnist(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_mlp", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=120)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.gz"))}


@pytest.fixture
def digit_mnist_folder(tmp_path) -> Path:
    """A folder holding other images under Fashion-MNIST's four file names (as digit MNIST does)."""
    folder = tmp_path / "mnist"
    write_synthetic_dataset(folder, n_train=100, n_test=20, seed=9)
    return folder


def _needs_debian():
    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"needs {DEBIAN_DIR} as a local source")


# ------------------------------------------------------------------------- the user's files


@pytest.mark.parametrize("command", [["download", "-q"], ["train", "--set", "data.subset=100"]])
def test_files_with_the_names_but_other_contents_are_left_untouched(digit_mnist_folder, tmp_path,
                                                                   command):
    _needs_debian()
    before = digests(digit_mnist_folder)
    proc = fmnist(*command, "--data-dir", digit_mnist_folder, *(
        ["--source", DEBIAN_DIR] if command[0] == "download" else []), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert "-ubyte.gz" in line and "untouched" in line and "--data-dir" in line
    assert digests(digit_mnist_folder) == before
    assert not (tmp_path / "runs").exists()


def _tool_made_cache(tmp_path) -> Path:
    _needs_debian()
    cache = tmp_path / "cache"
    proc = fmnist("download", "-q", "--data-dir", cache, "--source", DEBIAN_DIR)
    assert proc.returncode == 0, proc.stderr
    return cache


def _flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as f:        # in place: the same file, damaged
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0x40]))


def test_download_verifies_a_bit_flipped_gz_it_made_and_fetches_it_again(tmp_path):
    cache = _tool_made_cache(tmp_path)
    name = "train-labels-idx1-ubyte.gz"
    _flip_a_byte(cache / name)
    proc = fmnist("download", "-q", "--data-dir", cache, "--source", tmp_path / "nowhere")
    assert proc.returncode == 1 and name in proc.stderr      # reported, not "ready"
    proc = fmnist("download", "-q", "--data-dir", cache, "--source", DEBIAN_DIR)
    assert proc.returncode == 0, proc.stderr
    assert (cache / name).read_bytes() == (DEBIAN_DIR / name).read_bytes()


def test_download_refuses_a_bit_flipped_gz_it_did_not_make(tmp_path):
    _needs_debian()
    folder = tmp_path / "mine"
    shutil.copytree(DEBIAN_DIR, folder)
    _flip_a_byte(folder / "t10k-labels-idx1-ubyte.gz")
    before = digests(folder)
    proc = fmnist("download", "-q", "--data-dir", folder, "--source", DEBIAN_DIR)
    assert proc.returncode == 1
    assert "t10k-labels-idx1-ubyte.gz" in proc.stderr.strip().splitlines()[-1]
    assert digests(folder) == before


# ------------------------------------------------------------------------- the decoded cache


@pytest.fixture
def filled(tmp_path):
    folder = tmp_path / "source"
    specs = write_synthetic_dataset(folder, n_train=300, n_test=50, seed=4)
    cache = tmp_path / "cache"
    load_raw(cache, [str(folder)], progress=False, specs=specs)
    return cache, specs, synthetic_arrays(n_train=300, n_test=50, seed=4)


def _shuffle(a):
    return np.random.default_rng(0).permutation(a)


def _out_of_range(a):
    a = a.copy()
    a[5] = 200
    return a


def _damage_pixels(a):
    a = a.copy()
    a[3, 10:14, 10:14] ^= 0xFF
    return a


def _random(a):
    return np.random.default_rng(1).integers(0, 256, a.shape, dtype=np.uint8)


def _flat(a):
    return a.reshape(a.shape[0], -1)


@pytest.mark.parametrize("key, damage", [
    ("train_labels", _shuffle), ("train_labels", _out_of_range), ("test_labels", _shuffle),
    ("train_images", _damage_pixels), ("train_images", _random), ("test_images", _flat),
], ids=["shuffled-labels", "label-200", "shuffled-test-labels", "pixels", "random-images",
        "reshaped"])
def test_a_damaged_decoded_array_is_rebuilt_from_the_verified_source(filled, key, damage):
    cache, specs, expected = filled
    spec = next(s for s in specs if s.key == key)
    path = decoded_path(cache, spec)
    np.save(path, damage(np.load(path)))
    raw = load_raw(cache, [], progress=False, specs=specs)       # no source: the cache must do
    for name in expected:
        np.testing.assert_array_equal(getattr(raw, name), expected[name])
    np.testing.assert_array_equal(np.load(path), expected[key])   # rebuilt on disk too


def test_a_truncated_or_pickled_decoded_array_is_rebuilt(filled):
    cache, specs, expected = filled
    path = decoded_path(cache, specs[0])
    path.write_bytes(path.read_bytes()[:1000])
    np.save(decoded_path(cache, specs[1]), np.array([{"x": 1}], dtype=object), allow_pickle=True)
    raw = load_raw(cache, [], progress=False, specs=specs)
    np.testing.assert_array_equal(raw.train_images, expected["train_images"])
    np.testing.assert_array_equal(raw.train_labels, expected["train_labels"])


def test_stale_partial_downloads_of_killed_processes_are_removed(tmp_path):
    folder = tmp_path / "source"
    specs = write_synthetic_dataset(folder, n_train=100, n_test=20)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = [cache / ".train-images-idx3-ubyte.gz.abc12345.part",                # older versions
             cache / ".train-labels-idx1-ubyte.gz.999999999-deadbeef.fmnist-mlp.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    mine = cache / ".my-notes.part"
    mine.write_text("the user's")
    load_raw(cache, [str(folder)], progress=False, specs=specs)
    assert [p for p in stale if p.exists()] == []
    assert mine.read_text() == "the user's"
