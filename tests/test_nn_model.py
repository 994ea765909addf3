"""Behaviour of the MLP: stability, the lecture's XOR example, learning, dtypes, reproducibility."""

import numpy as np
import pytest

from fmnist_mlp.nn import MLP
from fmnist_mlp.nn.losses import softmax_cross_entropy, one_hot_targets
from fmnist_mlp.nn.optim import make_optimizer

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0])


def _train_full_batch(model, x, y, steps, lr, name="adam"):
    opt = make_optimizer(name, model.params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = model.loss_and_grad(x, y)
        opt.step(model.params, model.grads)
        losses.append(loss)
    return losses


def test_softmax_cross_entropy_is_finite_for_huge_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]])
    target = one_hot_targets(np.array([0, 1, 2]), 3, 0.0, np.float64)
    loss, dlogits = softmax_cross_entropy(logits, target)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    # example 0: right with certainty (loss 0); example 1: wrong by 2e4;
    # example 2: two tied logits 2e4 above the true one (loss 2e4 + log 2)
    assert loss == pytest.approx((0 + 2e4 + 2e4 + np.log(2)) / 3, rel=1e-12)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-12)


def test_softmax_cross_entropy_float32_huge_logits_through_the_model():
    model = MLP(input_size=3, hidden=[], num_classes=3)
    model.params["layer0.W"][...] = np.array([[1e4, -1e4, 0], [0, 1e4, -1e4], [-1e4, 0, 1e4]])
    x = np.eye(3, dtype=np.float32)
    loss, _ = model.loss_and_grad(x, np.array([2, 0, 1]))
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in model.grads.values())
    assert np.isfinite(model.evaluate(x, np.array([2, 0, 1]))[0])


def test_xor_is_learned_with_one_hidden_layer():
    model = MLP(input_size=2, hidden=[8], num_classes=2, activation="tanh", dtype="float64", seed=0)
    _train_full_batch(model, XOR_X, XOR_Y, steps=500, lr=0.05)
    assert model.evaluate(XOR_X, XOR_Y)[1] == 1.0
    np.testing.assert_array_equal(model.predict(XOR_X), XOR_Y)


def test_xor_is_learned_by_the_lectures_sigmoid_squared_error_net():
    model = MLP(input_size=2, hidden=[4], num_classes=2, activation="sigmoid", output="sigmoid",
                loss="squared_error", dtype="float64", seed=1)
    _train_full_batch(model, XOR_X, XOR_Y, steps=3000, lr=0.05)
    np.testing.assert_array_equal(model.predict(XOR_X), XOR_Y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_cannot_be_learned_without_a_hidden_layer(seed):
    model = MLP(input_size=2, hidden=[], num_classes=2, dtype="float64", seed=seed)
    _train_full_batch(model, XOR_X, XOR_Y, steps=2000, lr=0.05)
    assert model.evaluate(XOR_X, XOR_Y)[1] <= 0.75


def _blobs(n, seed=0, dims=784, classes=10):
    """Ten noisy class templates: a learnable, non-trivial stand-in for images."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(0, 1, size=(classes, dims))
    y = rng.integers(0, classes, size=n)
    x = templates[y] * 0.4 + rng.normal(0, 1, size=(n, dims))
    return x.astype(np.float32), y


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("momentum", 0.02), ("nesterov", 0.02),
                                          ("adagrad", 0.02), ("rmsprop", 1e-3), ("adam", 1e-3)])
def test_minibatch_training_drives_loss_down_and_accuracy_up(optimizer, lr):
    x, y = _blobs(400, seed=1)
    model = MLP(hidden=[32], seed=0)
    opt = make_optimizer(optimizer, model.params, lr=lr)
    rng = np.random.default_rng(0)
    epoch_losses = []
    for _ in range(8):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), 50):
            idx = order[start:start + 50]
            loss, _ = model.loss_and_grad(x[idx], y[idx])
            opt.step(model.params, model.grads)
            total += loss * len(idx)
        epoch_losses.append(total / len(x))
    assert epoch_losses[-1] < 0.5 * epoch_losses[0]
    assert sum(b > a for a, b in zip(epoch_losses, epoch_losses[1:])) <= 1   # monotone-ish
    assert model.evaluate(x, y)[1] > 0.8                                    # chance is 0.1


@pytest.mark.parametrize("batchnorm", [False, True])
def test_float32_stays_float32_and_float64_stays_float64(batchnorm):
    for dtype in ("float32", "float64"):
        model = MLP(hidden=[16], dropout=0.2, dtype=dtype, batchnorm=batchnorm)
        opt = make_optimizer("adam", model.params, lr=1e-3)
        x, y = _blobs(32)
        model.loss_and_grad(x, y)
        opt.step(model.params, model.grads)
        arrays = [*model.params.values(), *model.grads.values(), *opt.state_dict().values(),
                  *model.buffers.values()]
        assert len(model.buffers) == (2 if batchnorm else 0)
        assert all(a.dtype == np.dtype(dtype) for a in arrays if a.ndim > 0)
        assert model.forward(x).dtype == np.dtype(dtype)


def test_same_seed_same_weights_and_dropout_does_not_change_init():
    a, b = MLP(hidden=[16, 8], seed=5), MLP(hidden=[16, 8], seed=5, dropout=0.5)
    c = MLP(hidden=[16, 8], seed=6)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["layer0.W"], c.params["layer0.W"])


def test_init_scales_suit_the_activation():
    he = MLP(input_size=784, hidden=[1000], activation="relu", seed=0).params["layer0.W"]
    glorot = MLP(input_size=784, hidden=[1000], activation="tanh", seed=0).params["layer0.W"]
    assert he.std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)
    assert glorot.std() == pytest.approx(np.sqrt(2 / (784 + 1000)), rel=0.02)
    assert np.all(MLP(hidden=[4]).params["layer0.b"] == 0)


@pytest.mark.parametrize("kwargs", [{"dropout": 0.5}, {"input_dropout": 0.3}])
def test_dropout_is_active_only_in_training(kwargs):
    x, y = _blobs(64)
    model = MLP(hidden=[64], seed=0, **kwargs)
    first = model.loss_and_grad(x, y)[0]
    second = model.loss_and_grad(x, y)[0]
    assert first != second                                  # fresh masks each step
    np.testing.assert_array_equal(model.forward(x), model.forward(x))
    same_rng = [model.loss_and_grad(x, y, rng=np.random.default_rng(3))[0] for _ in range(2)]
    assert same_rng[0] == same_rng[1]


def test_from_config_spec_and_state_round_trip():
    config = {"seed": 3, "model": {"hidden": [12], "activation": "sigmoid", "output": "sigmoid",
                                   "dropout": 0.1, "dtype": "float64"},
              "loss": {"name": "squared_error", "l2": 1e-4}}
    model = MLP.from_config(config)
    assert model.hidden == [12] and model.activation == "sigmoid" and model.l2 == 1e-4
    clone = MLP(**model.spec())
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], clone.params[k])
    model.params["layer0.W"] += 1.0
    clone.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(clone.params["layer0.W"], model.params["layer0.W"])
    with pytest.raises(ValueError, match="shape"):
        clone.load_state_dict({**model.state_dict(), "layer0.b": np.zeros(3)})
    with pytest.raises(ValueError, match="missing"):
        clone.load_state_dict({"layer0.W": model.params["layer0.W"]})


def test_zero_hidden_layers_is_logistic_regression():
    model = MLP(hidden=[], seed=0)
    assert list(model.params) == ["layer0.W", "layer0.b"]
    assert model.params["layer0.W"].shape == (784, 10)
    x, _ = _blobs(5)
    np.testing.assert_allclose(model.forward(x).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kwargs,argument", [
    ({"activation": "softplus"}, "activation"),
    ({"hidden": [0]}, "hidden"),
    ({"dropout": 1.0}, "dropout"),
    ({"output": "sigmoid"}, "loss"),
    ({"dtype": "float16"}, "dtype"),
    ({"l2": -1.0}, "l2"),
    ({"input_dropout": -0.1}, "input_dropout"),
    ({"batchnorm": 3}, "batchnorm"),
    ({"batchnorm": True, "bn_momentum": 1.5}, "bn_momentum"),
    ({"batchnorm": True, "bn_eps": 0.0}, "bn_eps"),
    ({"layout": "diagonal"}, "layout"),
])
def test_invalid_arguments_are_value_errors_naming_the_argument(kwargs, argument):
    """Programming errors: configs are validated (with one-line messages) before the engine."""
    with pytest.raises(ValueError, match=f"^{argument}: "):
        MLP(**kwargs)


@pytest.mark.parametrize("layout", ["row", "feature"])
@pytest.mark.parametrize("dropout", [0.1, 0.5, 0.8])
def test_dropout_drops_the_right_fraction_and_keeps_the_expected_activation(dropout, layout):
    model = MLP(input_size=20, hidden=[1000], num_classes=3, dropout=dropout, seed=0,
                layout=layout)
    # 2e6 units: the kept fraction's standard error is under 0.0004 and the activation
    # ratio's under 0.003, so the tolerances below are several standard errors wide.
    x = np.random.default_rng(0).normal(size=(2000, 20)).astype(np.float32)
    model.loss_and_grad(x, np.zeros(2000, dtype=int), rng=np.random.default_rng(1))
    layer = model._workspace.for_batch(2000, training=True).layers[0]
    h, dropped = layer.h, layer.dropped
    active = h > 0
    kept = dropped[active] != 0
    assert kept.mean() == pytest.approx(1 - dropout, abs=0.003)
    # inverted dropout: the kept units are scaled so the expected activation is unchanged
    assert dropped.sum() / h.sum() == pytest.approx(1.0, abs=0.01)


# ------------------------------------------------------------------------- batch normalisation


def _bn_model(**kwargs):
    return MLP(input_size=4, hidden=[8], num_classes=3, batchnorm=True, dtype="float64",
               seed=0, **kwargs)


def test_batchnorm_layers_have_gamma_beta_and_running_statistics_not_a_bias():
    model = MLP(hidden=[16, 8], batchnorm=True)
    assert list(model.params) == ["layer0.W", "layer0.gamma", "layer0.beta", "layer1.W",
                                  "layer1.gamma", "layer1.beta", "layer2.W", "layer2.b"]
    assert np.all(model.params["layer0.gamma"] == 1) and np.all(model.params["layer0.beta"] == 0)
    assert set(model.buffers) == {"layer0.running_mean", "layer0.running_var",
                                  "layer1.running_mean", "layer1.running_var"}
    assert not set(model.buffers) & set(model.params)
    assert np.all(model.buffers["layer1.running_var"] == 1)
    assert MLP(hidden=[16]).buffers == {}


def test_running_statistics_follow_the_exponential_average_of_the_batch_statistics():
    model = _bn_model(bn_momentum=0.25)
    x = np.random.default_rng(0).normal(5, 3, size=(10, 4))
    z = x @ model.params["layer0.W"]
    model.loss_and_grad(x, np.zeros(10, dtype=int))
    np.testing.assert_allclose(model.buffers["layer0.running_mean"], 0.25 * z.mean(axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(model.buffers["layer0.running_var"],   # unbiased, as PyTorch
                               0.75 * 1.0 + 0.25 * z.var(axis=0, ddof=1), rtol=1e-12)


def test_running_statistics_approach_those_of_z_and_evaluation_uses_them():
    model = _bn_model()
    rng = np.random.default_rng(1)
    W = model.params["layer0.W"].copy()                   # no optimiser steps: W stays fixed
    for _ in range(150):
        model.loss_and_grad(rng.normal(5, 3, size=(256, 4)), np.zeros(256, dtype=int))
    np.testing.assert_array_equal(model.params["layer0.W"], W)
    # z = x W with x ~ N(5, 3²) i.i.d.: E z = 5·Σ_d W_d, Var z = 9·Σ_d W_d²
    mean, var = 5 * W.sum(axis=0), 9 * (W ** 2).sum(axis=0)
    # ~19 batches' worth of averaging (momentum 0.1): standard errors ≈ 0.015 σ and 2 % of σ²
    assert np.max(np.abs(model.buffers["layer0.running_mean"] - mean) / np.sqrt(var)) < 0.06
    np.testing.assert_allclose(model.buffers["layer0.running_var"], var, rtol=0.1)

    # Evaluation is γ (z − running mean)/√(running var + eps) + β: written out here
    x = rng.normal(5, 3, size=(64, 4))
    scale = model.params["layer0.gamma"] / np.sqrt(model.buffers["layer0.running_var"] + 1e-5)
    h = np.maximum(0, (x @ W - model.buffers["layer0.running_mean"]) * scale
                   + model.params["layer0.beta"])
    expected = h @ model.params["layer1.W"] + model.params["layer1.b"]
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-10, atol=1e-12)


def test_batchnorm_evaluation_of_one_example_is_deterministic_and_batch_independent():
    model = _bn_model()
    rng = np.random.default_rng(2)
    for _ in range(5):
        model.loss_and_grad(rng.normal(5, 3, size=(32, 4)), rng.integers(0, 3, 32))
    running = {k: v.copy() for k, v in model.buffers.items()}
    x = rng.normal(5, 3, size=(64, 4))
    alone = model.logits(x[:1])
    np.testing.assert_array_equal(alone, model.logits(x[:1]))
    np.testing.assert_allclose(alone, model.logits(x)[:1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(alone, model.logits(x[::-1])[-1:], rtol=1e-12, atol=1e-14)
    for name, value in running.items():                   # evaluation never updates them
        np.testing.assert_array_equal(model.buffers[name], value)


def test_batchnorm_training_batch_of_one_is_finite_and_leaves_running_statistics():
    model = _bn_model()
    before = {k: v.copy() for k, v in model.buffers.items()}
    loss, _ = model.loss_and_grad(np.ones((1, 4)), np.array([1]))
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in model.grads.values())
    for name, value in before.items():
        np.testing.assert_array_equal(model.buffers[name], value)


def test_batchnorm_state_round_trip_includes_the_running_statistics():
    config = {"seed": 4, "model": {"hidden": [6, 5], "batchnorm": True, "dtype": "float64"}}
    model = MLP.from_config(config)
    assert model.batchnorm and MLP(**model.spec()).batchnorm
    x = np.random.default_rng(0).normal(2, 1, size=(20, 784))
    model.loss_and_grad(x, np.arange(20) % 10)
    state = model.state_dict()
    assert set(state) == set(model.params) | set(model.buffers)
    state["layer0.running_mean"][0] += 1.0                # copies, not views
    assert model.buffers["layer0.running_mean"][0] != state["layer0.running_mean"][0]

    clone = MLP(**model.spec())
    clone.load_state_dict(model.state_dict())
    for name, value in model.named_arrays().items():
        np.testing.assert_array_equal(clone.named_arrays()[name], value)
    np.testing.assert_array_equal(clone.logits(x), model.logits(x))
    with pytest.raises(ValueError, match="missing.*layer1.running_var"):
        clone.load_state_dict(model.params)
    with pytest.raises(ValueError, match="shape"):
        clone.load_state_dict({**model.state_dict(), "layer0.running_var": np.ones(3)})


def test_batchnorm_network_learns():
    x, y = _blobs(400, seed=1)
    model = MLP(hidden=[32], batchnorm=True, seed=0)
    opt = make_optimizer("adam", model.params, lr=1e-3)
    for _ in range(6):
        for start in range(0, len(x), 50):
            model.loss_and_grad(x[start:start + 50], y[start:start + 50])
            opt.step(model.params, model.grads)
    assert model.evaluate(x, y)[1] > 0.8


# ---------------------------------------------------------------------------------------------
# Facts written once: the parameter names and shapes, the config keys and their defaults


@pytest.mark.parametrize("batchnorm", [False, True])
def test_the_model_allocates_what_parameter_shapes_names(batchnorm):
    from fmnist_mlp.nn.model import is_buffer, parameter_shapes

    model = MLP(input_size=6, hidden=[5, 4], num_classes=3, batchnorm=batchnorm, seed=0)
    shapes = parameter_shapes([6, 5, 4, 3], batchnorm)
    assert {k: v.shape for k, v in model.named_arrays().items()} == shapes
    assert list(model.params) == [k for k in shapes if not is_buffer(k)]
    assert list(model.buffers) == [k for k in shapes if is_buffer(k)]
    assert all(is_buffer(k) == k.endswith(("running_mean", "running_var")) for k in shapes)
    assert ("layer0.b" in shapes) != batchnorm and "layer2.b" in shapes     # the last layer keeps b


def test_a_models_keys_are_declared_once_and_agree_everywhere():
    """nn/config_keys.py's MODEL_KEYS is the one source: the schema's model and loss sections are
    made from it, the plan hands on exactly its arguments, and MLP.__init__'s keyword arguments
    are its arguments (same defaults) plus the few NOT_CONFIG_KEYS; MLP.spec, what a model file
    records, names every one of them but the seed and the kernels."""
    import dataclasses
    import inspect
    import json
    from pathlib import Path

    import numpy as np

    from fmnist_mlp.config.plan import model_kwargs
    from fmnist_mlp.config.schema import Config
    from fmnist_mlp.nn.config_keys import MODEL_KEYS, NOT_CONFIG_KEYS

    defaults = {n: p.default for n, p in inspect.signature(MLP).parameters.items()}
    declared = {k.argument: k.default for keys in MODEL_KEYS.values() for k in keys.values()}
    for section, keys in MODEL_KEYS.items():
        schema = getattr(Config(), section)
        assert [f.name for f in dataclasses.fields(schema)] == list(keys), section
        for key, k in keys.items():
            assert getattr(schema, key) == k.default, f"{section}.{key}"
    # every keyword argument of the network is a config key or said not to be one, never both
    assert set(declared) | set(NOT_CONFIG_KEYS) == set(defaults)
    assert not set(declared) & set(NOT_CONFIG_KEYS)
    for argument, default in declared.items():
        assert (list(default) == list(defaults[argument]) if isinstance(default, tuple)
                else default == defaults[argument]), f"{argument}: table {default!r}, MLP {defaults[argument]!r}"
    assert Config().seed == defaults["seed"]
    # the plan hands on exactly the declared arguments (and the dataset's sizes)
    assert set(model_kwargs(Config())) == set(declared) | {"input_size", "num_classes"}
    # what a model file records: every argument but the seed (a stream) and the kernels
    recorded = set(MLP(hidden=[3], seed=np.random.default_rng(0)).spec())
    assert recorded == set(defaults) - {"seed", "kernels"}
    # ... as the run of the previous main recorded it, so old runs keep loading
    meta = np.load(Path(__file__).parent / "fixtures/run-v1/checkpoints/best.npz")["meta"]
    assert set(json.loads(str(meta))["model_spec"]) == recorded


def test_from_config_names_the_key_of_each_bad_value():
    from fmnist_mlp.errors import ConfigError

    cases = {"model.hiden: unknown key (did you mean 'model.hidden'?)": {"model": {"hiden": [3]}},
             "model.hidden: 256 is not valid; expected a list of layer widths": {"model": {"hidden": 256}},
             "model.batchnorm: 'yes' is not valid": {"model": {"batchnorm": "yes"}},
             "loss.name: 'hinge' is not valid": {"loss": {"name": "hinge"}},
             "loss.name: 'cross_entropy' is not valid": {"model": {"output": "linear"}},
             "modle: unknown key (did you mean 'model'?)": {"modle": {"hidden": [3]}},
             "seed: -1 is not valid": {"seed": -1},
             "model: expected a mapping": {"model": [3]}}
    for message, config in cases.items():
        with pytest.raises(ConfigError) as excinfo:
            MLP.from_config(config)
        assert str(excinfo.value).startswith(message), (config, str(excinfo.value))
    # Sections that configure a run rather than a network are the plan's, not the engine's.
    model = MLP.from_config({"seed": 5, "optimizer": {"name": "sgd"}, "data": {"subset": 10},
                             "model": {"hidden": [7]}})
    assert model.hidden == [7] and model.spec()["seed"] == 5
