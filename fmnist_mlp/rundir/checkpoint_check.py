"""Check a ``.npz`` checkpoint from its headers before reading any array data.

A hostile or damaged archive can claim 10^12 elements in one member's header, hold members that
are not ours, compress a small file into gigabytes, or carry a model spec edited to
``[20000, 20000]``. Here each member's name, dtype and shape is read from its ``.npy`` header
(``numpy.lib.format``) and compared with what the stored model spec implies, and the spec's size
is compared with the machine's memory, all before a single array is allocated. Only then does
:func:`fmnist_mlp.rundir.files.load_checkpoint` read the data.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from fmnist_mlp.nn import memory
from fmnist_mlp.errors import CheckpointError, ConfigError

MAX_META_CHARS = 1 << 20          # the JSON metadata: config, spec, counters (a few kB)
MAX_RNG_CHARS = 1 << 14           # one generator's state as JSON (~300 chars for PCG64)
_PARAM = re.compile(r"^layer(\d{1,4})\.(W|b|gamma|beta|running_mean|running_var)$")
_FLOATS = ("float32", "float64")


def _headers(zf: zipfile.ZipFile, path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{member key: (shape, dtype)}`` from the .npy headers; the sizes must add up."""
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


def expected_layer_widths(spec: Any, path: Path) -> list[int]:
    """[input, hidden..., classes] from a stored model spec, checked to be sane integers."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its model spec")
    widths = [spec.get("input_size"), *(spec.get("hidden") or []), spec.get("num_classes")] \
        if isinstance(spec.get("hidden", []), list) else None
    if widths is None or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        shown = widths if widths is not None else spec.get("hidden")   # input, hidden, classes
        raise CheckpointError(f"{path}: damaged model spec (layer sizes {shown!r})")
    return widths


def check_members(path: Path, zf: zipfile.ZipFile) -> dict:
    """Check every member against the metadata's model spec; return the parsed metadata."""
    headers = _headers(zf, path)
    if "meta" not in headers:
        raise CheckpointError(f"{path}: not a fmnist-mlp checkpoint (no 'meta' entry)")
    meta = _json_member(zf, headers, "meta", MAX_META_CHARS, path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a fmnist-mlp checkpoint")
    spec = meta.get("model_spec")
    widths = expected_layer_widths(spec, path)
    itemsize = np.dtype(spec.get("dtype", "float32")).itemsize if spec.get("dtype") in _FLOATS else 8
    try:
        memory.check_fits(memory.parameter_count(widths[0], widths[1:-1], widths[-1]) * itemsize
                          * memory.ARRAYS_PER_PARAMETER, f"{path}: model spec {widths}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    for key, (shape, dtype) in headers.items():
        kind, _, name = key.partition("/")
        if key == "meta":
            continue
        if kind == "rng":
            if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * MAX_RNG_CHARS:
                raise CheckpointError(f"{path}: entry {key!r} is not a generator state")
        elif kind == "optim" and name == "t":
            if shape != () or dtype.kind not in "iu":
                raise CheckpointError(f"{path}: entry {key!r} is not a step count")
        elif kind in ("param", "optim"):
            param = name.rpartition("/")[2] if kind == "optim" else name
            want = _param_shape(param, widths)
            if want is None or shape != want or dtype.name not in _FLOATS:
                raise CheckpointError(f"{path}: entry {key!r} ({shape}, {dtype}) does not belong "
                                      f"to the stored model {widths}")
        else:
            raise CheckpointError(f"{path}: unexpected entry {key!r}: not a fmnist-mlp checkpoint")
    return meta


def _param_shape(name: str, widths: list[int]) -> tuple[int, ...] | None:
    match = _PARAM.match(name)
    if not match or int(match[1]) >= len(widths) - 1:
        return None
    i = int(match[1])
    return (widths[i], widths[i + 1]) if match[2] == "W" else (widths[i + 1],)


def _json_member(zf, headers, key: str, max_chars: int, path: Path) -> Any:
    shape, dtype = headers[key]
    if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * max_chars:
        raise CheckpointError(f"{path}: entry {key!r} is not a JSON string of at most "
                              f"{max_chars} characters")
    with zf.open(key + ".npy") as f:
        array = npy_format.read_array(f, allow_pickle=False)
    try:
        return json.loads(str(array))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: entry {key!r} holds invalid or too deeply nested "
                              f"JSON") from None
