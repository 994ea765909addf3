"""Read and write IDX files (the format of MNIST and Fashion-MNIST), gzip-compressed or raw.

An IDX file is a big-endian header followed by the data:

    magic (4 bytes: 0, 0, dtype code, number of dimensions), one uint32 size per dimension, data.

Fashion-MNIST uses two kinds, both of unsigned bytes (dtype code 0x08):

- images, magic 2051 (0x00000803): N x 28 x 28 pixels;
- labels, magic 2049 (0x00000801): N class indices in 0..9.

Every problem (not gzip, truncated, wrong magic, sizes that disagree with the data, labels out of
range) becomes a :class:`~fmnist_mlp.errors.DataError` naming the file and what is wrong, never a
bare gzip, zlib or NumPy traceback.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from fmnist_mlp.data.facts import IMAGE_SHAPE, NUM_CLASSES
from fmnist_mlp.errors import DataError
from fmnist_mlp.io.reader import gunzip_bounded, open_regular

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

GZIP_MAGIC = b"\x1f\x8b"
_UBYTE_CODE = 0x08


def max_stored_bytes(size: int) -> int:
    """The most bytes a file holding ``size`` bytes of IDX contents can take: raw, or gzip at
    its worst (stored blocks: 5 bytes per 64 KiB) plus a generous header."""
    return size + size // 1000 + (1 << 16)


def read_idx_bytes(path: str | Path, max_size: int | None = None,
                   follow_links: bool = True) -> bytes:
    """Return the IDX contents of ``path``, gunzipping it when it starts with the gzip magic.

    ``path`` must be a regular file (a FIFO or device is refused, never waited on). max_size:
    the contents may be at most this long; a larger file, or a gzip that inflates past it, is
    refused without reading further. follow_links=False refuses a link (the data cache holds none).
    """
    path = Path(path)
    limit = max_stored_bytes(max_size) if max_size is not None else None
    try:
        raw = open_regular(path, "dataset file", max_bytes=limit, follow_links=follow_links,
                           error=DataError)
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read the file: no such file") from None
    with raw:
        try:
            head = raw.read(2)
            raw.seek(0)
            if head != GZIP_MAGIC:
                data = raw.read()
            else:
                return b"".join(gunzip_bounded(raw, max_size if max_size is not None else 1 << 62,
                                               str(path), error=DataError))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    if path.suffix == ".gz" and not _looks_like_idx(data):
        raise DataError(f"{path}: not a gzip file and not a raw IDX file either")
    return data


def _looks_like_idx(data: bytes) -> bool:
    return len(data) >= 4 and data[0] == 0 and data[1] == 0


def parse_idx(data: bytes, name: str | Path) -> np.ndarray:
    """Parse IDX ``data`` of unsigned bytes into an array of shape given by its header.

    ``name`` only labels the error messages. Returns a read-only uint8 array viewing ``data``.
    """
    if len(data) < 4:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes; an IDX file starts with a 4-byte magic number)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    magic = struct.unpack(">I", data[:4])[0]
    if zero != 0 or dtype_code != _UBYTE_CODE or ndim == 0:
        raise DataError(
            f"{name}: not an IDX file of unsigned bytes (magic number {magic}, expected "
            f"{IMAGES_MAGIC} for images or {LABELS_MAGIC} for labels)"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, a {ndim}-dimensional header needs {header_size})")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_size
    if actual != expected:
        what = "truncated data" if actual < expected else "trailing bytes after the data"
        dims = " x ".join(str(d) for d in shape)
        raise DataError(f"{name}: {what}: the header says {dims} = {expected} bytes, the file holds {actual}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file: returns (N, 28, 28) uint8."""
    return decode_images(read_idx_bytes(path), path)


def read_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file: returns (N,) uint8 with every value in 0..9."""
    return decode_labels(read_idx_bytes(path), path)


def decode_images(data: bytes, name: str | Path) -> np.ndarray:
    """Decode decompressed IDX image bytes: returns (N, 28, 28) uint8. ``name`` labels errors."""
    array = _decode_kind(data, name, IMAGES_MAGIC, "images")
    if array.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{name}: expected images of {' x '.join(map(str, IMAGE_SHAPE))} pixels, the header says {' x '.join(map(str, array.shape[1:]))}")
    return array


def decode_labels(data: bytes, name: str | Path) -> np.ndarray:
    """Decode decompressed IDX label bytes: returns (N,) uint8 in 0..9. ``name`` labels errors."""
    array = _decode_kind(data, name, LABELS_MAGIC, "labels")
    if array.size and array.max() >= NUM_CLASSES:
        bad = int(np.argmax(array >= NUM_CLASSES))
        raise DataError(f"{name}: label {int(array[bad])} at index {bad} is out of range 0..{NUM_CLASSES - 1}")
    return array


def _decode_kind(data: bytes, name: str | Path, magic: int, kind: str) -> np.ndarray:
    array = parse_idx(data, name)
    actual_magic = struct.unpack(">I", data[:4])[0]
    if actual_magic != magic:
        raise DataError(f"{name}: magic number {actual_magic} is not that of an IDX {kind} file ({magic})")
    return array


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array (1 to 255 dimensions) as IDX bytes: the inverse of :func:`parse_idx`."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, _UBYTE_CODE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: str | Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``compress``; returns the path."""
    path = Path(path)
    data = encode_idx(array)
    # mtime=0 makes the .gz bytes reproducible, which keeps test fixtures deterministic.
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
