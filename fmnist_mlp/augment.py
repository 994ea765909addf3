"""Data augmentation on a batch of flattened images, in NumPy, in place.

A batch is (B, 784) rows of 28×28 images. Horizontal flips keep a garment a garment; shifts move
the image by up to ``shift`` pixels in x and y, filling the uncovered border with the background
value (the batch minimum: raw pixel 0 under any monotone normalisation).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Augmenter = Callable[[np.ndarray, np.random.Generator], None]


def random_flip(batch: np.ndarray, rng: np.random.Generator, side: int = 28) -> None:
    """Mirror each image left–right with probability ½. batch: (B, side²), modified in place."""
    images = batch.reshape(batch.shape[0], side, side)
    flip = rng.random(batch.shape[0]) < 0.5
    images[flip] = images[flip, :, ::-1]


def random_shift(batch: np.ndarray, rng: np.random.Generator, max_shift: int,
                 side: int = 28) -> None:
    """Translate each image by (dy, dx) ∈ [−max_shift, max_shift]², in place."""
    if max_shift <= 0:
        return
    n = batch.shape[0]
    images = batch.reshape(n, side, side)
    padded = np.full((n, side + 2 * max_shift, side + 2 * max_shift), batch.min(), batch.dtype)
    padded[:, max_shift:max_shift + side, max_shift:max_shift + side] = images
    offsets = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
    rows = offsets[:, 0, None] + np.arange(side)            # (B, side)
    cols = offsets[:, 1, None] + np.arange(side)
    images[...] = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_augmenter(flip: bool = False, shift: int = 0) -> Augmenter | None:
    """A function ``(batch, rng) -> None`` applying the chosen augmentations, or None for none."""
    if shift < 0:
        raise ValueError(f"data.augment.shift: {shift!r} must be >= 0")
    if not flip and not shift:
        return None

    def augment(batch: np.ndarray, rng: np.random.Generator) -> None:
        if flip:
            random_flip(batch, rng)
        if shift:
            random_shift(batch, rng, shift)

    return augment
