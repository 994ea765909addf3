"""A trained model as a ``.safetensors`` file: no pickle, readable by any safetensors library.

The tensors are the model's parameters and batch-norm statistics under their usual names
(``layer0.W``, ``layer0.running_mean`` …). The string metadata holds, as JSON, everything else
needed to score raw pixels exactly as ``eval`` does: the model spec, the run's config, its input
normalisation and the class names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmnist_mlp.errors import CheckpointError, ConfigError
from fmnist_mlp.export import MISSING_EXPORT

FORMAT = "fmnist-mlp-safetensors"
VERSION = 1
_JSON_KEYS = ("model_spec", "config", "normalization", "class_names")


def _library():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise ConfigError(MISSING_EXPORT.format(package="safetensors")) from None
    return safetensors


def safetensors_bytes(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """Serialise named arrays with ``meta``'s values stored as JSON strings."""
    st = _library()
    metadata = {"format": FORMAT, "version": str(VERSION)}
    metadata.update({key: json.dumps(meta[key]) for key in _JSON_KEYS})
    tensors = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    return st.numpy.save(tensors, metadata=metadata)


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(named arrays, metadata) of a file written by :func:`safetensors_bytes`; anything else,
    truncated or foreign, is a :class:`CheckpointError` naming the file."""
    st = _library()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        with st.safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata()
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # SafetensorError, OSError, ValueError: all mean "not readable"
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fmnist-mlp safetensors file (no fmnist-mlp metadata)")
    if metadata.get("version") != str(VERSION):
        raise CheckpointError(f"{path}: safetensors format version {metadata.get('version')} "
                              f"not supported (expected {VERSION})")
    meta: dict[str, Any] = {}
    for key in _JSON_KEYS:
        try:
            meta[key] = json.loads(metadata[key])
        except (KeyError, TypeError, json.JSONDecodeError, RecursionError):  # (too deep)
            raise CheckpointError(f"{path}: metadata entry {key!r} missing or not JSON") from None
    return arrays, meta
