"""The one reader of model files: every array's name, dtype and shape is checked against what the
caller expects, and the memory estimate made, *before* any array data is read.

A model file may come from anyone. A ``.safetensors`` header can claim a 3 GB tensor in a sparse
928 KB file, relabel ``F32`` bytes as ``I32`` (a library would cast them without a word), or
carry a model spec edited to ``[10^7, 10^7]``; a ``.npz`` member's ``.npy`` header can claim
10^12 elements. So each format is read in two steps:

1. the *headers* alone: for safetensors the 8-byte little-endian length and the JSON header
   (parsed here, not by a library), for ``.npz`` each member's ``.npy`` header
   (:func:`npz_headers`); every size is checked against the bytes the file really holds;
2. the caller's ``expect(metadata)`` returns ``{name: (shape, dtype)}`` from the stored model spec
   -- the model's own list of its arrays -- after its memory estimate; :func:`check_arrays`
   compares, and only then is data read, straight into arrays of the expected dtype.

Every failure is a :class:`~fmnist_mlp.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fmnist_mlp.errors import CheckpointError

Expected = Mapping[str, tuple[tuple[int, ...], np.dtype]]

# safetensors: what fmnist-mlp writes into the string metadata (each value JSON)
SAFETENSORS_FORMAT = "fmnist-mlp-safetensors"
SAFETENSORS_VERSION = 1
SAFETENSORS_JSON_KEYS = ("model_spec", "config", "normalization", "class_names")
# Ours are a few kB (the config); the library's own cap is 100 MB. 16 MB of "{}," parsed into
# 5 million dicts took 475 MB; 1 MB stays within a few tens.
MAX_HEADER_BYTES = 1 << 20
# safetensors dtype codes -> NumPy (little-endian, as the format stores them)
_CODES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_ITEMSIZE = {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
             **{code: np.dtype(d).itemsize for code, d in _CODES.items()}}


def safetensors_code(dtype: np.dtype) -> str:
    """The safetensors dtype code of a NumPy dtype (``float32`` -> ``F32``)."""
    for code, name in _CODES.items():
        if np.dtype(name) == np.dtype(dtype).newbyteorder("<"):
            return code
    raise ValueError(f"no safetensors code for {dtype}")


def check_arrays(path: Path, found: Expected, expected: Expected, what: str = "tensor") -> None:
    """``found`` (from the file's headers) must hold exactly ``expected``'s names, dtypes and
    shapes."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: its {what}s do not match the stored model spec (missing "
                              f"{_listed(missing)}, unexpected {_listed(extra)})")
    for name, (shape, dtype) in expected.items():
        got_shape, got_dtype = found[name]
        if _dtype_name(got_dtype) != _dtype_name(dtype):
            raise CheckpointError(f"{path}: {what} {name!r} is stored as {_dtype_name(got_dtype)}, "
                                  f"the stored model spec says {_dtype_name(dtype)}")
        if tuple(got_shape) != tuple(shape):
            raise CheckpointError(f"{path}: {what} {name!r} has shape {tuple(got_shape)}, the "
                                  f"stored model spec says {tuple(shape)}")


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return f"[{shown}{', ...' if len(names) > 5 else ''}]"


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else np.dtype(dtype).name


# ---------------------------------------------------------------------------------------------
# JSON, read one way only


class DuplicateKey(ValueError):
    """A JSON object names a key twice; ``str()`` is the key, quoted."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(repr(key))
        out[key] = value
    return out


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses a key named twice in one object.

    JSON readers disagree on a repeated key (Python's keeps the last, others the first, some
    refuse), so a file holding one could be one model to this tool and another to the next
    reader: refused as damage (:class:`DuplicateKey`). Other failures are ``ValueError``
    (including a number too long to convert) or ``RecursionError`` (nesting too deep).
    """
    return json.loads(text, object_pairs_hook=_unique_keys)


# ---------------------------------------------------------------------------------------------
# safetensors


class _Tensor:
    __slots__ = ("code", "shape", "begin", "end")

    def __init__(self, code: str, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.code, self.shape, self.begin, self.end = code, shape, begin, end


def read_safetensors(path: str | Path, expect: Callable[[dict[str, Any]], Expected]
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(named arrays, metadata with its JSON values decoded) of a fmnist-mlp safetensors file.

    ``expect(metadata)`` gives the arrays the file must hold (and may refuse, e.g. a spec larger
    than memory); it is called after the header is checked against the file's size and before any
    tensor data is read.
    """
    path = Path(path)
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        header_len, header = _header(fd, path, size)
        metadata = header.pop("__metadata__", {})
        tensors = _tensors(header, path, data_size=size - 8 - header_len)
        meta = _metadata(metadata, path)
        # Compared as safetensors codes: "stored as I32, the stored model spec says F32".
        expected = {name: (shape, safetensors_code(dtype))
                    for name, (shape, dtype) in expect(meta).items()}
        check_arrays(path, {name: (t.shape, t.code) for name, t in tensors.items()}, expected)
        arrays = {}
        for name, t in tensors.items():
            try:
                array = np.empty(t.shape, np.dtype(_CODES[t.code]))
            except MemoryError:
                raise CheckpointError(f"{path}: not enough memory to read tensor {name!r} "
                                      f"{t.shape}") from None
            _read_exactly(fd, memoryview(array).cast("B") if array.size else memoryview(b""),
                          8 + header_len + t.begin, path)
            arrays[name] = array.astype(np.dtype(_CODES[t.code]).newbyteorder("="), copy=False)
        return arrays, meta
    finally:
        os.close(fd)


def file_kind(path: str | Path) -> str | None:
    """``"npz"`` (a zip archive), ``"safetensors"`` (an 8-byte header length the file can hold,
    then ``{``) or None, from the first bytes; a FIFO, device or directory is a CheckpointError
    without being read or waited on."""
    path = Path(path)
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 9, 0)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the model file "
                              f"({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    return None


def _open_regular(path: Path) -> int:
    """An fd of ``path`` if it is a regular file; a FIFO or device is refused without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such model file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the model file "
                              f"({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file (a directory, device, FIFO or socket)")
    os.set_blocking(fd, True)
    return fd


def _read_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(buffer):
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n == 0:
            raise CheckpointError(f"{path}: truncated (the file ended inside its tensor data)")
        done += n


def _header(fd: int, path: Path, size: int) -> tuple[int, dict]:
    if size < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, too short)")
    raw = os.pread(fd, 8, 0)
    header_len = int.from_bytes(raw, "little")
    if header_len > MAX_HEADER_BYTES and 8 + header_len <= size:
        raise CheckpointError(f"{path}: not a fmnist-mlp safetensors file (its header claims "
                              f"{header_len} bytes; a fmnist-mlp header is at most "
                              f"{MAX_HEADER_BYTES})")
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise CheckpointError(f"{path}: not a safetensors file (its header claims {header_len} "
                              f"bytes; the file holds {size})")
    text = os.pread(fd, header_len, 8)
    try:
        header = strict_json(text.decode("utf-8"))
    except DuplicateKey as exc:
        raise CheckpointError(f"{path}: damaged: its header names {exc} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header_len, header


def _tensors(header: dict, path: Path, data_size: int) -> dict[str, _Tensor]:
    """The header's tensor entries, checked: known dtype, sizes that match their offsets, and
    offsets that tile the data section exactly (no gap, no overlap, nothing past the end)."""
    tensors = {}
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (isinstance(code, str) and isinstance(shape, list)
                  and all(type(n) is int and n >= 0 for n in (*shape, begin, end)))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: tensor {name!r}: damaged header entry")
        if code not in _ITEMSIZE:
            raise CheckpointError(f"{path}: tensor {name!r}: unknown dtype {code!r}")
        if end - begin != math.prod(shape) * _ITEMSIZE[code]:
            raise CheckpointError(f"{path}: tensor {name!r}: {shape} x {code} is not the "
                                  f"{end - begin} bytes its offsets give (damaged)")
        tensors[name] = _Tensor(code, tuple(shape), begin, end)
    position = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != position:
            raise CheckpointError(f"{path}: damaged: its tensors' offsets leave a gap or overlap "
                                  f"at byte {position}")
        position = t.end
    if position != data_size:
        raise CheckpointError(f"{path}: damaged: its header describes {position} bytes of tensor "
                              f"data, the file holds {data_size}")
    return tensors


def _metadata(metadata: Any, path: Path) -> dict[str, Any]:
    if not isinstance(metadata, dict) or metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path}: not a fmnist-mlp safetensors file (no fmnist-mlp metadata)")
    if metadata.get("version") != str(SAFETENSORS_VERSION):
        raise CheckpointError(f"{path}: safetensors format version {metadata.get('version')!r} "
                              f"not supported (expected {SAFETENSORS_VERSION})")
    meta: dict[str, Any] = {}
    for key in SAFETENSORS_JSON_KEYS:
        try:
            meta[key] = strict_json(metadata[key])
        except DuplicateKey as exc:
            raise CheckpointError(f"{path}: damaged: metadata entry {key!r} names {exc} "
                                  f"twice") from None
        except (KeyError, TypeError, ValueError, RecursionError):  # (too deep, too long a number)
            raise CheckpointError(f"{path}: metadata entry {key!r} missing or not JSON") from None
    return meta


# ---------------------------------------------------------------------------------------------
# .npz


# A checkpoint lists a few members per layer (parameters, optimiser slots) and a few more; the
# zip's central directory is read whole, one ZipInfo (~500 bytes) per member, by zipfile.
MAX_NPZ_MEMBERS = 10_000
MAX_NPZ_DIRECTORY_BYTES = 4 << 20


def check_zip_directory(path: str | Path) -> None:
    """Refuse an archive whose end record lists more than MAX_NPZ_MEMBERS members or a central
    directory over MAX_NPZ_DIRECTORY_BYTES, from that record alone: before ``zipfile`` reads the
    directory (a 57 MB file listing a million members took 517 MB). An archive whose end record
    is not found is left to ``zipfile``, which says why it cannot read it."""
    path = Path(path)
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        tail_at = max(0, size - (22 + 65535))
        tail = os.pread(fd, size - tail_at, tail_at)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return
        members = int.from_bytes(tail[at + 10:at + 12], "little")
        directory = int.from_bytes(tail[at + 12:at + 16], "little")
        locator = tail[at - 20:at] if at >= 20 else b""
        if locator[:4] == b"PK\x06\x07":           # zip64: the real counts are in its record
            record = os.pread(fd, 56, int.from_bytes(locator[8:16], "little"))
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                members = int.from_bytes(record[32:40], "little")
                directory = int.from_bytes(record[40:48], "little")
    except (OSError, OverflowError):
        return
    finally:
        os.close(fd)
    if members > MAX_NPZ_MEMBERS or directory > MAX_NPZ_DIRECTORY_BYTES:
        raise CheckpointError(f"{path}: not a fmnist-mlp checkpoint: its zip directory lists "
                              f"{members} members in {directory} bytes (a checkpoint has tens; "
                              f"at most {MAX_NPZ_MEMBERS} are read)")


def npz_headers(zf: zipfile.ZipFile, path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{member key: (shape, dtype)}`` from an ``.npz``'s ``.npy`` headers, each member's size
    checked against its header; nothing but the headers is read."""
    from numpy.lib import format as npy_format

    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy") or info.filename[:-4] in out:
            raise CheckpointError(f"{path}: unexpected member {info.filename!r}: not a "
                                  f"fmnist-mlp checkpoint")
        try:
            with zf.open(info) as f:
                version = npy_format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = npy_format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = npy_format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"npy format version {version}")
                offset = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
            raise CheckpointError(f"{path}: member {info.filename!r} has no valid array header "
                                  f"({exc})") from None
        if dtype.hasobject:
            raise CheckpointError(f"{path}: refused: holds pickled Python objects, which a "
                                  f"checkpoint never needs")
        if info.file_size != offset + math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: member {info.filename!r}: its header says "
                                  f"{shape} x {dtype}, its size says otherwise (damaged)")
        out[info.filename[:-4]] = (tuple(shape), dtype)
    return out
