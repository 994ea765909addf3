"""Batch augmentation: flips mirror, shifts translate and fill with the background, mixup mixes."""

import numpy as np
import pytest

from fmnist_mlp.data.augment import alternating_flip, make_augmenter, mixup, random_flip, random_shift


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.float32)
    x[:, 8:20, 10:16] = rng.uniform(0.5, 1.0, size=(n, 12, 6))  # an off-centre blob on background 0
    return x.reshape(n, 784)


def test_flip_mirrors_about_half_of_the_images():
    x = _images(200)
    original = x.copy()
    random_flip(x, np.random.default_rng(1))
    imgs, orig = x.reshape(-1, 28, 28), original.reshape(-1, 28, 28)
    flipped = [np.array_equal(a, b[:, ::-1]) for a, b in zip(imgs, orig)]
    kept = [np.array_equal(a, b) for a, b in zip(imgs, orig)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_consecutive_epochs():
    original = _images(64).reshape(-1, 28, 28)
    rows = np.random.default_rng(3).permutation(1000)[:64]     # a shuffled batch's row numbers
    mirrored = []
    for epoch in range(4):
        x = original.copy().reshape(64, 784)
        alternating_flip(x, rows, epoch)
        imgs = x.reshape(-1, 28, 28)
        flipped = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(imgs, original)])
        kept = np.array([np.array_equal(a, b) for a, b in zip(imgs, original)])
        assert np.all(flipped != kept)
        mirrored.append(flipped)
    for a, b in zip(mirrored, mirrored[1:]):
        np.testing.assert_array_equal(a, ~b)                     # every image, every other epoch
    np.testing.assert_array_equal(mirrored[0], rows % 2 == 0)
    aug = make_augmenter(flip=True, alternate_flip=True)
    x = original.copy().reshape(64, 784)
    aug(x, np.random.default_rng(0), rows, 1)
    np.testing.assert_array_equal(x.reshape(-1, 28, 28)[rows % 2 == 1],
                                  original[rows % 2 == 1][:, :, ::-1])
    with pytest.raises(ValueError, match="alternate_flip"):
        make_augmenter(flip=False, alternate_flip=True)


def test_shift_translates_and_fills_with_background():
    x = _images(50)
    original = x.copy().reshape(-1, 28, 28)
    random_shift(x, np.random.default_rng(2), max_shift=2)
    imgs = x.reshape(-1, 28, 28)
    for img, orig in zip(imgs, original):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(img, np.roll(orig, (dy, dx), axis=(0, 1)))]
        assert len(matches) == 1       # the blob is far from the border, so roll == shift
    assert x.sum() == pytest.approx(original.sum(), rel=1e-6)   # no pixel of the blob is lost
    assert len({tuple(np.argwhere(i > 0)[0]) for i in imgs}) > 5


def test_make_augmenter_none_and_determinism():
    assert make_augmenter(False, 0) is None
    aug = make_augmenter(True, 2)
    a, b = _images(16), _images(16)
    aug(a, np.random.default_rng(7), np.arange(16), 0)
    aug(b, np.random.default_rng(7), np.arange(16), 0)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="shift"):
        make_augmenter(False, -1)


def test_flip_averaged_model_averages_an_image_and_its_mirror():
    from fmnist_mlp.data.augment import mirror
    from fmnist_mlp.nn import MLP
    from fmnist_mlp.rundir.flips import FlipAveraged

    model = MLP(hidden=[32], seed=0, dtype="float64")
    x = _images(50).astype(np.float64)
    y = np.arange(50) % 10
    tta = FlipAveraged(model)
    expected = 0.5 * (model.forward(x) + model.forward(mirror(x)))
    np.testing.assert_allclose(tta.forward(x), expected, rtol=1e-12)
    np.testing.assert_array_equal(tta.predict(x), expected.argmax(axis=1))
    loss, acc = tta.evaluate(x, y, batch_size=16)            # chunked like the real scorer
    assert loss == pytest.approx(-np.mean(np.log(expected[np.arange(50), y])), rel=1e-12)
    assert acc == np.mean(expected.argmax(axis=1) == y)
    # Not an MLP in disguise: the network is .model, and the logits are averaged too.
    assert tta.model is model and not hasattr(tta, "params") and not hasattr(tta, "hidden")
    np.testing.assert_allclose(tta.logits(x), np.log(expected), rtol=1e-12)
    symmetric = (x + mirror(x)) / 2                          # a mirror-symmetric image: no change
    np.testing.assert_allclose(tta.forward(symmetric), model.forward(symmetric), rtol=1e-12)


def test_cutout_blanks_one_clipped_square_per_image_with_the_background():
    from fmnist_mlp.data.augment import random_cutout

    x = np.random.default_rng(0).uniform(0.5, 1.0, size=(300, 784)).astype(np.float32)
    x[0, :] = 0.0                  # one blank image sets the background value (the batch minimum)
    original = x.copy()
    random_cutout(x, np.random.default_rng(1), size=8)
    for img, orig in zip(x.reshape(-1, 28, 28)[1:], original.reshape(-1, 28, 28)[1:]):
        changed = np.argwhere(img != orig)
        assert np.all(img[img != orig] == 0.0)
        rows, cols = np.unique(changed[:, 0]), np.unique(changed[:, 1])
        assert len(changed) == len(rows) * len(cols)                 # a rectangle ...
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8           # ... the square, clipped
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    blanked = (x != original).reshape(-1, 784)[1:].sum(axis=1)
    assert blanked.mean() > 40 and np.any(blanked == 64)


def test_mixup_mixes_images_and_targets_with_one_weight_and_one_partner():
    rng = np.random.default_rng(7)
    batch, labels = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    targets = np.eye(3)[labels]
    mixed_x, mixed_t = batch.copy(), targets.copy()
    mixup(mixed_x, mixed_t, np.random.default_rng(3), 0.4)
    # The same draws by hand: λ ~ Beta(0.4, 0.4), then the partners.
    draws = np.random.default_rng(3)
    lam, partner = draws.beta(0.4, 0.4), draws.permutation(6)
    assert 0.0 < lam < 1.0 and not np.array_equal(partner, np.arange(6))
    np.testing.assert_allclose(mixed_x, lam * batch + (1 - lam) * batch[partner])
    np.testing.assert_allclose(mixed_t, lam * targets + (1 - lam) * targets[partner])
    np.testing.assert_allclose(mixed_t.sum(axis=1), 1.0)
    # Each row's own label keeps weight λ (plus 1 − λ when its partner shares the label).
    own = mixed_t[np.arange(6), labels]
    np.testing.assert_allclose(own, lam + (1 - lam) * (labels[partner] == labels))


def test_mixup_returns_its_weight_and_partners():
    batch, targets = np.ones((4, 3)), np.eye(4)
    lam, partner = mixup(batch, targets, np.random.default_rng(3), 0.4)
    draws = np.random.default_rng(3)
    assert lam == draws.beta(0.4, 0.4)
    np.testing.assert_array_equal(partner, draws.permutation(4))


def test_training_accuracy_under_mixup_counts_the_dominant_label():
    # A fixed net (the schedule gives learning rate 0; no dropout or batch norm, so training mode scores as
    # evaluation does) and one batch of the whole set: the loop's count is rebuilt by hand.
    from fmnist_mlp.config.plan import Engine, make_streams
    from fmnist_mlp.nn import MLP
    from fmnist_mlp.nn.losses import one_hot_targets
    from fmnist_mlp.nn.optim import make_optimizer
    from fmnist_mlp.training.loop import LoopData, LoopSettings, fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = MLP(input_size=12, hidden=[16], num_classes=3, seed=0)
    y = model.predict(x)        # labels the net gets right, so the count tells which label is used
    seen = []

    class Record:
        def on_epoch_end(self, event): seen.append(event.metrics["train_acc"])

    seed, alpha = 1, 0.4
    fit(Engine(model, make_optimizer("sgd", model.params, lr=0.1), lambda step: 0.0),
        LoopData(x, y, x, y), LoopSettings(epochs=1, batch_size=64, mixup=alpha), make_streams(seed),
        callbacks=[Record()])
    streams = make_streams(seed)
    order = streams["shuffle"].permutation(64)
    xb, yb = x[order], y[order]
    lam, partner = mixup(xb, one_hot_targets(yb, 3, 0.0, xb.dtype), streams["augment"], alpha)
    assert lam < 0.5                       # this seed's draw: the partner's label dominates
    predicted = model.predict(xb)
    assert seen == [np.mean(predicted == yb[partner])]
    assert seen[0] != np.mean(predicted == yb)
