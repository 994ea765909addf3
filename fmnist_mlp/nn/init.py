"""Weight initialisation suited to the activation, so signals neither vanish nor explode at start."""

from __future__ import annotations

import numpy as np

INITS = ("auto", "he", "glorot")


def resolve_init(init: str, activation: str) -> str:
    """'auto' picks He for ReLU (which halves the variance) and Glorot for the rest."""
    if init == "auto":
        return "he" if activation == "relu" else "glorot"
    return init


def init_weight(rng: np.random.Generator, fan_in: int, fan_out: int, scheme: str,
                dtype) -> np.ndarray:
    """(fan_in, fan_out) weights: He N(0, 2/fan_in) or Glorot U(±√(6/(fan_in+fan_out)))."""
    if scheme == "he":
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
    elif scheme == "glorot":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=(fan_in, fan_out))
    else:
        raise ValueError(f"unknown init scheme {scheme!r}; expected one of {INITS}")
    return np.ascontiguousarray(w, dtype=dtype)
