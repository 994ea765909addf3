"""Backprop against central finite differences, in float64, for every activation × loss × depth,
with the NumPy layers and with the fused kernels (the ``kernels`` fixture, tests/conftest.py)."""

import itertools

import numpy as np
import pytest

from fmnist_mlp.nn import MLP
from fmnist_mlp.nn.gradcheck import gradient_check, relative_error
from fmnist_mlp.nn.activations import ACTIVATIONS

ACTIVATION_NAMES = ["linear", "sigmoid", "tanh", "relu"]
OUTPUT_LOSSES = [("softmax", "cross_entropy"), ("softmax", "squared_error"),
                 ("sigmoid", "squared_error"), ("linear", "squared_error")]
DEPTHS = {0: [], 1: [6], 2: [6, 5]}
TOLERANCE = 1e-6


def _hidden_preactivations(model, x):
    """Inputs of every hidden activation, to keep ReLU's away from its kink: z = aW + b, or
    with batch normalisation its output γ ẑ + β (batch statistics, as in training)."""
    zs, a = [], x
    for i in range(len(model.hidden)):
        z = a @ model.params[f"layer{i}.W"]
        if model.batchnorm:
            xhat = (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + model.bn_eps)
            z = model.params[f"layer{i}.gamma"] * xhat + model.params[f"layer{i}.beta"]
        else:
            z = z + model.params[f"layer{i}.b"]
        zs.append(z)
        a = np.empty_like(z)
        ACTIVATIONS[model.activation].forward(z, a)
    return zs


def _checkable_problem(seed, **kwargs):
    """A tiny float64 model and batch whose hidden pre-activations are all ≥ 1e-3 from 0."""
    for attempt in range(50):
        rng = np.random.default_rng(seed * 100 + attempt)
        model = MLP(input_size=7, num_classes=4, dtype="float64", seed=seed * 100 + attempt,
                    **kwargs)
        for name, b in model.params.items():       # non-zero biases exercise db fully
            if name.endswith(".b"):
                b[...] = rng.normal(0, 0.1, b.shape)
            elif name.endswith(".gamma"):           # and γ ≠ 1, β ≠ 0 exercise dγ, dβ
                b[...] = rng.uniform(0.5, 1.5, b.shape)
            elif name.endswith(".beta"):
                b[...] = rng.normal(0, 0.3, b.shape)
        x = rng.normal(size=(5, 7))
        y = rng.integers(0, 4, size=5)
        if all(np.min(np.abs(z)) > 1e-3 for z in _hidden_preactivations(model, x)):
            return model, x, y
    raise AssertionError("could not draw a problem away from the ReLU kink")


@pytest.mark.parametrize("activation,output_loss,depth",
                         list(itertools.product(ACTIVATION_NAMES, OUTPUT_LOSSES, DEPTHS)))
def test_backprop_matches_finite_differences(activation, output_loss, depth, kernels):
    output, loss = output_loss
    model, x, y = _checkable_problem(depth + 1, hidden=DEPTHS[depth], activation=activation,
                                     output=output, loss=loss, kernels=kernels)
    errors = gradient_check(model, x, y)
    assert set(errors) == set(model.params)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("extra", [
    {"label_smoothing": 0.1},
    {"l2": 0.05},
    {"dropout": 0.3},
    {"dropout": 0.5, "l2": 0.01, "label_smoothing": 0.2, "loss": "squared_error"},
    {"input_dropout": 0.3},
    {"input_dropout": 0.2, "dropout": 0.4, "l2": 0.01},
])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_backprop_with_regularisers_matches_finite_differences(extra, activation, kernels):
    kwargs = {"hidden": [6, 5], "activation": activation, "kernels": kernels, **extra}
    model, x, y = _checkable_problem(7, **kwargs)
    errors = gradient_check(model, x, y)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("activation,depth,dropout",
                         list(itertools.product(ACTIVATION_NAMES, [1, 2], [0.0, 0.3])))
def test_batchnorm_backprop_matches_finite_differences(activation, depth, dropout, kernels):
    """Training mode (batch statistics): every row's gradient also flows through μ_B and σ²_B."""
    model, x, y = _checkable_problem(11 + depth, hidden=DEPTHS[depth], activation=activation,
                                     dropout=dropout, batchnorm=True, kernels=kernels)
    running = {k: v.copy() for k, v in model.buffers.items()}
    errors = gradient_check(model, x, y)
    assert set(errors) == set(model.params)
    assert {k for k in errors if k.endswith((".gamma", ".beta"))} == {
        f"layer{i}.{p}" for i in range(depth) for p in ("gamma", "beta")}
    assert max(errors.values()) < TOLERANCE, errors
    for name, value in running.items():                 # the check leaves the model as it was
        np.testing.assert_array_equal(model.buffers[name], value)


def test_batchnorm_with_other_losses_and_l2_matches_finite_differences():
    model, x, y = _checkable_problem(5, hidden=[6, 5], activation="sigmoid", output="sigmoid",
                                     loss="squared_error", l2=0.05, batchnorm=True)
    errors = gradient_check(model, x, y)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("extra", [
    {"activation": "relu"},
    {"activation": "tanh", "dropout": 0.3, "input_dropout": 0.2, "l2": 0.01},
    {"activation": "relu", "batchnorm": True, "dropout": 0.3},
    {"activation": "sigmoid", "output": "sigmoid", "loss": "squared_error", "label_smoothing": 0.1},
])
def test_feature_layout_backprop_matches_finite_differences(extra, kernels):
    """The feature layout stores the first weights column by column: the check must perturb the
    model's own entries, and backprop must be right in that layout too."""
    model, x, y = _checkable_problem(21, hidden=[6, 5], layout="feature", kernels=kernels,
                                     **extra)
    assert model.params["layer0.W"].flags.f_contiguous
    errors = gradient_check(model, x, y)
    assert set(errors) == set(model.params)
    assert max(errors.values()) < TOLERANCE, errors


def test_gradient_check_detects_a_wrong_gradient():
    """The checker itself must fail when backprop is wrong (here: a corrupted bias gradient)."""
    model, x, y = _checkable_problem(3, hidden=[6], activation="tanh")

    original = model.loss_and_grad

    def broken(xb, yb, rng=None, backward=True, targets=None):
        out = original(xb, yb, rng, backward, targets=targets)
        model.grads["layer0.b"] *= 1.01
        return out

    model.loss_and_grad = broken
    errors = gradient_check(model, x, y)
    assert errors["layer0.b"] > 1e-3
    assert errors["layer1.W"] < TOLERANCE


def test_gradient_check_refuses_float32():
    with pytest.raises(ValueError, match="float64"):
        gradient_check(MLP(input_size=3, hidden=[], num_classes=2), np.zeros((1, 3)), np.array([0]))


def test_relative_error_is_scale_relative():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, a + np.array([0, 0, 6e-6])) == pytest.approx(1e-6, rel=1e-5)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0


@pytest.mark.parametrize("output_loss,depth,extra", [
    (("softmax", "cross_entropy"), 0, {}),
    (("softmax", "cross_entropy"), 2, {"dropout": 0.3, "l2": 0.01}),
    (("softmax", "squared_error"), 1, {"batchnorm": True}),
    (("sigmoid", "squared_error"), 2, {"label_smoothing": 0.1}),
    (("linear", "squared_error"), 1, {}),
])
def test_distillation_targets_replace_the_one_hot_targets(output_loss, depth, extra):
    """``targets`` (N, K) is the distribution the loss head compares with; backprop through it
    matches finite differences, and the loss is the one of those targets, not of the labels."""
    output, loss = output_loss
    model, x, y = _checkable_problem(31 + depth, hidden=DEPTHS[depth], activation="tanh",
                                     output=output, loss=loss, **extra)
    t = np.random.default_rng(depth).uniform(size=(len(y), 4)) ** 2
    targets = t / t.sum(axis=1, keepdims=True)
    errors = gradient_check(model, x, y, targets=targets)
    assert max(errors.values()) < TOLERANCE, errors
    one_hot = np.eye(4)[y]
    assert model.loss_and_grad(x, y, targets=one_hot, rng=np.random.default_rng(0))[0] != \
        model.loss_and_grad(x, y, targets=targets, rng=np.random.default_rng(0))[0]
    if not extra.get("label_smoothing"):    # one-hot targets are the labels' own loss
        assert model.loss_and_grad(x, y, targets=one_hot, rng=np.random.default_rng(0)) == \
            model.loss_and_grad(x, y, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="targets"):
        model.loss_and_grad(x, y, targets=targets[:, :3])
