"""Small synthetic stand-ins for the Fashion-MNIST files, for tests that must not need the real data.

``write_synthetic_dataset`` writes four IDX files with the real file names and returns the
matching :class:`FileSpec` table, so a test can push them through the real code path:
``load_raw(cache, sources=[folder], specs=specs)``.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from fmnist_mlp.data.facts import IMAGE_SHAPE, NUM_CLASSES
from fmnist_mlp.data.idx import encode_idx
from fmnist_mlp.data.specs import FASHION_MNIST_FILES, FileSpec


def synthetic_arrays(n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """Random images (N, 28, 28) uint8 and balanced labels (N,) uint8, keyed like the FileSpecs."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.uint8)
        images = rng.integers(0, 256, size=(n, *IMAGE_SHAPE), dtype=np.uint8)
        images[:, 0, 0] = labels * 25  # a pixel that depends on the class, so the task is learnable
        arrays[f"{part}_images"], arrays[f"{part}_labels"] = images, labels
    return arrays


def write_synthetic_dataset(folder: str | Path, n_train: int = 200, n_test: int = 50, seed: int = 0,
                            compress: bool = True) -> tuple[FileSpec, ...]:
    """Write the four files into ``folder`` (gzip-compressed or raw IDX); return their FileSpecs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_arrays(n_train, n_test, seed)
    specs = []
    for real in FASHION_MNIST_FILES:
        data = encode_idx(arrays[real.key])
        name = real.filename if compress else real.filename.removesuffix(".gz")
        (folder / name).write_bytes(gzip.compress(data, mtime=0) if compress else data)
        specs.append(FileSpec(real.key, real.filename, hashlib.sha256(data).hexdigest(), len(data)))
    return tuple(specs)
