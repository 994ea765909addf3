"""Request bodies -> pixel rows: MLflow's scoring protocol (JSON ``inputs`` / ``instances`` /
``dataframe_split`` / ``dataframe_records``, or CSV), and a NumPy ``.npy`` file for clients that
would rather not spend more time writing and parsing text than the model spends scoring.

Pixels arrive as N×784 rows or N×28×28 images (one image alone as 784 or 28×28 numbers), either
raw 0..255 or already scaled to 0..1: ``params.scale`` says which (``"255"`` or ``"1"``); left
out (``"auto"``), values that all lie in 0..1 are taken as scaled. Only a nearly black raw image
(every pixel 0 or 1) reads differently under the two, and it is black either way. Columns of a
data frame are the 784 pixels in order, or named ``pixel0..pixel783`` / ``pixel1..pixel784``
(Kaggle's Fashion-MNIST CSV) / ``0..783`` in any order; a ``label`` column is dropped.

Every problem is a :class:`BadRequest` whose message names what was wrong.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmnist_mlp.data.facts import IMAGE_SHAPE, NUM_FEATURES

JSON_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records")
_PIXEL_NAME = re.compile(r"(?:pixel)?(\d{1,4})", re.IGNORECASE)


class BadRequest(ValueError):
    """A request the client can fix: answered with ``status`` and the message as JSON."""

    def __init__(self, message: str, status: int = 400, code: str = "BAD_REQUEST"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Rows:
    pixels: np.ndarray            # (N, 784) raw 0..255: integers as sent, or float64
    scaled_input: bool            # whether the client sent 0..1 values


def rows_from_json(body: bytes, max_rows: int) -> Rows:
    """MLflow's JSON scoring request -> pixel rows."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"malformed JSON ({exc})", code="MALFORMED_REQUEST") from None
    except RecursionError:
        raise BadRequest("malformed JSON (nested too deeply)", code="MALFORMED_REQUEST") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"expected a JSON object with one of {', '.join(JSON_KEYS)}")
    found = [key for key in JSON_KEYS if key in doc]
    unknown = sorted(set(doc) - set(JSON_KEYS) - {"params"})
    if len(found) != 1 or unknown:
        raise BadRequest(f"expected exactly one of {', '.join(JSON_KEYS)} (and optionally "
                         f"params); got {', '.join(map(repr, sorted(doc))) or 'an empty object'}")
    key, params = found[0], doc.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("params must be a JSON object")
    value = doc[key]
    if key in ("inputs", "instances"):
        if isinstance(value, dict):             # named tensors: ONNX's input name
            if set(value) != {"pixels"}:
                raise BadRequest(f"{key} as an object takes one tensor, \"pixels\"")
            value = value["pixels"]
        array = _numbers(value, key, max_rows)
    elif key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise BadRequest("dataframe_split must be an object with \"data\" (and \"columns\")")
        array = _numbers(value["data"], "dataframe_split.data", max_rows)
        if array.size == 0:
            raise BadRequest("dataframe_split: no images")
        if array.ndim != 2:
            raise BadRequest(f"dataframe_split.data must be rows of numbers, got shape "
                             f"{array.shape}")
        array = _columns(array, value.get("columns"))
    else:
        array = _records(value, max_rows)
    return _scaled(_as_rows(array, key), params.get("scale", "auto"))


def rows_from_csv(body: bytes, max_rows: int) -> Rows:
    """CSV (MLflow's ``text/csv``): a header of column names, or none, then one image a row."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("CSV is not UTF-8 text", code="MALFORMED_REQUEST") from None
    first, _, rest = text.lstrip("\ufeff").partition("\n")
    header = next(csv.reader([first]), [])
    if header and not all(_is_number(cell) for cell in header):
        names, text = header, rest
    else:
        names = None
    n_lines = text.count("\n") + 1
    if n_lines > max_rows + 1:
        raise _too_many(n_lines, max_rows)
    try:
        array = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2,
                           encoding=None)
    except ValueError as exc:
        raise BadRequest(f"CSV: {str(exc).splitlines()[0]}", code="MALFORMED_REQUEST") from None
    if len(array) > max_rows:
        raise _too_many(len(array), max_rows)
    return _scaled(_columns(array, names) if names else _as_rows(array, "CSV"), "auto")


def rows_from_npy(body: bytes, max_rows: int) -> Rows:
    """A NumPy ``.npy`` file (``application/x-npy``; not MLflow's, but no text to parse): N×784
    or N×28×28 numbers, its header checked before any data is read, no pickles."""
    stream = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(stream)
    except (ValueError, OSError) as exc:
        raise BadRequest(f"not a .npy file ({exc})", code="MALFORMED_REQUEST") from None
    if dtype.kind not in "iuf" or dtype.hasobject:
        raise BadRequest(f".npy of dtype {dtype}: numbers only")
    if len(shape) > 1 and shape[0] > max_rows:
        raise _too_many(shape[0], max_rows)
    stream.seek(0)
    try:
        array = np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BadRequest(f"damaged .npy file ({exc})", code="MALFORMED_REQUEST") from None
    if dtype.kind == "f":
        array = array.astype(np.float64)
    return _scaled(_as_rows(array, ".npy"), "auto")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _too_many(n: int, max_rows: int) -> BadRequest:
    return BadRequest(f"{n} rows: at most {max_rows} images a request (--max-rows)", status=413,
                      code="TOO_MANY_ROWS")


def _numbers(value: Any, where: str, max_rows: int) -> np.ndarray:
    """A nested list of numbers as a float64 array; strings, booleans, nulls or ragged rows are
    refused (not converted)."""
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be an array of numbers")
    if len(value) > max_rows and isinstance(value[0], list):      # (a flat list is one image)
        raise _too_many(len(value), max_rows)
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):
        raise BadRequest(f"{where}: rows of different lengths, or values that are not "
                         f"numbers") from None
    if array.dtype.kind not in "iuf":
        raise BadRequest(f"{where} must hold numbers only (no strings, booleans or nulls)")
    return array if array.dtype.kind in "iu" else array.astype(np.float64, copy=False)


def _as_rows(array: np.ndarray, where: str) -> np.ndarray:
    """N×784, N×28×28, or one image as 784 or 28×28 numbers -> (N, 784)."""
    if array.shape in ((NUM_FEATURES,), IMAGE_SHAPE):
        return array.reshape(1, NUM_FEATURES)
    if array.ndim == 2 and array.shape[1] == NUM_FEATURES:
        return array
    if array.ndim == 3 and array.shape[1:] == IMAGE_SHAPE:
        return array.reshape(len(array), NUM_FEATURES)
    if array.size == 0:
        raise BadRequest(f"{where}: no images")
    raise BadRequest(f"{where}: shape {list(array.shape)}; expected N×{NUM_FEATURES} pixels or "
                     f"N×{IMAGE_SHAPE[0]}×{IMAGE_SHAPE[1]} images")


def _columns(array: np.ndarray, names: Any) -> np.ndarray:
    """Rows of a data frame -> (N, 784) pixels in order (see the module's docstring)."""
    if names is None:
        return _as_rows(array, "dataframe")
    if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
        raise BadRequest("columns must be a list of names")
    if len(names) != array.shape[1]:
        raise BadRequest(f"{len(names)} columns named for rows of {array.shape[1]} values")
    keep = [i for i, n in enumerate(names) if str(n).lower() != "label"]
    order = pixel_order([str(names[i]) for i in keep])
    return array[:, [keep[j] for j in order]]


def pixel_order(names: list[str]) -> list[int]:
    """Positions of the 784 pixel columns, in pixel order."""
    if len(names) != NUM_FEATURES:
        raise BadRequest(f"{len(names)} pixel columns; an image has {NUM_FEATURES}")
    matches = [_PIXEL_NAME.fullmatch(n) for n in names]
    if not all(matches):
        return list(range(NUM_FEATURES))            # unnamed pixels: the order given
    numbers = [int(m.group(1)) for m in matches]
    for first in (0, 1):
        if sorted(numbers) == list(range(first, first + NUM_FEATURES)):
            return sorted(range(NUM_FEATURES), key=numbers.__getitem__)
    raise BadRequest(f"pixel columns must be numbered 0..{NUM_FEATURES - 1} or "
                     f"1..{NUM_FEATURES}, each once")


def _records(value: Any, max_rows: int) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise BadRequest("dataframe_records must be an array of objects")
    if len(value) > max_rows:
        raise _too_many(len(value), max_rows)
    if not value:
        raise BadRequest("dataframe_records: no images")
    names = list(value[0])
    if any(list(r) != names and set(r) != set(names) for r in value):
        raise BadRequest("dataframe_records: every record must have the same columns")
    array = _numbers([[r[n] for n in names] for r in value], "dataframe_records", max_rows)
    return _columns(array, names)


def _scaled(pixels: np.ndarray, scale: Any) -> Rows:
    if len(pixels) == 0:
        raise BadRequest("no images")
    if isinstance(scale, bool) or scale not in ("auto", "255", "1", 255, 1):
        raise BadRequest(f"params.scale {scale!r}: use \"255\" (raw pixels), \"1\" (scaled to "
                         f"0..1) or \"auto\"")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise BadRequest("pixel values must be finite numbers")
    lo, hi = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    unit = str(scale) == "1" or (scale == "auto" and hi <= 1.0)
    top = 1.0 if unit else 255.0
    if lo < 0.0 or hi > top:
        expected = {"auto": "0..255 (raw) or 0..1 (scaled)", "1": "0..1 (params.scale 1)"}.get(
            str(scale), "0..255 (params.scale 255)")
        raise BadRequest(f"pixel values from {lo:g} to {hi:g}: expected {expected}")
    return Rows(pixels * 255.0 if unit else pixels, unit)
