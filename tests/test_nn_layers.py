"""Each layer alone against central differences, in float64, with the upstream-gradient trick:
for a random ``dout``, the scalar L = Σ dout ⊙ forward(x) has dL/dx = backward(dout)."""

import numpy as np
import pytest

from fmnist_mlp.nn import layers
from fmnist_mlp.nn.gradcheck import relative_error
from fmnist_mlp.nn.losses import OUTPUTS, softmax_cross_entropy, squared_error

TOLERANCE = 1e-7


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() w.r.t. every entry of x (changed in place)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        original = x[idx]
        x[idx] = original + eps
        plus = f()
        x[idx] = original - eps
        minus = f()
        x[idx] = original
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_dense(rng):
    x, W, b = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    dout = rng.normal(size=(5, 3))

    def loss():
        return float(np.sum(dout * layers.dense_forward(x, W, b, out=np.empty((5, 3)))))

    np.testing.assert_allclose(layers.dense_forward(x, W, b, np.empty((5, 3))), x @ W + b)
    dW, db, dx = np.empty_like(W), np.empty_like(b), np.empty_like(x)
    layers.dense_backward(dout, x, W, dW, db, dx)
    for analytic, wrt in ((dx, x), (dW, W), (db, b)):
        assert relative_error(analytic, numeric_grad(loss, wrt)) < TOLERANCE


@pytest.mark.parametrize("name", ["linear", "sigmoid", "tanh", "relu"])
def test_activation(name, rng):
    z = rng.normal(size=(6, 4))
    z[np.abs(z) < 1e-2] = 0.5                   # away from ReLU's kink
    dout = rng.normal(size=(6, 4))

    def loss():
        return float(np.sum(dout * layers.activation_forward(name, z, out=np.empty_like(z))))

    a = layers.activation_forward(name, z, out=np.empty_like(z))
    dz = layers.activation_backward(name, dout.copy(), a)       # derivative through the output
    assert relative_error(dz, numeric_grad(loss, z)) < TOLERANCE


@pytest.mark.parametrize("feature_major", [False, True])
def test_dropout_with_a_fixed_mask(feature_major, rng):
    x, dout = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    mask = np.empty((5, 7)).T if feature_major else np.empty((7, 5))
    threshold = layers.keep_threshold(0.4)

    def forward():
        return layers.dropout_forward(x, threshold, np.random.default_rng(3), mask,
                                      np.empty_like(x))

    def loss():
        return float(np.sum(dout * forward()))

    out = forward()
    q = threshold / 65536
    assert set(np.unique(mask)) <= {0.0, 1.0 / q}
    np.testing.assert_array_equal(out, x * mask)
    dx = layers.dropout_backward(dout.copy(), mask)
    assert relative_error(dx, numeric_grad(loss, x)) < TOLERANCE


def test_batchnorm_training_mode(rng):
    z, dout = rng.normal(2, 3, size=(6, 4)), rng.normal(size=(6, 4))
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.normal(size=4)
    stats = [np.empty(4) for _ in range(3)]

    def forward():
        xhat = z.copy()                          # the forward pass normalises its input in place
        out = layers.batchnorm_forward_train(xhat, gamma, beta, 1e-5, np.empty_like(z), *stats)
        return out, xhat

    def loss():
        return float(np.sum(dout * forward()[0]))

    out, xhat = forward()
    np.testing.assert_allclose(out, gamma * (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5) + beta)
    dgamma, dbeta = np.empty(4), np.empty(4)
    dz = layers.batchnorm_backward(dout.copy(), xhat, gamma, stats[2], dgamma, dbeta,
                                   scratch=np.empty_like(z))
    for analytic, wrt in ((dz, z), (dgamma, gamma), (dbeta, beta)):
        assert relative_error(analytic, numeric_grad(loss, wrt)) < TOLERANCE


def test_batchnorm_evaluation_is_the_running_statistics_affine_map(rng):
    z, gamma, beta = rng.normal(size=(5, 3)), rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    out = layers.batchnorm_forward_eval(z, gamma, beta, mean, var, 1e-5, out=np.empty_like(z))
    np.testing.assert_allclose(out, gamma * (z - mean) / np.sqrt(var + 1e-5) + beta, rtol=1e-12)
    scale, shift = layers.batchnorm_eval_affine(gamma, beta, mean, var, 1e-5)   # what ONNX gets
    np.testing.assert_array_equal(out, z * scale + shift)


def test_sigmoid_is_written_once_for_hidden_and_output_units(rng):
    from fmnist_mlp.nn import activations, losses

    z = rng.normal(scale=5, size=(4, 5))
    assert losses.sigmoid is activations.sigmoid is activations.ACTIVATIONS["sigmoid"].forward
    np.testing.assert_allclose(losses.apply_output("sigmoid", z), 1 / (1 + np.exp(-z)), atol=1e-15)


def _target_distribution(rng, n, k):
    """Arbitrary rows summing to one (a teacher's probabilities, label smoothing, one-hot)."""
    t = rng.uniform(size=(n, k)) ** 3
    return t / t.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("head", ["cross_entropy", *[f"squared_error/{o}" for o in OUTPUTS]])
def test_loss_heads_give_the_gradient_of_their_loss(head, rng):
    logits, target = rng.normal(size=(4, 5)) * 2, _target_distribution(rng, 4, 5)

    def loss_and_grad():
        if head == "cross_entropy":
            return softmax_cross_entropy(logits, target)
        return squared_error(head.split("/")[1], logits, target)

    dlogits = loss_and_grad()[1]
    assert relative_error(dlogits, numeric_grad(lambda: loss_and_grad()[0], logits)) < TOLERANCE
