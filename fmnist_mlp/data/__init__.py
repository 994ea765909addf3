"""Fashion-MNIST: read IDX files, fetch and verify them into a cache, and split them for training.

Public API::

    ensure_dataset(data_dir=None, sources=None, force=False, progress=True) -> Path
    load_raw(data_dir=None, sources=None, progress=True) -> RawData
    make_splits(raw, val_size=5000, split="stratified", normalize="standardize", seed=0,
                dtype="float32", subset=None) -> Splits
    split_rows(train_labels, val_size=5000, split="stratified", seed=0, subset=None)
        -> (train rows, validation rows)
    CLASS_NAMES, NUM_FEATURES, ... (the dataset's facts: :mod:`fmnist_mlp.data.facts`),
    default_data_dir()

Each name is imported from its module on first use (PEP 562), so reading a fact such as
``CLASS_NAMES`` loads neither NumPy nor the HTTP stack (requests, tqdm).
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_HOMES = {
    "facts": ("CLASS_NAMES", "IMAGE_SHAPE", "IMAGE_SIDE", "NUM_CLASSES", "NUM_FEATURES",
              "TEST_IMAGES", "TRAIN_IMAGES"),
    "dataset": ("RawData", "Split", "Splits", "load_raw", "make_splits", "split_rows"),
    "download": ("DEBIAN_DIR", "MIRRORS", "default_data_dir", "ensure_dataset", "resolve_data_dir"),
    "http": ("HttpOptions",),
    "idx": ("read_images", "read_labels", "write_idx"),
    "specs": ("FASHION_MNIST_FILES", "FileSpec", "verify_file"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str):
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value                 # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
