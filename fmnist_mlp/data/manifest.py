"""What the tool put in the data cache, and the checksums that let every run verify it cheaply.

``<data_dir>/fmnist-mlp-manifest.json`` (written atomically, under the cache lock) records

- for each dataset file the tool installed or fully verified: the SHA-256 of the file's bytes as
  stored (a .gz) next to the SHA-256 of its IDX contents that the file table expects;
- for each decoded ``.npy``: the CRC-32 of the array's bytes, its shape and dtype, and the SHA-256
  of the file it was decoded from.

A run checks the arrays' CRC-32 (~55 MB at ~1 GB/s); a fetch checks a file's bytes against its
recorded SHA-256 (~30 MB of .gz) instead of gunzipping 55 MB. A file with no entry is not the
tool's: it is verified in full, and if it is not what the table describes it is left alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.io.reader import open_regular, read_regular

MANIFEST_NAME = "fmnist-mlp-manifest.json"
_FORMAT = "fmnist-mlp-cache"
_MAX_BYTES = 1 << 20
_CHUNK = 1 << 20


def file_sha256(path: Path, max_bytes: int | None = None) -> str | None:
    """SHA-256 of the bytes of regular file ``path``; None when missing, a link, not a regular
    file (a FIFO is never waited on), larger than ``max_bytes`` or unreadable."""
    digest = hashlib.sha256()
    try:
        with open_regular(path, "dataset file", max_bytes=max_bytes) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (OSError, FmnistMlpError):
        return None
    return digest.hexdigest()


def load_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest, or an empty one when it is missing, damaged, a link or not a regular file
    (everything is then verified in full again, which is slower but never wrong)."""
    empty: dict[str, Any] = {"format": _FORMAT, "files": {}, "decoded": {}}
    try:
        data = json.loads(read_regular(data_dir / MANIFEST_NAME, "manifest", _MAX_BYTES))
    except (OSError, ValueError, RecursionError, FmnistMlpError):
        return empty
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return empty
    for key in ("files", "decoded"):
        if not isinstance(data.get(key), dict):
            data[key] = {}
    return data


def save_manifest(data_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest; a read-only cache just goes without (it is then verified in full)."""
    from fmnist_mlp.io.files import atomic_write

    try:
        atomic_write(data_dir / MANIFEST_NAME,
                     (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    except (OSError, FmnistMlpError):
        pass


def file_entry(manifest: dict[str, Any], filename: str) -> dict[str, Any] | None:
    entry = manifest["files"].get(filename)
    return entry if isinstance(entry, dict) else None


def matches(manifest: dict[str, Any], filename: str, idx_sha256: str, sha256: str | None) -> bool:
    """The file's bytes are those the tool verified as holding ``idx_sha256`` contents."""
    entry = file_entry(manifest, filename)
    return (entry is not None and sha256 is not None and entry.get("sha256") == sha256
            and entry.get("idx_sha256") == idx_sha256)
