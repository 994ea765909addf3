"""Image files -> grayscale arrays, with Pillow: which files, EXIF orientation, transparency, and
refusing decompression bombs before they are decoded."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from fmnist_mlp.errors import ConfigError, FmnistMlpError
from fmnist_mlp.predict import MISSING_PILLOW

# What a directory argument expands to (a file named explicitly is tried whatever its suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageReadError(FmnistMlpError):
    """One input file could not be used; the others are still predicted."""


def require_pillow():
    try:
        import PIL.Image
    except ImportError:
        raise ConfigError(MISSING_PILLOW) from None
    return PIL.Image


def expand_paths(arguments: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given, directories replaced by their image files (sorted, not recursive, hidden
    files skipped). Returns (files, problems) where problems are (path, message) pairs."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((path, "directory holds no image files ("
                                 + ", ".join(IMAGE_SUFFIXES) + ")"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append((path, "no such file or directory"))
    return files, problems


def read_grayscale(path: Path) -> np.ndarray:
    """(H, W) uint8 grayscale of an image file, upright (EXIF orientation applied) and with any
    transparency composited onto a background the object stands out from.

    Images of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused from their header,
    before any pixel is decoded. Animated or multi-page files give their first frame.
    """
    Image = require_pillow()
    from PIL import ImageOps

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and image.width * image.height > limit:
                    raise Image.DecompressionBombError("")
                image.seek(0)
                upright = ImageOps.exif_transpose(image)
                return _flatten(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(f"{path}: refused: larger than {Image.MAX_IMAGE_PIXELS} pixels "
                             f"(a decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on bad files
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _flatten(image) -> np.ndarray:
    """Grayscale with alpha composited: a light object (a white shirt cut out) onto black, a
    dark one onto white, so the object stays visible either way."""
    from PIL import Image

    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _wide_to_uint8(np.asarray(image))
        return np.asarray(image.convert("L"))
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    luminance = np.asarray(rgba.convert("RGB").convert("L"))
    opaque = alpha > 127
    light_object = bool(opaque.any()) and luminance[opaque].mean() > 127
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255) if light_object else (255,) * 4)
    return np.asarray(Image.alpha_composite(background, rgba).convert("L"))


def _wide_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit or float grayscale scaled into 0..255 by its own range (Pillow would clip it)."""
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
