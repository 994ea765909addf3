"""The real Fashion-MNIST files from Debian's dataset-fashion-mnist package, through the real code path.

Skipped where /usr/share/datasets/fashion-mnist is absent, except under CI=true, where the package
is installed on purpose and its absence is a failure.
"""


import numpy as np
import pytest

from conftest import require_or_skip

from fmnist_mlp.data import DEBIAN_DIR, FASHION_MNIST_FILES, load_raw, make_splits, verify_file

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    if not DEBIAN_DIR.is_dir():
        require_or_skip(f"{DEBIAN_DIR} is absent (apt-get install dataset-fashion-mnist)")
    return tmp_path_factory.mktemp("real-cache")


def test_real_files_load_and_verify(real_cache):
    raw = load_raw(real_cache, [str(DEBIAN_DIR)], progress=False)
    for spec in FASHION_MNIST_FILES:
        verify_file(real_cache / spec.filename, spec)  # the SHA-256 of the decompressed contents
    assert raw.train_images.shape == (60000, 28, 28) and raw.train_images.dtype == np.uint8
    assert raw.train_labels.shape == (60000,)
    assert raw.test_images.shape == (10000, 28, 28)
    assert raw.test_labels.shape == (10000,)
    assert np.bincount(raw.train_labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(raw.test_labels, minlength=10).tolist() == [1000] * 10

    again = load_raw(real_cache, [], progress=False)  # from the decoded .npy cache alone
    for first, second in zip(raw, again):
        np.testing.assert_array_equal(first, second)

    splits = make_splits(again)
    assert splits.train.x.shape == (55000, 784) and splits.val.x.shape == (5000, 784)
    assert np.bincount(splits.val.y, minlength=10).tolist() == [500] * 10
    assert 0.2 < splits.mean < 0.4 and 0.3 < splits.std < 0.4
