"""load_raw (cache of decoded arrays) and make_splits, on small synthetic files through the real code path."""

import numpy as np
import pytest

from fmnist_mlp.data import CLASS_NAMES, RawData, load_raw, make_splits, split_rows, verify_file
from fmnist_mlp.data.decoded import decoded_path
from fmnist_mlp.data.synthetic import synthetic_arrays, write_synthetic_dataset
from fmnist_mlp.errors import ConfigError, DataError


@pytest.fixture
def folder_and_specs(tmp_path):
    specs = write_synthetic_dataset(tmp_path / "source", n_train=1000, n_test=100, seed=3)
    return tmp_path / "source", specs


@pytest.fixture
def raw():
    arrays = synthetic_arrays(n_train=1000, n_test=100, seed=4)
    return RawData(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])


def test_class_names():
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"


def test_load_raw_decodes_then_reads_the_npy_cache(tmp_path, folder_and_specs):
    folder, specs = folder_and_specs
    cache = tmp_path / "cache"
    first = load_raw(cache, [str(folder)], progress=False, specs=specs)
    expected = synthetic_arrays(n_train=1000, n_test=100, seed=3)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(first, key), expected[key])
    assert first.train_images.shape == (1000, 28, 28) and first.train_images.dtype == np.uint8
    # Without the .gz files and without any source, only the .npy cache can answer.
    for spec in specs:
        (cache / spec.filename).unlink()
        assert decoded_path(cache, spec).is_file()
    second = load_raw(cache, [], progress=False, specs=specs)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def _cache_with_a_damaged_file(tmp_path, folder, specs, index):
    """A filled cache whose decoded arrays are gone and whose file ``index`` was damaged since."""
    cache = tmp_path / "cache"
    load_raw(cache, [str(folder)], progress=False, specs=specs)
    for spec in specs:
        decoded_path(cache, spec).unlink()
    (cache / specs[index].filename).write_bytes(b"\x1f\x8bdamaged")
    return cache


def test_damaged_cache_file_is_fetched_again(tmp_path, folder_and_specs):
    folder, specs = folder_and_specs
    cache = _cache_with_a_damaged_file(tmp_path, folder, specs, 1)
    raw = load_raw(cache, [str(folder)], progress=False, specs=specs)
    verify_file(cache / specs[1].filename, specs[1])
    assert raw.train_labels.shape == (1000,)


def test_damaged_cache_without_a_source_is_a_clear_error(tmp_path, folder_and_specs):
    folder, specs = folder_and_specs
    cache = _cache_with_a_damaged_file(tmp_path, folder, specs, 0)
    with pytest.raises(DataError, match=specs[0].filename):
        load_raw(cache, [], progress=False, specs=specs)


def test_stratified_split_keeps_class_proportions(raw):
    splits = make_splits(raw, val_size=200, split="stratified", seed=0)
    assert splits.val.x.shape == (200, 784) and splits.train.x.shape == (800, 784)
    assert np.bincount(splits.val.y, minlength=10).tolist() == [20] * 10
    assert np.bincount(splits.train.y, minlength=10).tolist() == [80] * 10
    assert splits.train.y.dtype == np.int64 and splits.train.x.flags.c_contiguous


@pytest.mark.parametrize("split", ["stratified", "shuffled"])
def test_folds_partition_the_training_rows_and_leave_validation_alone(raw, split):
    train, val = split_rows(raw.train_labels, val_size=100, split=split, seed=2)
    left_out = []
    for fold in range(3):
        kept, same_val = split_rows(raw.train_labels, val_size=100, split=split, seed=2,
                                    folds=3, fold=fold)
        assert np.array_equal(same_val, val) and np.isin(kept, train).all()
        left_out.append(np.setdiff1d(train, kept))
        if split == "stratified":                   # 90 training images a class: 30 a part
            assert np.bincount(raw.train_labels[left_out[-1]], minlength=10).tolist() == [30] * 10
    assert [part.size for part in left_out] == [300, 300, 300]
    assert np.array_equal(np.sort(np.concatenate(left_out)), train)
    assert make_splits(raw, val_size=100, seed=2, folds=3, fold=1).train.x.shape == (600, 784)
    with pytest.raises(ConfigError, match="data.fold"):
        split_rows(raw.train_labels, val_size=100, seed=2, folds=3, fold=3)


def test_validation_and_training_partition_the_training_images(raw):
    splits = make_splits(raw, val_size=150, split="shuffled", normalize="scale", seed=5)
    pixels = np.rint(np.concatenate([splits.train.x, splits.val.x]) * 255).astype(np.uint8)
    rows = {row.tobytes() for row in pixels}
    assert len(rows) == 1000  # disjoint and complete (random images are all distinct)
    assert rows == {img.tobytes() for img in raw.train_images}


def test_splits_are_seeded(raw):
    a, b = make_splits(raw, seed=7, val_size=100), make_splits(raw, seed=7, val_size=100)
    c = make_splits(raw, seed=8, val_size=100)
    np.testing.assert_array_equal(a.val.x, b.val.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.val.x, c.val.x)


def test_scale_and_standardize(raw):
    scaled = make_splits(raw, val_size=100, normalize="scale")
    assert scaled.train.x.min() >= 0.0 and scaled.train.x.max() <= 1.0
    assert (scaled.mean, scaled.std) == (0.0, 1.0)
    standard = make_splits(raw, val_size=100, normalize="standardize", dtype="float64")
    assert standard.train.x.dtype == np.float64
    assert abs(standard.train.x.mean()) < 1e-9 and abs(standard.train.x.std() - 1.0) < 1e-9
    # Validation and test use the training statistics, not their own.
    np.testing.assert_allclose(standard.test.x, (scaled.test.x - standard.mean) / standard.std, rtol=1e-5, atol=1e-6)


def test_test_split_is_every_test_image_in_order(raw):
    splits = make_splits(raw, val_size=100, normalize="scale")
    np.testing.assert_array_equal(splits.test.y, raw.test_labels)
    np.testing.assert_allclose(splits.test.x[3], raw.test_images[3].reshape(784) / 255, rtol=1e-6)


def test_subset_is_drawn_from_training_after_the_split(raw):
    full = make_splits(raw, val_size=100, seed=1)
    small = make_splits(raw, val_size=100, seed=1, subset=90)
    np.testing.assert_array_equal(small.val.y, full.val.y)
    assert small.train.x.shape == (90, 784)
    assert np.bincount(small.train.y, minlength=10).tolist() == [9] * 10
    val_rows = {row.tobytes() for row in make_splits(raw, val_size=100, seed=1, subset=90, normalize="scale").val.x}
    train_rows = {row.tobytes() for row in make_splits(raw, val_size=100, seed=1, subset=90, normalize="scale").train.x}
    assert not val_rows & train_rows


def test_zero_validation_size(raw):
    splits = make_splits(raw, val_size=0)
    assert splits.val.x.shape == (0, 784) and splits.train.x.shape == (1000, 784)


@pytest.mark.parametrize("kwargs, key", [
    ({"val_size": 1000}, "data.val_size"),
    ({"val_size": -1}, "data.val_size"),
    ({"val_size": 2.5}, "data.val_size"),
    ({"split": "random"}, "data.split"),
    ({"normalize": "minmax"}, "data.normalize"),
    ({"dtype": "float16"}, "model.dtype"),
    ({"subset": 0, "val_size": 100}, "data.subset"),
    ({"subset": 901, "val_size": 100}, "data.subset"),
])
def test_bad_arguments_name_the_key(raw, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        make_splits(raw, **kwargs)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 784), (3000, 784)])
def test_pixel_mean_and_std_come_from_the_exact_byte_histogram(shape):
    """Counted two bytes at a time (odd sizes too), the histogram is the bytes' own, so the
    mean and std are the ones its 256 counts give, bit for bit."""
    from fmnist_mlp.data.dataset import _pixel_mean_std

    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float(counts @ values / counts.sum())
    std = float(counts @ (values - mean) ** 2 / counts.sum()) ** 0.5 or 1.0
    assert _pixel_mean_std(images) == (mean, std)
