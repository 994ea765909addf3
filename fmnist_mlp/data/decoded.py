"""A cache of the decoded arrays as .npy files, so that a second start skips gunzip and parsing.

Each file is named after the SHA-256 of the IDX contents it was decoded from
(``decoded/train_images-c59f468a2f672dc8.npy``): a name can only ever hold the decoding of
verified contents, so loading needs no manifest and no re-hashing, and a different file table
(tests use synthetic ones) can never pick up stale arrays. Files are written to a temporary name and
renamed, so a reader never sees half an array.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from fmnist_mlp.errors import DataError
from fmnist_mlp.data.idx import decode_images, decode_labels, read_idx_bytes
from fmnist_mlp.data.specs import FileSpec

DECODED_DIR = "decoded"


def decoded_path(data_dir: Path, spec: FileSpec) -> Path:
    return data_dir / DECODED_DIR / f"{spec.key}-{spec.sha256[:16]}.npy"


def load_decoded(data_dir: Path, specs: Sequence[FileSpec]) -> dict[str, np.ndarray] | None:
    """The arrays of every spec from the .npy cache, or None when any is missing or unreadable."""
    arrays = {}
    for spec in specs:
        path = decoded_path(data_dir, spec)
        try:
            arrays[spec.key] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # missing or damaged: the caller decodes again and overwrites it
    return arrays


class CorruptCacheFile(DataError):
    """A file in the cache no longer matches its checksum (it was damaged after verification)."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def decode_and_store(data_dir: Path, specs: Sequence[FileSpec]) -> dict[str, np.ndarray]:
    """Decode each verified .gz of the cache, re-check its SHA-256, and store it as .npy.

    Raises CorruptCacheFile when a cached file's contents no longer match ``spec.sha256``.
    """
    arrays = {}
    for spec in specs:
        source = data_dir / spec.filename
        try:
            data = read_idx_bytes(source)
        except DataError as exc:
            raise CorruptCacheFile(str(exc), source) from None
        # Hashing costs little next to gunzip; it catches a cache damaged since verification.
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec.sha256:
            raise CorruptCacheFile(
                f"{source}: cached file is damaged: expected sha256 {spec.sha256}, got {actual}", source
            )
        decode = decode_images if "images" in spec.key else decode_labels
        arrays[spec.key] = decode(data, source)
        _save_atomically(decoded_path(data_dir, spec), arrays[spec.key])
    return arrays


def _save_atomically(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            np.save(out, array, allow_pickle=False)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
