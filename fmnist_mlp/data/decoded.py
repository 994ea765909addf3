"""A cache of the decoded arrays as .npy files, so that a second start skips gunzip and parsing.

Each file is named after the SHA-256 of the IDX contents it was decoded from
(``decoded/train_images-c59f468a2f672dc8.npy``), so a different file table (tests use synthetic
ones) never picks up stale arrays. A name alone proves nothing about the bytes, though (a shuffled
label file trained to 3 % accuracy): the manifest (:mod:`fmnist_mlp.data.manifest`) records each
array's CRC-32, shape and dtype and the file it came from, and every load checks them (~0.04 s
for all four arrays). Files are written atomically, so a reader never sees half an array.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from fmnist_mlp.errors import DataError, FmnistMlpError
from fmnist_mlp.data.manifest import file_entry, load_manifest, save_manifest
from fmnist_mlp.io.files import OpenDir
from fmnist_mlp.io.reader import read_npy
from fmnist_mlp.data.idx import decode_images, decode_labels, read_idx_bytes
from fmnist_mlp.data.specs import FileSpec

DECODED_DIR = "decoded"


def decoded_path(data_dir: Path, spec: FileSpec) -> Path:
    return data_dir / DECODED_DIR / f"{spec.key}-{spec.sha256[:16]}.npy"


def load_decoded(data_dir: Path, specs: Sequence[FileSpec],
                 manifest: dict | None = None) -> dict[str, np.ndarray] | None:
    """The arrays of every spec from the .npy cache, each checked against the CRC-32, shape and
    dtype the manifest recorded when it was decoded from the cache's verified file; None when any
    is missing, damaged, or was decoded from a file other than the one the cache holds now."""
    manifest = load_manifest(data_dir) if manifest is None else manifest
    arrays = {}
    for spec in specs:
        entry = manifest["decoded"].get(spec.key)
        source = file_entry(manifest, spec.filename)
        if not isinstance(entry, dict) or source is None or entry.get("idx_sha256") != spec.sha256 \
                or entry.get("source_sha256") != source.get("sha256"):
            return None
        shape, dtype = entry.get("shape"), entry.get("dtype")
        if not _plausible(shape, dtype, spec):
            return None
        try:
            # The header is checked against the manifest (and the size against the header)
            # before any data is read: a header claiming 10^13 elements costs nothing.
            array = read_npy(decoded_path(data_dir, spec), tuple(shape), dtype,
                             base=data_dir, error=DataError)
        except (OSError, FmnistMlpError):
            return None  # missing or damaged: the caller decodes again and overwrites it
        if _checksum(array) != entry.get("crc32"):
            return None
        arrays[spec.key] = array
    return arrays


def _plausible(shape, dtype, spec: FileSpec) -> bool:
    """A recorded shape and dtype that the IDX contents of ``spec`` can decode to (the manifest
    is a file too: its numbers are checked before they size anything)."""
    return (isinstance(shape, list) and 1 <= len(shape) <= 3 and dtype == "|u1"
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            and math.prod(shape) <= spec.size)


def _checksum(array: np.ndarray) -> int:
    """CRC-32 of the array's bytes: it catches damage and edits (a shuffled label file) at
    ~1 GB/s, 40 % faster than SHA-256 here; the files it guards were verified by SHA-256."""
    return zlib.crc32(array.data)


class CorruptCacheFile(DataError):
    """A file in the cache no longer matches its checksum (it was damaged after verification)."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def decode_and_store(data_dir: Path, specs: Sequence[FileSpec],
                     manifest: dict | None = None) -> dict[str, np.ndarray]:
    """Decode each verified .gz of the cache, re-check its SHA-256, store it as .npy and record the
    arrays' checksums in the manifest (call with the cache lock held).

    Raises CorruptCacheFile when a cached file's contents no longer match ``spec.sha256``.
    """
    manifest = load_manifest(data_dir) if manifest is None else manifest
    arrays = {}
    for spec in specs:
        source = data_dir / spec.filename
        try:
            data = read_idx_bytes(source, max_size=spec.size, follow_links=False)
        except DataError as exc:
            raise CorruptCacheFile(str(exc), source) from None
        # Hashing costs little next to gunzip; it catches a cache damaged since verification.
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec.sha256:
            raise CorruptCacheFile(
                f"{source}: cached file is damaged: expected sha256 {spec.sha256}, got {actual}", source
            )
        decode = decode_images if "images" in spec.key else decode_labels
        array = arrays[spec.key] = decode(data, source)
        entry = file_entry(manifest, spec.filename)
        if entry is None:
            continue            # not verified through the manifest: use it, do not cache it
        try:
            # The folder is opened once, without following a link, and written through that
            # descriptor: a decoded/ swapped for a link to someone's files is never written into.
            with OpenDir(data_dir, DECODED_DIR) as folder:
                folder.write(decoded_path(data_dir, spec).name,
                             lambda out: np.save(out, array, allow_pickle=False), fsync=False)
        except (OSError, FmnistMlpError):
            continue            # a read-only cache, or a link planted there: decode again next time
        manifest["decoded"][spec.key] = {
            "idx_sha256": spec.sha256, "source_sha256": entry.get("sha256"),
            "crc32": _checksum(array), "shape": list(array.shape), "dtype": array.dtype.str}
    save_manifest(data_dir, manifest)
    return arrays
