"""Knowledge distillation's soft targets (Hinton, Vinyals & Dean 2015), as pure functions.

A student learns from ``target = (1 − w)·labels + w·teachers``: ``labels`` the (smoothed) one-hot
rows, ``teachers`` the mean over teachers of each one's probabilities softened by a temperature
T. Softening p with T is softmax(log p / T), which for a single network equals softmax(logits / T);
working from probabilities lets a flip-averaged teacher be softened the same way.
"""

from __future__ import annotations

import numpy as np


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(N, K) probabilities -> softmax(log p / T), row-wise; T > 1 flattens, T = 1 keeps p."""
    tiny = np.finfo(probs.dtype).tiny                 # log(0) guard for an underflowed class
    scaled = np.log(np.maximum(probs, tiny)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)       # the usual shift: exp() stays finite
    out = np.exp(scaled)
    out /= out.sum(axis=1, keepdims=True)
    return out


def mean_softened(teacher_probs: list[np.ndarray], temperature: float) -> np.ndarray:
    """The teachers' softened probabilities averaged: (N, K) from a list of (N, K)."""
    if not teacher_probs:
        raise ValueError("distillation needs at least one teacher")
    total = np.zeros_like(teacher_probs[0], dtype=np.float64)
    for probs in teacher_probs:
        total += soften(probs.astype(np.float64), temperature)
    return total / len(teacher_probs)


def mix_targets(labels: np.ndarray, teachers: np.ndarray, weight: float, dtype) -> np.ndarray:
    """(1 − weight)·labels + weight·teachers, both (N, K) with rows summing to one."""
    if labels.shape != teachers.shape:
        raise ValueError(f"labels {labels.shape} and teacher targets {teachers.shape} differ in shape")
    return ((1.0 - weight) * labels + weight * teachers).astype(dtype)
