"""Image files -> grayscale arrays, with Pillow: which files, EXIF orientation, transparency,
refusing decompression bombs before they are decoded, and a bounded memory budget.

- Only the formats the README lists are opened, each recognised by its content
  (``Image.open(formats=FORMATS)``): Pillow would otherwise pick any of its decoders, and an EPS
  file named ``.png`` would be rendered by running Ghostscript.
- Only regular files are opened, without blocking (a FIFO given by name is refused, not waited on).
- Memory: the decoded picture (at most ``MAX_IMAGE_PIXELS`` × 4 bytes; JPEG decodes at 1/2..1/8
  scale when that is enough) is the only large array. It is flattened to grayscale and shrunk to
  at most ``WORK_SIDE`` pixels a side (box average) one band of rows at a time, so no full-size
  RGBA, float or float64 copy is ever made.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from fmnist_mlp.errors import ImageReadError, require_extra
from fmnist_mlp.predict.file_structure import check_jpeg_scans, check_structure

# What a directory argument expands to (a file named explicitly is tried whatever its suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The decoders used, by Pillow's format names; a file is opened by content with these alone.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
FORMATS_SHOWN = "PNG, JPEG, BMP, GIF, WebP or TIFF"
WORK_SIDE = 2048            # larger pictures are shrunk (box average) to this side, band by band
# Longest side read (JPEG's own limit). Pillow keeps a pointer per row: a 1 x 89,000,000 PNG,
# under the pixel limit, took 917 MB in row pointers and copies; 65535 rows cost 0.5 MB.
MAX_SIDE = 65535
# Pillow's JPEG opener gives a JPEG carrying a multi-picture index the format name "MPO"
_JPEG_FORMATS = ("JPEG", "MPO")
BAND_PIXELS = 1 << 22       # pixels converted at a time (16 MB as RGBA)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# EXIF orientation -> the transposition that makes the picture upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def require_pillow():
    """``PIL.Image``, or the one-line install hint (exit 2)."""
    return require_extra("PIL.Image", "image")


def expand_paths(arguments: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given, directories replaced by their image files (sorted, not recursive, hidden
    files and anything but regular files skipped). Returns (files, problems) where problems are
    (path, message) pairs."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for argument in arguments:
        path = Path(argument)
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            problems.append((path, _missing(path, exc)))
            continue
        if stat.S_ISDIR(mode):
            found = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES and _is_regular(p))
            if not found:
                problems.append((path, "directory holds no image files ("
                                 + ", ".join(IMAGE_SUFFIXES) + ")"))
            files.extend(found)
        elif stat.S_ISREG(mode):
            files.append(path)
        else:
            problems.append((path, _NOT_REGULAR))
    return files, problems


_NOT_REGULAR = "not a regular file (a FIFO, device or socket); give image files or folders"


def _missing(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        return ("a symbolic link to a missing file" if os.path.islink(path)
                else "no such file or directory")
    return f"cannot read ({exc.strerror or exc})"


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_grayscale(path: Path) -> np.ndarray:
    """(H, W) uint8 grayscale of an image file, upright (EXIF orientation applied), with any
    transparency composited onto a background the object stands out from, and shrunk (box
    average) to at most ``WORK_SIDE`` pixels a side.

    Images of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused from their header,
    before any pixel is decoded. Animated or multi-page files give their first frame.
    """
    Image = require_pillow()
    path = Path(path)
    try:
        with _open_regular(path) as f, warnings.catch_warnings():
            check_structure(f.fileno(), path)         # before Pillow's parsers walk it
            # A damaged EXIF block only costs the orientation: Pillow's "Corrupt EXIF data"
            # (a UserWarning) must not reach stderr.
            warnings.simplefilter("ignore", UserWarning)
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f, formats=_available(Image)) as image:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and image.width * image.height > limit:
                    raise Image.DecompressionBombError("")
                if max(image.width, image.height) > MAX_SIDE:
                    raise ImageReadError(f"{path}: refused: {image.width} x {image.height} "
                                         f"pixels; sides of at most {MAX_SIDE} are read")
                if image.format in _JPEG_FORMATS:
                    check_jpeg_scans(f, image, path)
                image.seek(0)
                orientation = image.getexif().get(0x0112)
                gray = _bounded_grayscale(image, path)
        return _upright(gray, orientation)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(f"{path}: refused: larger than {Image.MAX_IMAGE_PIXELS} pixels "
                             f"(a decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image (only {FORMATS_SHOWN} files are "
                             f"opened)") from None
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode it") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on bad files
        raise ImageReadError(f"{path}: not a readable image "
                             f"({type(exc).__name__}: {exc})") from None


def _available(Image) -> list[str]:
    """FORMATS that this Pillow can decode (a build without WebP simply does not open WebP)."""
    Image.init()
    return [name for name in FORMATS if name in Image.OPEN]


def _open_regular(path: Path):
    """A binary file object of ``path`` if it is a regular file; opened without blocking, so a
    FIFO swapped in after :func:`expand_paths` looked cannot hang the call either."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        message = (_missing(path, exc) if exc.errno in (errno.ELOOP, errno.ENOENT)
                   else f"cannot read ({exc.strerror or exc})")
        raise ImageReadError(f"{path}: {message}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageReadError(f"{path}: {_NOT_REGULAR}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _upright(gray: np.ndarray, orientation) -> np.ndarray:
    """Apply the EXIF orientation (grayscale and compositing are per pixel, so doing it last is
    the same as doing it first)."""
    from PIL import Image

    method = _UPRIGHT.get(orientation if isinstance(orientation, int) else 0)
    if method is None:
        return gray
    return np.asarray(Image.fromarray(gray).transpose(getattr(Image.Transpose, method)))


def _bounded_grayscale(image, path: Path) -> np.ndarray:
    """The picture as (H', W') uint8 grayscale, H', W' <= WORK_SIDE, computed band by band."""
    w, h = image.size
    factor = max(1, math.ceil(max(w, h) / WORK_SIDE))
    if factor > 1 and image.format in _JPEG_FORMATS:
        # The JPEG decoder scales by 1/2, 1/4 or 1/8 itself: a 1/8 decode holds 1/64 the pixels.
        image.draft(None, (math.ceil(w / factor), math.ceil(h / factor)))
        w, h = image.size
        factor = max(1, math.ceil(max(w, h) / WORK_SIDE))
    image.load()
    rows = max(1, BAND_PIXELS // max(1, w) // factor) * factor
    bands = [(top, min(h, top + rows)) for top in range(0, h, rows)]
    crop = (lambda top, bottom: image) if len(bands) == 1 else (
        lambda top, bottom: image.crop((0, top, w, bottom)))
    if _has_alpha(image):
        return _composited(image, bands, crop, factor)
    if image.mode in _WIDE_MODES:
        return _wide_to_uint8(image, bands, crop, factor, path)
    # CIELAB (TIFF): its first band is the lightness, which Pillow cannot reach through RGB.
    gray = ((lambda band: band.getchannel("L")) if image.mode == "LAB"
            else (lambda band: band.convert("L")))
    out = [_reduced(gray(crop(top, bottom)), factor) for top, bottom in bands]
    return np.concatenate([np.asarray(band) for band in out])


def _reduced(band, factor: int):
    return band if factor == 1 else band.reduce(factor)


def _has_alpha(image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def _composited(image, bands, crop, factor: int) -> np.ndarray:
    """Grayscale with alpha composited: a light object (a white shirt cut out) onto black, a dark
    one onto white, so the object stays visible either way. Two passes over the bands: the first
    decides which, from the mean luminance of the opaque pixels."""
    from PIL import Image

    total = count = 0
    for top, bottom in bands:
        rgba = crop(top, bottom).convert("RGBA")
        opaque = np.asarray(rgba.getchannel("A")) > 127
        luminance = np.asarray(rgba.convert("RGB").convert("L"))
        total += int(luminance[opaque].sum(dtype=np.int64))
        count += int(opaque.sum())
    light_object = count > 0 and total / count > 127
    out = []
    for top, bottom in bands:
        rgba = crop(top, bottom).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255) if light_object else (255,) * 4)
        out.append(np.asarray(_reduced(Image.alpha_composite(background, rgba).convert("L"),
                                       factor)))
    return np.concatenate(out) if len(out) > 1 else out[0]


def _box_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) -> (ceil(h/f), ceil(w/f)) means of f x f boxes (partial at the edges, as Pillow's
    ``reduce``), summed in float64: one band of at most BAND_PIXELS at a time (32 MB)."""
    h, w = values.shape
    rows, cols = np.arange(0, h, factor), np.arange(0, w, factor)
    sums = np.add.reduceat(np.add.reduceat(values.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))
    return sums / counts


def _wide_to_uint8(image, bands, crop, factor: int, path: Path) -> np.ndarray:
    """16-bit, 32-bit or float grayscale scaled into 0..255 by its own range (Pillow would clip
    it); NaN or infinite pixels are refused (they have no place in that range)."""
    out = []
    for top, bottom in bands:
        values = np.asarray(crop(top, bottom))
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ImageReadError(f"{path}: holds NaN or infinite pixel values (a float image "
                                 f"must hold finite numbers)")
        if factor > 1:
            # In float64: Pillow's float32 box average overflowed on finite values of 3e38.
            values = _box_mean(values, factor)
        out.append(values)
    values = (np.concatenate(out) if len(out) > 1 else out[0]).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
