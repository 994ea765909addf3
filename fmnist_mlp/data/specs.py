"""What the four Fashion-MNIST files are, and how a copy of one is checked.

A file is checked by the SHA-256 and length of its *decompressed* IDX contents, so the upstream
.gz files and Debian's re-compressed ones (different .gz bytes, same contents) both pass, while a
mirror serving something else under the right name (an ISP cache once served MNIST there) fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fmnist_mlp.errors import DataError
from fmnist_mlp.io.reader import gunzip_bounded, open_regular
from fmnist_mlp.data.idx import GZIP_MAGIC, max_stored_bytes

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """One dataset file: ``key`` names it in code, ``filename`` on disk and on mirrors."""

    key: str        # "train_images" | "train_labels" | "test_images" | "test_labels"
    filename: str   # e.g. "train-images-idx3-ubyte.gz"
    sha256: str     # of the decompressed IDX bytes
    size: int       # length of the decompressed IDX bytes


FASHION_MNIST_FILES: tuple[FileSpec, ...] = (
    FileSpec("train_images", "train-images-idx3-ubyte.gz",
             "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47_040_016),
    FileSpec("train_labels", "train-labels-idx1-ubyte.gz",
             "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60_008),
    FileSpec("test_images", "t10k-images-idx3-ubyte.gz",
             "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7_840_016),
    FileSpec("test_labels", "t10k-labels-idx1-ubyte.gz",
             "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10_008),
)
# For reference only (we verify the decompressed bytes instead): upstream's MD5s of its .gz files are
# train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d, train-labels 25c81989df183df01b3e8a0aad5dffbe,
# t10k-images bef4ecab320f06d8554ea6380940ec79, t10k-labels bb300cfdad3c16e7a12a480ee83cd310.


def idx_digest(path: str | Path, label: str | None = None, max_size: int | None = None,
               follow_links: bool = True) -> tuple[str, int]:
    """Return (sha256 hex, length) of the IDX contents of ``path``, gunzipping if it is gzip.

    ``label`` names the file in error messages (e.g. the URL it came from); defaults to ``path``.
    max_size: the contents' expected length; reading stops one byte past it (a gzip that inflates
    to 30 GB is not read to its end), and a file larger than such contents can be is refused
    unread. ``path`` must be a regular file (a FIFO or device is refused, never waited on);
    follow_links=False refuses a link too (the data cache holds none).
    """
    path = Path(path)
    label = label or str(path)
    digest = hashlib.sha256()
    length = 0
    limit = None if max_size is None else max_size + 1
    try:
        with open_regular(path, "dataset file", error=DataError, follow_links=follow_links,
                          max_bytes=None if max_size is None else max_stored_bytes(max_size)) as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            chunks = (gunzip_bounded(raw, 1 << 62, label, error=DataError)
                      if compressed else iter(lambda: raw.read(_CHUNK), b""))
            for chunk in chunks:
                length += len(chunk)
                digest.update(chunk)
                if limit is not None and length >= limit:
                    break       # longer than the file it should be: the digest will not match
    except OSError as exc:
        raise DataError(f"{label}: cannot read the file: {exc.strerror or exc}") from None
    return digest.hexdigest(), length


def verify_file(path: str | Path, spec: FileSpec, label: str | None = None,
                follow_links: bool = True) -> None:
    """Raise DataError unless ``path`` holds exactly the IDX contents ``spec`` describes.

    ``label`` names the file in the message (e.g. the URL it came from); defaults to ``path``.
    """
    label = label or str(path)
    sha256, length = idx_digest(path, label, max_size=spec.size, follow_links=follow_links)
    if sha256 != spec.sha256 or length != spec.size:
        got = f"more than {spec.size} bytes" if length > spec.size else f"{length} bytes"
        raise DataError(
            f"{label}: verification failed for {spec.filename}: expected sha256 {spec.sha256} "
            f"({spec.size} bytes decompressed), got sha256 {sha256} ({got})"
        )
