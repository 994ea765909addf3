"""predict's image handling with real Pillow: preprocessing, orientation, transparency, bombs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import require_or_skip

try:
    from PIL import Image
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    Image = None

from fmnist_mlp.predict.preprocess import SIDE, is_background_light, to_fashion_mnist


@pytest.fixture(autouse=True)
def _pillow():
    if Image is None:
        require_or_skip("Pillow is not installed (pip install -e '.[image]')")


def test_a_dark_28x28_image_is_used_exactly_as_it_is():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    image[0, :] = image[-1, :] = image[:, 0] = image[:, -1] = 0        # dark border
    out = to_fashion_mnist(image)
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_a_dark_object_on_white_is_inverted_cropped_resized_and_centred():
    photo = np.full((200, 400), 240, np.uint8)          # a light table
    photo[50:150, 100:300] = 20                          # a dark 100 x 200 object
    out = to_fashion_mnist(photo)
    assert out.shape == (SIDE, SIDE) and out.dtype == np.uint8
    rows, cols = np.nonzero(out > 128)
    # The long side fills 28 pixels, the short one half of it, centred vertically.
    assert (cols.min(), cols.max()) == (0, 27)
    assert 13 <= rows.max() - rows.min() + 1 <= 15
    assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 1
    assert out[0].max() == 0 and out[-1].max() == 0      # black above and below
    assert out.max() == 255                               # the background stretch maps up to white


def test_a_grey_background_becomes_black():
    photo = np.full((60, 60), 60, np.uint8)               # dark grey background
    photo[20:40, 25:35] = 200
    out = to_fashion_mnist(photo)
    assert out.min() == 0 and (out == 0).mean() > 0.3
    assert not is_background_light(photo) and is_background_light(255 - photo)


@pytest.mark.parametrize("table", [235.0, 255.0])     # 255: the noise clipped by a white table
def test_a_noisy_photo_is_still_cropped_to_its_object(table):
    # A phone photo's sensor noise: a few background pixels are far above the table's median.
    # The crop must follow the object, not the noise's most extreme pixels.
    rng = np.random.default_rng(0)
    photo = np.full((800, 600), table)
    photo[300:500, 200:400] = 30                          # a dark 200 x 200 object, centred
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    out = to_fashion_mnist(photo)
    rows, cols = np.nonzero(out > 128)
    assert (rows.min(), rows.max()) == (0, 27) and (cols.min(), cols.max()) == (0, 27)


def test_an_empty_picture_stays_black():
    assert to_fashion_mnist(np.full((50, 70), 255, np.uint8)).max() == 0


def write_png(path: Path, array: np.ndarray, **info) -> Path:
    Image.fromarray(array).save(path, **info)
    return path


def test_exif_orientation_is_applied(tmp_path):
    from fmnist_mlp.predict.images import read_grayscale

    tall = np.zeros((60, 30), np.uint8)
    tall[:10] = 255                                       # bright top
    exif = Image.Exif()
    exif[0x0112] = 6                                      # "rotate 90° clockwise to view"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(tall).save(path, exif=exif.tobytes(), quality=95)
    upright = read_grayscale(path)
    assert upright.shape == (30, 60)                      # rotated to landscape
    assert upright[:, -10:].mean() > 200 and upright[:, :40].mean() < 30


def test_transparency_is_composited_so_the_object_stays_visible(tmp_path):
    from fmnist_mlp.predict.images import read_grayscale

    rgba = np.zeros((40, 40, 4), np.uint8)                 # fully transparent
    rgba[10:30, 10:30] = (250, 250, 250, 255)             # an opaque white shirt
    light = read_grayscale(write_png(tmp_path / "white.png", rgba))
    assert light[0, 0] == 0 and light[20, 20] == 250      # onto black: still visible
    rgba[10:30, 10:30] = (10, 10, 10, 255)                 # an opaque black shoe
    dark = read_grayscale(write_png(tmp_path / "black.png", rgba))
    assert dark[0, 0] == 255 and dark[20, 20] == 10       # onto white


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels, with one tiny (wrong) data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [10_000, 100_000])   # above the limit, and above twice it
def test_decompression_bombs_are_refused_from_their_header(tmp_path, side):
    from fmnist_mlp.predict.images import ImageReadError, read_grayscale

    path = png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageReadError, match="bomb.png: refused"):
        read_grayscale(path)


def test_unreadable_files_name_themselves(tmp_path):
    from fmnist_mlp.predict.images import ImageReadError, read_grayscale

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.png: not a readable image"):
        read_grayscale(text)
    good = write_png(tmp_path / "cut.png", np.full((50, 50), 128, np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_grayscale(truncated)


def test_directories_expand_to_their_sorted_image_files(tmp_path):
    from fmnist_mlp.predict.images import expand_paths

    for name in ["b.PNG", "a.jpg", "c.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    empty = tmp_path / "sub"
    files, problems = expand_paths([tmp_path, tmp_path / "c.txt", empty, tmp_path / "missing"])
    assert files == [tmp_path / "a.jpg", tmp_path / "b.PNG", tmp_path / "c.txt"]
    assert [p for p, _ in problems] == [empty, tmp_path / "missing"]
