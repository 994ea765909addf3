"""Each optimiser's first three steps against its formula written out by hand, in float64, run by
the NumPy passes and by the fused kernels (the ``kernels`` fixture, tests/conftest.py)."""

import copy
import math
import pickle

import numpy as np
import pytest

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn.optim import make_optimizer

W0 = np.array([[0.5, -1.0], [2.0, 0.25]])
B0 = np.array([0.1, -0.2])
GRADS = [  # three steps of gradients for (W, b)
    (np.array([[0.1, -0.2], [0.3, 0.05]]), np.array([0.5, -0.5])),
    (np.array([[-0.4, 0.1], [0.2, 0.2]]), np.array([0.25, 0.0])),
    (np.array([[0.05, 0.3], [-0.1, -0.6]]), np.array([-1.0, 0.75])),
]
LRS = [0.1, 0.05, 0.02]   # a different learning rate each step, as a schedule would give


def _arrays(kernels, W, b):
    """(W, b) as the optimiser gets them: a plain dict for the NumPy passes; for the fused
    kernels, a flat parameter set (the model's kind, the only one they take)."""
    if kernels == "numpy":
        return {"layer0.W": W.copy(), "layer0.b": b.copy()}
    from fmnist_mlp.nn.workspace import ParameterSet

    arrays = ParameterSet({"layer0.W": W.shape, "layer0.b": b.shape}, np.float64)
    arrays["layer0.W"], arrays["layer0.b"] = W, b
    return arrays


def _run(name, steps=3, kernels="numpy", **hyper):
    params = _arrays(kernels, W0, B0)
    opt = make_optimizer(name, params, lr=1.0, kernels=kernels, **hyper)
    assert opt.kernels == kernels
    history = []
    for (gw, gb), lr in list(zip(GRADS, LRS))[:steps]:
        opt.step(params, _arrays(kernels, gw, gb), lr)
        history.append({k: v.copy() for k, v in params.items()})
    return history, opt


def _by_hand(update):
    """Apply ``update(theta, g, lr, t, state) -> theta`` to W and b separately."""
    out = []
    theta = {"W": W0.copy(), "b": B0.copy()}
    state = {"W": {}, "b": {}}
    for t, ((gw, gb), lr) in enumerate(zip(GRADS, LRS), start=1):
        theta = {"W": update(theta["W"], gw, lr, t, state["W"], True),
                 "b": update(theta["b"], gb, lr, t, state["b"], False)}
        out.append(theta)
    return out


def _assert_same(history, expected):
    for got, want in zip(history, expected):
        np.testing.assert_allclose(got["layer0.W"], want["W"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["layer0.b"], want["b"], rtol=0, atol=1e-12)


def test_sgd(kernels):
    _assert_same(_run("sgd", kernels=kernels)[0], _by_hand(lambda th, g, lr, t, s, w: th - lr * g))


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_and_nesterov(nesterov, kernels):
    mu = 0.9

    def update(th, g, lr, t, s, w):
        s["v"] = mu * s.get("v", 0.0) + g
        return th - lr * (g + mu * s["v"] if nesterov else s["v"])

    _assert_same(_run("nesterov" if nesterov else "momentum", momentum=mu, kernels=kernels)[0], _by_hand(update))


def test_adagrad(kernels):
    eps = 1e-8

    def update(th, g, lr, t, s, w):
        s["G"] = s.get("G", 0.0) + g * g
        return th - lr * g / (np.sqrt(s["G"]) + eps)

    _assert_same(_run("adagrad", eps=eps, kernels=kernels)[0], _by_hand(update))


def test_rmsprop(kernels):
    rho, eps = 0.9, 1e-8

    def update(th, g, lr, t, s, w):
        s["s"] = rho * s.get("s", 0.0) + (1 - rho) * g * g
        return th - lr * g / (np.sqrt(s["s"]) + eps)

    _assert_same(_run("rmsprop", rho=rho, eps=eps, kernels=kernels)[0], _by_hand(update))


@pytest.mark.parametrize("name,weight_decay", [("adam", 0.0), ("adamw", 0.1)])
def test_adam_bias_corrected_with_decoupled_weight_decay(name, weight_decay, kernels):
    b1, b2, eps = 0.8, 0.95, 1e-8

    def update(th, g, lr, t, s, is_weight):
        if is_weight:
            th = th - lr * weight_decay * th          # decoupled: weights only, not biases
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        m_hat = s["m"] / (1 - b1 ** t)
        v_hat = s["v"] / (1 - b2 ** t)
        return th - lr * m_hat / (np.sqrt(v_hat) + eps)

    history, _ = _run(name, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay, kernels=kernels)
    _assert_same(history, _by_hand(update))


def test_adam_first_step_moves_each_weight_by_about_lr(kernels):
    history, _ = _run("adam", steps=1, kernels=kernels)
    np.testing.assert_allclose(np.abs(history[0]["layer0.W"] - W0), LRS[0], rtol=1e-6)


def test_sgd_with_decoupled_weight_decay(kernels):
    wd = 0.5

    def update(th, g, lr, t, s, is_weight):
        return (th - lr * wd * th if is_weight else th) - lr * g

    _assert_same(_run("sgd", weight_decay=wd, kernels=kernels)[0], _by_hand(update))


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_state_saved_restored_and_continued_gives_identical_numbers(name, kernels):
    straight, _ = _run(name, kernels=kernels)
    partial, opt = _run(name, steps=2, kernels=kernels)
    state = opt.state_dict()
    params = _arrays(kernels, partial[-1]["layer0.W"], partial[-1]["layer0.b"])
    fresh = make_optimizer(name, params, lr=1.0, kernels=kernels)
    fresh.load_state_dict(state)
    gw, gb = GRADS[2]
    fresh.step(params, _arrays(kernels, gw, gb), LRS[2])
    np.testing.assert_array_equal(params["layer0.W"], straight[2]["layer0.W"])
    np.testing.assert_array_equal(params["layer0.b"], straight[2]["layer0.b"])


def test_state_dict_is_a_copy_and_mismatches_are_refused():
    _, opt = _run("adam", steps=1)
    state = opt.state_dict()
    assert int(state["t"]) == 1 and set(state) == {"t", "m/layer0.W", "m/layer0.b",
                                                    "v/layer0.W", "v/layer0.b"}
    state["m/layer0.W"][...] = 123.0
    assert not np.any(opt.state["m"]["layer0.W"] == 123.0)
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"t": np.int64(1)})
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({**state, "v/layer0.b": np.zeros(5)})


def test_unknown_optimizer_and_bad_lr_are_config_errors():
    params = {"layer0.W": W0.copy()}
    with pytest.raises(ConfigError, match="optimizer.name"):
        make_optimizer("lbfgs", params, lr=0.1)
    with pytest.raises(ConfigError, match="optimizer.lr"):
        make_optimizer("sgd", params, lr=-0.1)
    assert math.isfinite(make_optimizer("sgd", params, lr=0.1).lr)


@pytest.mark.parametrize("layout", ["row", "feature"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adamw"])
def test_flat_threaded_path_equals_per_parameter_path(name, layout):
    """The model's ParameterSet takes the flat-array (threaded, when large) path; a plain dict
    takes the per-name path. Elementwise updates must give bit-identical results either way."""
    from fmnist_mlp.nn import MLP

    model = MLP(hidden=[768], seed=0, layout=layout)   # 784·768 + … > the threading threshold
    assert model.params.flat.size > 1 << 19
    separate = {k: v.copy() for k, v in model.params.items()}
    fast = make_optimizer(name, model.params, lr=0.01, weight_decay=0.1)
    slow = make_optimizer(name, separate, lr=0.01, weight_decay=0.1)
    assert fast._layout is not None and slow._layout is None
    rng = np.random.default_rng(0)
    for step in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in separate.items()}
        for k, g in grads.items():
            model.grads[k] = g                          # assigned in place into the flat array
        fast.step(model.params, model.grads, 0.01 / (step + 1))
        slow.step(separate, grads, 0.01 / (step + 1))
    for k in separate:
        np.testing.assert_array_equal(model.params[k], separate[k])
    for k, v in slow.state_dict().items():
        np.testing.assert_array_equal(fast.state_dict()[k], v)


def test_parameter_set_entries_are_views_of_its_flat_array_and_assigned_in_place():
    from fmnist_mlp.nn.workspace import ParameterSet

    params = ParameterSet({"layer0.W": (3, 2), "layer0.b": (2,)}, np.float64, ["layer0.W"])
    assert params.flat.size == 8 and params["layer0.W"].flags.f_contiguous
    view = params["layer0.W"]
    params["layer0.W"] = np.arange(6.0).reshape(3, 2)
    assert params["layer0.W"] is view                   # the same array, new values
    np.testing.assert_array_equal(params.flat[:6], np.arange(6.0).reshape(3, 2).T.ravel())
    with pytest.raises(ValueError, match="shape"):
        params["layer0.b"] = np.zeros(3)
    with pytest.raises(KeyError):
        params["layer1.W"] = np.zeros(2)
    state = params.views_of(np.zeros(8))
    assert state["layer0.W"].strides == view.strides and state["layer0.b"].shape == (2,)
    for clone in (copy.deepcopy(params), pickle.loads(pickle.dumps(params))):
        assert clone.layout == params.layout and clone.flat is not params.flat
        np.testing.assert_array_equal(clone.flat, params.flat)
        clone["layer0.b"] = [7.0, 8.0]
        np.testing.assert_array_equal(clone.flat[6:], [7.0, 8.0])


def test_an_optimizer_on_a_parameter_set_updates_it_by_the_formula():
    """The flat path on a set built by hand: momentum's first two steps written out."""
    from fmnist_mlp.nn.workspace import ParameterSet

    shapes = {"layer0.W": (2, 2), "layer0.b": (2,)}
    params, grads = ParameterSet(shapes, np.float64), ParameterSet(shapes, np.float64)
    params["layer0.W"], params["layer0.b"] = W0, B0
    opt = make_optimizer("momentum", params, lr=1.0, momentum=0.9)
    v = {"W": 0.0, "b": 0.0}
    want = {"W": W0.copy(), "b": B0.copy()}
    for (gw, gb), lr in list(zip(GRADS, LRS))[:2]:
        grads["layer0.W"], grads["layer0.b"] = gw, gb
        opt.step(params, grads, lr)
        for key, g in (("W", gw), ("b", gb)):
            v[key] = 0.9 * v[key] + g
            want[key] = want[key] - lr * v[key]
    np.testing.assert_allclose(params["layer0.W"], want["W"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(params["layer0.b"], want["b"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(opt.state["velocity"]["layer0.W"], v["W"], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The registry: a new optimiser is its class and its entry


def _toy_class():
    """A toy optimiser defined only here: more slots than any real one, a hyperparameter of its own."""
    from fmnist_mlp.nn.optim import Optimizer

    class SignDescent(Optimizer):
        slots = ("a", "b", "c")

        def __init__(self, params, lr, bound=1.0, weight_decay=0.0):
            super().__init__(params, lr, weight_decay)
            self.bound = float(bound)

        def _update(self, param, grad, lr, tmp, a, b, c):
            np.sign(grad, out=tmp)          # θ ← θ − lr·bound·sign(g)
            tmp *= lr * self.bound
            param -= tmp

    return SignDescent


def test_an_optimiser_added_to_the_registry_is_usable_everywhere(monkeypatch):
    from fmnist_mlp.nn import memory, optim

    before = memory.arrays_per_parameter()
    assert before == 5                      # value, gradient, scratch, Adam's two moments
    size = memory.training_bytes(784, [16], 10, 32, 100, 4, data_rows=10)
    monkeypatch.setitem(optim.OPTIMIZERS, "sign", _toy_class())
    params = {"layer0.W": W0.copy(), "layer0.b": B0.copy()}
    opt = make_optimizer("sign", params, lr=0.5, bound=2.0, momentum=0.9)   # momentum: not its
    opt.step(params, {"layer0.W": GRADS[0][0], "layer0.b": GRADS[0][1]})
    np.testing.assert_allclose(params["layer0.W"], W0 - 1.0 * np.sign(GRADS[0][0]))
    assert set(opt.state_dict()) == {"t"} | {f"{s}/{k}" for s in "abc" for k in params}
    assert memory.arrays_per_parameter() == 6 and memory.training_bytes(
        784, [16], 10, 32, 100, 4, data_rows=10) > size                     # the estimate asks it
    with pytest.raises(TypeError, match="bund"):
        make_optimizer("sign", params, lr=0.5, bund=2.0)                      # a typo is not ignored


def test_the_registry_is_what_the_schema_offers():
    import dataclasses

    from fmnist_mlp.config.schema import OptimizerConfig
    from fmnist_mlp.nn.optim import OPTIMIZERS, hyperparameters

    field = {f.name: f for f in dataclasses.fields(OptimizerConfig)}
    assert tuple(field["name"].metadata["choices"]) == tuple(OPTIMIZERS)
    # Every hyperparameter a registered class takes is a field of the schema's optimizer section.
    taken = set().union(*(hyperparameters(cls) for cls in OPTIMIZERS.values()))
    assert taken <= set(field), taken - set(field)
