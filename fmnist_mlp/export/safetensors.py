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

from fmnist_mlp.errors import require_extra
from fmnist_mlp.io.model_file import (SAFETENSORS_FORMAT, SAFETENSORS_JSON_KEYS,
                                      SAFETENSORS_VERSION)

FORMAT, VERSION, _JSON_KEYS = SAFETENSORS_FORMAT, SAFETENSORS_VERSION, SAFETENSORS_JSON_KEYS


def _library():
    require_extra("safetensors.numpy", "export")
    import safetensors

    return safetensors


def safetensors_bytes(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """Serialise named arrays with ``meta``'s values stored as JSON strings."""
    st = _library()
    metadata = {"format": FORMAT, "version": str(VERSION)}
    metadata.update({key: json.dumps(meta[key]) for key in _JSON_KEYS})
    tensors = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    return st.numpy.save(tensors, metadata=metadata)


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(named arrays, metadata) of a file written by :func:`safetensors_bytes`, read by the one
    checked model-file reader (names, dtypes, shapes and memory before any data); anything else,
    truncated or foreign, is a :class:`CheckpointError` naming the file."""
    from fmnist_mlp.rundir.trained import read_safetensors_model

    return read_safetensors_model(path)
