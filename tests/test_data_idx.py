"""The IDX reader: round trips, and a clear DataError naming the file for every kind of damage."""

import gzip
import struct

import numpy as np
import pytest

from fmnist_mlp.data.idx import encode_idx, read_images, read_labels, write_idx
from fmnist_mlp.errors import DataError


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels():
    return np.array([0, 9, 3, 3, 1, 2, 8], dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path, images, labels, compress):
    image_file = write_idx(tmp_path / "images.gz", images, compress=compress)
    label_file = write_idx(tmp_path / "labels.gz", labels, compress=compress)
    np.testing.assert_array_equal(read_images(image_file), images)
    np.testing.assert_array_equal(read_labels(label_file), labels)
    assert read_images(image_file).dtype == np.uint8


def test_header_is_big_endian_idx(images):
    data = encode_idx(images)
    assert data[:4] == b"\x00\x00\x08\x03"           # magic 2051
    assert struct.unpack(">3I", data[4:16]) == (7, 28, 28)
    assert len(data) == 16 + 7 * 28 * 28


def _expect_error(path, reader, *fragments):
    with pytest.raises(DataError) as caught:
        reader(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message
    return message


def test_wrong_magic(tmp_path, images):
    data = bytearray(encode_idx(images))
    data[2] = 0x0D  # dtype code of float32 instead of unsigned bytes
    path = tmp_path / "float.idx"
    path.write_bytes(bytes(data))
    _expect_error(path, read_images, "magic number")


def test_labels_file_read_as_images(tmp_path, labels):
    path = write_idx(tmp_path / "labels.gz", labels)
    _expect_error(path, read_images, "magic number 2049", "images")


def test_images_read_as_labels(tmp_path, images):
    path = write_idx(tmp_path / "images.gz", images)
    _expect_error(path, read_labels, "magic number 2051", "labels")


@pytest.mark.parametrize("length", [0, 3, 9])
def test_truncated_header(tmp_path, images, length):
    path = tmp_path / "short.idx"
    path.write_bytes(encode_idx(images)[:length])
    _expect_error(path, read_images, "truncated IDX header")


def test_truncated_data(tmp_path, images):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(encode_idx(images)[:-100]))
    _expect_error(path, read_images, "truncated data", "5488")


def test_trailing_bytes(tmp_path, labels):
    path = tmp_path / "long.idx"
    path.write_bytes(encode_idx(labels) + b"\x00\x01")
    _expect_error(path, read_labels, "trailing bytes")


def test_label_out_of_range(tmp_path, labels):
    bad = labels.copy()
    bad[4] = 10
    path = write_idx(tmp_path / "labels.gz", bad)
    _expect_error(path, read_labels, "label 10 at index 4", "out of range")


def test_images_of_wrong_size(tmp_path):
    path = write_idx(tmp_path / "small.gz", np.zeros((3, 27, 28), dtype=np.uint8))
    _expect_error(path, read_images, "28 x 28", "27 x 28")


def test_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"<html>404 Not Found</html>")
    _expect_error(path, read_images, "not a gzip file")


def test_truncated_gzip(tmp_path, images):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(encode_idx(images))[:500])
    _expect_error(path, read_images, "corrupt or truncated gzip")


def test_corrupt_gzip(tmp_path, images):
    data = bytearray(gzip.compress(encode_idx(images)))
    data[20:60] = bytes(40)  # zero a stretch of the deflate stream
    path = tmp_path / "corrupt.gz"
    path.write_bytes(bytes(data))
    _expect_error(path, read_images, "gzip")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "absent.gz", read_labels, "cannot read")
