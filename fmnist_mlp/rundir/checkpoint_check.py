"""Check a ``.npz`` checkpoint from its headers before reading any array data.

A hostile or damaged archive can claim 10^12 elements in one member's header, hold members that
are not ours, compress a small file into gigabytes, or carry a model spec edited to
``[20000, 20000]``. Here each member's name, dtype and shape is read from its ``.npy`` header
(``numpy.lib.format``) and compared with what the stored model spec implies, and the spec's size
is compared with the machine's memory, all before a single array is allocated. Only then does
:func:`fmnist_mlp.rundir.files.load_checkpoint` read the data.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from fmnist_mlp.io.memory import check_fits
from fmnist_mlp.io.model_file import DuplicateKey, check_arrays, npz_headers, strict_json
from fmnist_mlp.nn import memory
from fmnist_mlp.nn.model import is_buffer, parameter_shapes
from fmnist_mlp.errors import CheckpointError, ConfigError

MAX_META_CHARS = 1 << 20          # the JSON metadata: config, spec, counters (a few kB)
MAX_RNG_CHARS = 1 << 14           # one generator's state as JSON (~300 chars for PCG64)
_FLOATS = ("float32", "float64")


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


def expected_model_arrays(spec: Any, path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array a model file with this stored spec must hold
    (parameters and batch-norm statistics, named by the model itself), once the spec is sane and
    its memory estimate fits; said before any array of the file is read."""
    widths = expected_layer_widths(spec, path)
    if spec.get("dtype", "float32") not in _FLOATS:
        raise CheckpointError(f"{path}: damaged model spec (dtype {spec.get('dtype')!r})")
    dtype = np.dtype(spec.get("dtype", "float32"))
    try:
        check_fits(memory.parameter_count(widths[0], widths[1:-1], widths[-1]) * dtype.itemsize
                   * memory.arrays_per_parameter(), f"{path}: model spec {widths}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return {name: (shape, dtype)
            for name, shape in parameter_shapes(widths, spec.get("batchnorm") is True).items()}


def check_members(path: Path, zf: zipfile.ZipFile) -> dict:
    """Check every member against the metadata's model spec; return the parsed metadata."""
    headers = npz_headers(zf, path)
    if "meta" not in headers:
        raise CheckpointError(f"{path}: not a fmnist-mlp checkpoint (no 'meta' entry)")
    meta = _json_member(zf, headers, "meta", MAX_META_CHARS, path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a fmnist-mlp checkpoint")
    spec = meta.get("model_spec")
    expected = expected_model_arrays(spec, path)
    shapes = {name: shape for name, (shape, _) in expected.items()}
    widths = expected_layer_widths(spec, path)
    # The model's arrays: exactly the spec's names, shapes and dtype (the one check, as for
    # .safetensors); optimiser state and generator states are a checkpoint's own, checked below.
    check_arrays(path, {key[len("param/"):]: value for key, value in headers.items()
                        if key.startswith("param/")}, expected, what="parameter")
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
            # optimiser state exists for trained parameters only, not running statistics
            want = None if kind == "optim" and is_buffer(param) else shapes.get(param)
            if want is None or shape != want or dtype.name not in _FLOATS:
                raise CheckpointError(f"{path}: entry {key!r} ({shape}, {dtype}) does not belong "
                                      f"to the stored model {widths}")
        else:
            raise CheckpointError(f"{path}: unexpected entry {key!r}: not a fmnist-mlp checkpoint")
    return meta


def _json_member(zf, headers, key: str, max_chars: int, path: Path) -> Any:
    shape, dtype = headers[key]
    if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * max_chars:
        raise CheckpointError(f"{path}: entry {key!r} is not a JSON string of at most "
                              f"{max_chars} characters")
    with zf.open(key + ".npy") as f:
        array = npy_format.read_array(f, allow_pickle=False)
    try:
        return strict_json(str(array))
    except DuplicateKey as exc:
        raise CheckpointError(f"{path}: damaged: entry {key!r} names {exc} twice") from None
    except (ValueError, RecursionError):          # also a number too long to convert
        raise CheckpointError(f"{path}: entry {key!r} holds invalid or too deeply nested "
                              f"JSON") from None
