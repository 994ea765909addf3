"""Fashion-MNIST: read IDX files, fetch and verify them into a cache, and split them for training.

Public API::

    ensure_dataset(data_dir=None, sources=None, force=False, progress=True) -> Path
    load_raw(data_dir=None, sources=None, progress=True) -> RawData
    make_splits(raw, val_size=5000, split="stratified", normalize="standardize", seed=0,
                dtype="float32", subset=None) -> Splits
    split_rows(train_labels, val_size=5000, split="stratified", seed=0, subset=None)
        -> (train rows, validation rows)
    CLASS_NAMES, default_data_dir()
"""

from fmnist_mlp.data.dataset import (
    CLASS_NAMES,
    NUM_FEATURES,
    RawData,
    Split,
    Splits,
    load_raw,
    make_splits,
    split_rows,
)
from fmnist_mlp.data.download import DEBIAN_DIR, MIRRORS, default_data_dir, ensure_dataset, resolve_data_dir
from fmnist_mlp.data.http import HttpOptions
from fmnist_mlp.data.idx import read_images, read_labels, write_idx
from fmnist_mlp.data.specs import FASHION_MNIST_FILES, FileSpec, verify_file

__all__ = [
    "CLASS_NAMES", "DEBIAN_DIR", "FASHION_MNIST_FILES", "MIRRORS", "NUM_FEATURES", "FileSpec",
    "HttpOptions", "RawData", "Split", "Splits", "default_data_dir", "ensure_dataset", "load_raw",
    "make_splits", "read_images", "read_labels", "resolve_data_dir", "split_rows", "verify_file", "write_idx",
]
