"""A grayscale picture -> a 28×28 image like Fashion-MNIST's, as its makers made theirs.

Fashion-MNIST's products were photographed on light backgrounds, trimmed to the product,
resized so the longest side is 28 pixels and centred, with intensities negated: a bright object
on black. Here, for a (H, W) uint8 grayscale array:

1. invert when the background is light (the median of the border pixels is above mid-grey);
2. map the background level to black and stretch the rest to the full 0..255 range, so a
   grey table top becomes the black canvas rather than a grey box;
3. crop to the bounding box of the pixels that stand out from the background (by more than the
   border's own noise could: a phone photo's sensor noise must not widen the crop to the frame);
4. resize the longest side to 28 keeping the aspect ratio (Lanczos filter, antialiased);
5. centre on a 28×28 black canvas.

A 28×28 image on a dark background is used exactly as it is, so Fashion-MNIST's own images saved as
PNG files predict exactly as ``eval`` scores them.
"""

from __future__ import annotations

import numpy as np

from fmnist_mlp.data.facts import IMAGE_SIDE

SIDE = IMAGE_SIDE           # Fashion-MNIST's image side (fmnist_mlp.data.facts)
OBJECT_THRESHOLD = 24       # a pixel is part of the object when this far above the background
NOISE_SIGMAS = 8            # ...and this many of the border's noise standard deviations above it


def _border(image: np.ndarray) -> np.ndarray:
    """The first/last row and column."""
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def is_background_light(gray: np.ndarray) -> bool:
    """Whether the border pixels (first/last row and column) are mostly light."""
    return float(np.median(_border(gray))) > 127.5


def _object_threshold(image: np.ndarray) -> float:
    """The stretched level above which a pixel is the object, not the background's noise.

    The noise is estimated from the border: the 90th percentile of its distance from the border's
    median is 1.645 standard deviations of Gaussian noise. That survives up to a tenth of the
    border being object, and a white table clipped at 255 (half the noise gone) underestimates it
    by a factor 1.28 at most, so 8 estimated deviations are still over 6 real ones, which even a
    large photo's noise does not reach. A clean picture keeps the fixed threshold.
    """
    border = _border(image).astype(np.float64)
    level, top = float(np.median(border)), float(image.max())
    if top <= level:
        return float(OBJECT_THRESHOLD)
    noise = float(np.quantile(np.abs(border - level), 0.9)) / 1.645
    return max(float(OBJECT_THRESHOLD), NOISE_SIGMAS * noise * 255.0 / (top - level))


def to_fashion_mnist(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grayscale -> (28, 28) uint8, bright object centred on black (see above)."""
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty (H, W) grayscale array, got shape {gray.shape}")
    light = is_background_light(gray)
    if gray.shape == (SIDE, SIDE) and not light:
        return gray.copy()
    image = 255 - gray if light else gray
    threshold = _object_threshold(image)
    image = _background_to_black(image)
    # The bounding box from per-row and per-column flags: no index arrays of every pixel.
    mask = image > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:                           # an empty picture stays whole (and black)
        image = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return _centred(_resized(image))


def _background_to_black(image: np.ndarray) -> np.ndarray:
    """Subtract the border's median level and stretch what remains to 0..255."""
    level, top = float(np.median(_border(image))), float(image.max())
    if top <= level:
        return np.zeros_like(image)
    # A uint8 picture has 256 levels: stretch the levels (in float64, as ever), then look every
    # pixel up, rather than making float copies of the whole picture.
    levels = (np.arange(256, dtype=np.float64) - level) * (255.0 / (top - level))
    return np.clip(np.rint(levels), 0, 255).astype(np.uint8)[image]


def _resized(image: np.ndarray) -> np.ndarray:
    """Longest side to 28 pixels, aspect ratio kept (at least one pixel on the short side)."""
    from PIL import Image

    h, w = image.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))     # PIL sizes are (W, H)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _centred(image: np.ndarray) -> np.ndarray:
    canvas = np.zeros((SIDE, SIDE), np.uint8)
    h, w = image.shape
    top, left = (SIDE - h) // 2, (SIDE - w) // 2
    canvas[top:top + h, left:left + w] = image
    return canvas
