"""Memory layouts change where numbers lie, never which numbers: gradients, updates and
checkpoints must agree between ``row`` and ``feature``."""

import numpy as np
import pytest

from fmnist_mlp.nn import MLP
from fmnist_mlp.nn.workspace import FEATURE_LAYOUT_MIN_WIDTH, resolve_layout
from fmnist_mlp.nn.optim import make_optimizer


def test_auto_chooses_feature_for_wide_first_layers_only():
    assert resolve_layout("auto", [FEATURE_LAYOUT_MIN_WIDTH, 10]) == "feature"
    assert resolve_layout("auto", [FEATURE_LAYOUT_MIN_WIDTH - 1, 4096]) == "row"
    assert resolve_layout("auto", []) == "row"
    assert resolve_layout("row", [4096]) == "row"
    assert resolve_layout("feature", [8]) == "feature"
    with pytest.raises(ValueError, match="layout"):
        MLP(hidden=[8], layout="diagonal")


def test_feature_layout_stores_activations_unit_by_unit_and_the_first_weights_by_column():
    model = MLP(input_size=12, hidden=[6, 5], num_classes=3, layout="feature", dropout=0.2,
                batchnorm=True)
    assert model.params["layer0.W"].flags.f_contiguous
    assert not model.params["layer0.W"].flags.c_contiguous
    assert model.grads["layer0.W"].flags.f_contiguous
    assert model.params["layer1.W"].flags.c_contiguous
    x = np.random.default_rng(0).normal(size=(9, 12)).astype(np.float32)
    model.loss_and_grad(x, np.zeros(9, dtype=int))
    for layer in model._workspace.for_batch(9, training=True).layers:
        for array in (layer.h, layer.dh, layer.mask, layer.dropped, layer.xhat):
            assert array.shape[0] == 9 and array.flags.f_contiguous and not array.flags.c_contiguous
    for layer in model._workspace.for_batch(9, training=False).layers:    # evaluation: rows
        assert layer.h.flags.c_contiguous
    assert model.spec()["layout"] == "feature"


def _train(layout, name, steps=4):
    model = MLP(input_size=30, hidden=[16, 8], num_classes=4, dtype="float64", seed=3,
                batchnorm=True, layout=layout)
    opt = make_optimizer(name, model.params, lr=0.05, weight_decay=0.01)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 30)), rng.integers(0, 4, 64)
    for step in range(steps):
        batch = slice(16 * step, 16 * step + 16)
        model.loss_and_grad(x[batch], y[batch])
        opt.step(model.params, model.grads, 0.05 / (step + 1))
    return model, opt, x


@pytest.mark.parametrize("name", ["momentum", "rmsprop", "adamw"])
def test_row_and_feature_layouts_train_to_the_same_parameters(name):
    """Same seed and data: the layouts may differ only by the rounding of sums over the batch.
    A state buffer paired with the wrong parameters would differ by far more. (Without dropout:
    its masks are drawn in memory order, so each layout draws different, equally random ones.)"""
    row, row_opt, x = _train("row", name)
    feature, feature_opt, _ = _train("feature", name)
    assert feature_opt._layout == feature.params.layout       # the flat-array update ran
    for key, value in row.state_dict().items():
        np.testing.assert_allclose(feature.state_dict()[key], value, rtol=1e-9, atol=1e-12)
    for key, value in row_opt.state_dict().items():
        np.testing.assert_allclose(feature_opt.state_dict()[key], value, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(feature.logits(x), row.logits(x), rtol=1e-9, atol=1e-12)


def test_optimizer_state_mirrors_the_parameter_layout():
    model = MLP(input_size=12, hidden=[6], num_classes=3, layout="feature")
    opt = make_optimizer("adam", model.params, lr=0.01)
    for slot in ("m", "v"):
        for key, param in model.params.items():
            state = opt.state[slot][key]
            assert state.shape == param.shape
            assert state.flags.c_contiguous == param.flags.c_contiguous


def test_a_checkpoint_moves_between_layouts():
    feature, _, x = _train("feature", "adam")
    row = MLP(**{**feature.spec(), "layout": "row"})
    row.load_state_dict(feature.state_dict())
    np.testing.assert_array_equal(row.logits(x), feature.logits(x))
