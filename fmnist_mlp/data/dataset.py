"""Load Fashion-MNIST as arrays and cut it into train / validation / test splits.

``load_raw`` is I/O (cache, download, decode); ``make_splits`` is pure NumPy on what it returns.
The 10,000 test images are never part of training or validation: they are for the final score.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from fmnist_mlp.errors import ConfigError, DataError
from fmnist_mlp.data.decoded import decode_and_store, load_decoded
from fmnist_mlp.data.download import LOCK_NAME, ensure_dataset, resolve_data_dir
from fmnist_mlp.data.http import HttpOptions
from fmnist_mlp.data.facts import NUM_FEATURES
from fmnist_mlp.io.lock import FileLock
from fmnist_mlp.data.specs import FASHION_MNIST_FILES, FileSpec

SPLITS = ("stratified", "shuffled")           # how validation (and subset) images are drawn
NORMALIZATIONS = ("scale", "standardize")     # how pixels become inputs


class RawData(NamedTuple):
    """The dataset as stored: images (N, 28, 28) uint8, labels (N,) uint8 in 0..9."""

    train_images: np.ndarray   # (60000, 28, 28)
    train_labels: np.ndarray   # (60000,)
    test_images: np.ndarray    # (10000, 28, 28)
    test_labels: np.ndarray    # (10000,)


class Split(NamedTuple):
    """Examples as rows: x (N, 784) C-contiguous float, y (N,) int64."""

    x: np.ndarray
    y: np.ndarray


class EncodedRows(NamedTuple):
    """Rows kept as their pixel bytes, a quarter of the memory of float32 rows, with what turns
    them into inputs: row i is ``pixels_to_inputs(pixels[i], mean, std, dtype)``. The fused batch
    gather (:mod:`fmnist_mlp.nn.kernels.batches`) decodes a batch as it gathers it."""

    pixels: np.ndarray      # (N, 784) uint8, C-contiguous
    mean: float
    std: float
    dtype: np.dtype         # the inputs'

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pixels.shape

    def decode(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Those rows as the network's inputs, (len(rows), 784)."""
        return pixels_to_inputs(self.pixels[rows], self.mean, self.std, self.dtype)


class Splits(NamedTuple):
    """The three splits, and the (mean, std) that were applied to all of them (0.0, 1.0 for "scale")."""

    train: Split
    val: Split
    test: Split
    mean: float
    std: float


def load_raw(data_dir: str | Path | None = None, sources: Sequence[str] | None = None,
             progress: bool = True, specs: Sequence[FileSpec] = FASHION_MNIST_FILES,
             http: HttpOptions = HttpOptions()) -> RawData:
    """Return the dataset's arrays, fetching and decoding it first if the cache lacks it.

    Every call verifies the decoded arrays against the checksums the manifest recorded when they
    were decoded from a verified file (~0.1 s for the real data); an array that does not match
    is rebuilt from the verified source. ``sources``, ``progress``,
    ``specs`` and ``http`` are passed to :func:`ensure_dataset` when something must be fetched.
    """
    data_dir = resolve_data_dir(data_dir)
    # Arrays that match the checksums recorded when they were decoded from a verified file.
    arrays = load_decoded(data_dir, specs)
    if arrays is None:
        # Verifies the four files (fully, or against the manifest) and fetches what is missing.
        ensure_dataset(data_dir, sources, progress=progress, specs=specs, http=http)
        with FileLock(data_dir / LOCK_NAME):
            # Another process may have decoded while we waited for the lock.
            arrays = load_decoded(data_dir, specs) or decode_and_store(data_dir, specs)
    return _as_raw_data(arrays, data_dir)


def _as_raw_data(arrays: dict[str, np.ndarray], data_dir: Path) -> RawData:
    raw = RawData(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])
    for part, images, labels in (("train", raw.train_images, raw.train_labels), ("test", raw.test_images, raw.test_labels)):
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{data_dir}: {part} set has {images.shape[0]} images but {labels.shape[0]} labels")
    return raw


def make_splits(raw: RawData, val_size: int = 5000, split: str = "stratified",
                normalize: str = "standardize", seed: int = 0, dtype: str = "float32",
                subset: int | None = None, folds: int = 1, fold: int | None = None,
                encode_train: bool = False) -> Splits:
    """Hold ``val_size`` training images out for validation and turn pixels into float rows.

    split: "stratified" (each class in proportion) or "shuffled" (uniformly at random), seeded.
    normalize: "scale" (x / 255, in [0, 1]) or "standardize" ((x / 255 - mean) / std with the global
    mean and std of the training rows actually used). subset: keep only this many training images,
    drawn after the validation split (same ``split`` method). folds, fold: cut the training rows
    into ``folds`` parts and leave part ``fold`` out (:func:`split_rows`). Test rows are all
    10,000, in order. encode_train: the training split's x is :class:`EncodedRows` (its bytes and
    mean and std), not float rows: for a fused gather, which decodes each batch as it gathers it.
    """
    _check_choice("data.normalize", normalize, NORMALIZATIONS)
    _check_choice("model.dtype", dtype, ("float32", "float64"))
    labels = raw.train_labels.astype(np.int64)
    train_idx, val_idx = split_rows(labels, val_size, split, seed, subset, folds, fold)
    def pixels(images: np.ndarray, idx) -> np.ndarray:
        return images.reshape(images.shape[0], NUM_FEATURES)[idx]

    train_pixels = pixels(raw.train_images, train_idx)      # gathered once: the statistics too
    mean, std = _pixel_mean_std(train_pixels) if normalize == "standardize" else (0.0, 1.0)
    train_x = (EncodedRows(train_pixels, mean, std, np.dtype(dtype)) if encode_train
               else pixels_to_inputs(train_pixels, mean, std, dtype))
    del train_pixels                # float rows: the bytes are not kept past their conversion
    splits = [Split(train_x, np.ascontiguousarray(labels[train_idx])),
              Split(pixels_to_inputs(pixels(raw.train_images, val_idx), mean, std, dtype),
                    np.ascontiguousarray(labels[val_idx])),
              Split(pixels_to_inputs(pixels(raw.test_images, slice(None)), mean, std, dtype),
                    raw.test_labels.astype(np.int64))]
    return Splits(*splits, mean=mean, std=std)


def split_rows(train_labels: np.ndarray, val_size: int = 5000, split: str = "stratified",
               seed: int = 0, subset: int | None = None, folds: int = 1,
               fold: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which of the training images train and which validate: (train rows, validation rows),
    each sorted, drawn as :func:`make_splits` draws them (same arguments, same rows).

    fold: the training rows are cut into ``folds`` near-equal parts (same ``split`` method, drawn
    after validation and subset, so those rows do not move) and part ``fold`` is left out. Runs
    that differ only in ``fold`` validate on the same rows and each leaves out different ones:
    cross-fitted teachers, each of which can score its part as images it never trained on."""
    n_train = train_labels.shape[0]
    _check_choice("data.split", split, SPLITS)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < n_train:
        raise ConfigError(f"data.val_size: {val_size!r} must be an integer in 0..{n_train - 1}")
    rng = np.random.default_rng(seed)
    labels = train_labels.astype(np.int64, copy=False)
    val_idx, train_idx = _draw(labels, np.arange(n_train), val_size, split, rng)
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or not 0 < subset <= train_idx.size:
            raise ConfigError(f"data.subset: {subset!r} must be null or an integer in 1..{train_idx.size}")
        train_idx, _ = _draw(labels[train_idx], train_idx, subset, split, rng)
    if fold is not None:
        if not (0 <= fold < folds and 2 <= folds <= train_idx.size):
            raise ConfigError(f"data.fold: {fold!r} must be in 0..folds-1, with data.folds "
                              f"({folds!r}) from 2 to the {train_idx.size} training rows")
        rest = train_idx
        for part in range(fold + 1):     # parts 0..fold, each a share of what is left
            left_out, rest = _draw(labels[rest], rest, rest.size // (folds - part), split, rng)
        train_idx = np.setdiff1d(train_idx, left_out, assume_unique=True)
    return train_idx, val_idx


def batches_per_epoch(num_rows: int, batch_size: int) -> int:
    """Minibatches in one pass over ``num_rows`` rows: the last one may be short, and a batch
    never exceeds the data. Written once: the plan counts the steps with it, the loop cuts them."""
    batch_size = min(batch_size, num_rows)
    return -(-num_rows // batch_size)


def pixels_to_inputs(pixels: np.ndarray, mean: float, std: float, dtype: str) -> np.ndarray:
    """(N, 784) raw pixel values 0..255 -> the network's input rows: ``(x / 255 − mean) / std``.

    The one place this arithmetic lives (training splits, ``predict`` on image files), so an
    image saved as PNG and read back gives bit-identical inputs. mean 0, std 1 is "scale".
    """
    rows = np.asarray(pixels).astype(dtype)          # a fresh C-contiguous array, safe to modify
    rows *= rows.dtype.type(1.0 / 255.0)
    if (mean, std) != (0.0, 1.0):
        rows -= rows.dtype.type(mean)
        rows /= rows.dtype.type(std)
    return rows


def _pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of the pixels of ``images`` (uint8) after scaling to [0, 1], in float64.

    From the histogram of the 256 byte values: exact, and far cheaper than a float64 copy of 43M pixels.
    The bytes are counted two at a time (a uint16 view: half the elements to convert and count,
    about half the time), and each pair's count goes to both of its bytes.
    """
    counts = np.zeros(256, dtype=np.float64)
    flat = np.ascontiguousarray(images).reshape(-1)
    pairs = flat[:flat.size - flat.size % 2].view(np.uint16)
    for start in range(0, pairs.size, 1 << 21):    # blocks: bincount makes an int64 copy
        by_pair = np.bincount(pairs[start:start + (1 << 21)], minlength=1 << 16).reshape(256, 256)
        counts += by_pair.sum(axis=0) + by_pair.sum(axis=1)     # each byte of the pair, either order
    if flat.size % 2:
        counts[flat[-1]] += 1
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    if total == 0:
        return 0.0, 1.0
    mean = float(counts @ values / total)
    var = float(counts @ (values - mean) ** 2 / total)
    return mean, (var ** 0.5) or 1.0  # a constant image set: nothing to scale


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _draw(labels: np.ndarray, indices: np.ndarray, count: int, split: str,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``count`` of ``indices`` (labels[i] is the class of indices[i]); return (picked, rest), each sorted.

    Stratified: each class gets count * (its share), rounded by largest remainder so they sum to count.
    """
    order = rng.permutation(indices.size)
    if split == "shuffled":
        chosen = order[:count]
    else:
        classes, per_class = np.unique(labels, return_counts=True)
        quota = count * per_class / labels.size
        take = np.floor(quota).astype(np.int64)
        shortfall = count - int(take.sum())
        take[np.argsort(-(quota - take), kind="stable")[:shortfall]] += 1
        shuffled_labels = labels[order]
        chosen = np.concatenate([order[shuffled_labels == c][:k] for c, k in zip(classes, take)])
    mask = np.zeros(indices.size, dtype=bool)
    mask[chosen] = True
    return indices[mask], indices[~mask]
