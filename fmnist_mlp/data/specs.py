"""What the four Fashion-MNIST files are, and how a copy of one is checked.

A file is checked by the SHA-256 and length of its *decompressed* IDX contents, so the upstream
.gz files and Debian's re-compressed ones (different .gz bytes, same contents) both pass, while a
mirror serving something else under the right name (an ISP cache once served MNIST there) fails.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from fmnist_mlp.errors import DataError
from fmnist_mlp.data.idx import GZIP_MAGIC

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


def idx_digest(path: str | Path, label: str | None = None) -> tuple[str, int]:
    """Return (sha256 hex, length) of the IDX contents of ``path``, gunzipping if it is gzip.

    ``label`` names the file in error messages (e.g. the URL it came from); defaults to ``path``.
    """
    path = Path(path)
    label = label or str(path)
    digest = hashlib.sha256()
    length = 0
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
        opener = gzip.open if compressed else open
        with opener(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                length += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{label}: corrupt or truncated gzip data ({exc or type(exc).__name__})") from None
    except OSError as exc:
        raise DataError(f"{label}: cannot read the file: {exc.strerror or exc}") from None
    return digest.hexdigest(), length


def verify_file(path: str | Path, spec: FileSpec, label: str | None = None) -> None:
    """Raise DataError unless ``path`` holds exactly the IDX contents ``spec`` describes.

    ``label`` names the file in the message (e.g. the URL it came from); defaults to ``path``.
    """
    label = label or str(path)
    sha256, length = idx_digest(path, label)
    if sha256 != spec.sha256 or length != spec.size:
        raise DataError(
            f"{label}: verification failed for {spec.filename}: expected sha256 {spec.sha256} "
            f"({spec.size} bytes decompressed), got sha256 {sha256} ({length} bytes)"
        )
