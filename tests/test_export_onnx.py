"""ONNX export against ONNX Runtime, and safetensors round trips, on hand-built models.

Each model gets random weights and (with batch norm) random running statistics, so every
parameter matters; ONNX Runtime's outputs on raw pixels must match the engine's to float32
tolerance for every activation, output unit, depth, batch norm and test-time flips.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from fmnist_mlp.config.load import config_to_dict
from fmnist_mlp.config.validate import config_from_dict
from fmnist_mlp.scoring.ensemble import mean_outputs
from fmnist_mlp.rundir.flips import logits_of_outputs
from fmnist_mlp.nn import MLP
from fmnist_mlp.rundir.trained import TrainedModel

from conftest import require_or_skip


def _ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        require_or_skip("onnx and onnxruntime are not installed (pip install -e '.[dev]')")
    return onnxruntime


def make_trained(activation="relu", output="softmax", depth=1, batchnorm=False, test_flip=False,
                 normalize="standardize", dtype="float32", seed=0) -> TrainedModel:
    rng = np.random.default_rng(seed)
    loss = "cross_entropy" if output == "softmax" else "squared_error"
    hidden = [16, 12][:depth]
    config = config_to_dict(config_from_dict({
        "seed": seed,
        "data": {"normalize": normalize, "augment": {"test_flip": test_flip}},
        "model": {"hidden": hidden, "activation": activation, "output": output,
                  "batchnorm": batchnorm, "dtype": dtype},
        "loss": {"name": loss}}))
    model = MLP(hidden=hidden, activation=activation, output=output, loss=loss,
                batchnorm=batchnorm, dtype=dtype, seed=seed)
    for name, value in model.params.items():
        value[...] = rng.normal(0.0, 0.3, value.shape)
    for name, value in model.buffers.items():
        value[...] = (rng.uniform(0.5, 2.0, value.shape) if name.endswith("running_var")
                      else rng.normal(0.0, 0.5, value.shape))
    mean, std = (0.2860, 0.3530) if normalize == "standardize" else (0.0, 1.0)
    return TrainedModel(Path(f"model-{seed}.npz"), model, config, mean, std)


def run_onnx(members, pixels):
    ort = _ort()
    from fmnist_mlp.data import CLASS_NAMES
    from fmnist_mlp.export.onnx import build_onnx

    proto = build_onnx(members, CLASS_NAMES)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"pixels": pixels})
    return proto, logits, probabilities


def assert_close32(actual, expected, tolerance=1e-5):
    """Float32 agreement: errors relative to the largest magnitude (sums of 784 products)."""
    scale = max(1.0, float(np.abs(expected).max()))
    assert actual.shape == expected.shape
    assert float(np.abs(actual - expected).max()) <= tolerance * scale


@pytest.fixture(scope="module")
def pixels():
    # Raw 0..255 values with structure: mostly dark, some bright strokes, mirrored differently.
    rng = np.random.default_rng(42)
    x = rng.integers(0, 256, size=(64, 784)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0.0
    return x


CASES = list(itertools.product(["linear", "sigmoid", "tanh", "relu"],
                               ["softmax", "sigmoid", "linear"], [0, 1, 2]))


@pytest.mark.parametrize("activation, output, depth", CASES)
def test_onnx_matches_the_engine(activation, output, depth, pixels):
    trained = make_trained(activation, output, depth)
    _, logits, probabilities = run_onnx([trained], pixels)
    expected_logits = trained.model.logits(trained.inputs(pixels))
    assert_close32(logits, expected_logits)
    assert_close32(probabilities, trained.outputs(pixels))


@pytest.mark.parametrize("activation, output, depth, batchnorm, test_flip", [
    ("relu", "softmax", 2, True, False), ("tanh", "sigmoid", 1, True, False),
    ("relu", "softmax", 2, True, True), ("sigmoid", "linear", 1, False, True),
    ("relu", "softmax", 0, False, True), ("tanh", "sigmoid", 2, True, True)])
def test_onnx_matches_with_batchnorm_and_flips(activation, output, depth, batchnorm, test_flip,
                                               pixels):
    trained = make_trained(activation, output, depth, batchnorm, test_flip, seed=3)
    _, logits, probabilities = run_onnx([trained], pixels)
    expected = trained.outputs(pixels)
    assert_close32(probabilities, expected)
    if test_flip:       # averaged outputs: logits are the output units' inverse of them
        expected_logits = logits_of_outputs(output, expected)
        if output == "sigmoid":
            expected_logits = expected_logits[np.abs(expected_logits).max(axis=1) < 10]
            logits = logits[np.abs(logits).max(axis=1) < 10]
        assert_close32(logits, expected_logits, 1e-4)
    else:
        assert_close32(logits, trained.model.logits(trained.inputs(pixels)))


def test_flip_averaging_is_not_a_no_op(pixels):
    """The mirrored branch must change the answer, or the flip tests above prove nothing."""
    flipped = make_trained("relu", "softmax", 1, test_flip=True, seed=5)
    plain = make_trained("relu", "softmax", 1, test_flip=False, seed=5)
    assert np.abs(flipped.outputs(pixels) - plain.outputs(pixels)).max() > 1e-3
    _, _, probabilities = run_onnx([flipped], pixels)
    assert_close32(probabilities, flipped.outputs(pixels))


def test_float64_and_scale_normalisation(pixels):
    trained = make_trained("tanh", "softmax", 2, batchnorm=True, test_flip=True,
                           normalize="scale", dtype="float64", seed=7)
    _, logits, probabilities = run_onnx([trained], pixels)
    assert probabilities.dtype == np.float32 and logits.dtype == np.float32
    assert_close32(probabilities, trained.outputs(pixels))


def test_onnx_ensemble_equals_the_engine_ensemble(pixels):
    members = [make_trained("relu", "softmax", 2, True, True, seed=1),
               make_trained("tanh", "softmax", 1, False, False, seed=2),
               make_trained("sigmoid", "softmax", 0, False, True, normalize="scale", seed=3)]
    _, logits, probabilities = run_onnx(members, pixels)
    by_hand = sum(m.outputs(pixels) for m in members) / 3
    assert_close32(probabilities, by_hand)
    assert_close32(logits, np.log(by_hand), 1e-4)
    assert_close32(probabilities, mean_outputs([m.outputs(pixels) for m in members]))


def test_onnx_metadata_and_versions():
    import json

    from fmnist_mlp.export.onnx import IR_VERSION, OPSET

    trained = make_trained(test_flip=True)
    proto, _, _ = run_onnx([trained], np.zeros((1, 784), np.float32))
    assert proto.ir_version == IR_VERSION and proto.opset_import[0].version == OPSET
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["class_names"][9] == "Ankle boot"
    assert props["config"] == trained.config and props["test_flip"] == [True]
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]


def test_an_ensemble_of_different_output_units_is_refused():
    from fmnist_mlp.errors import ConfigError
    from fmnist_mlp.export.onnx import build_onnx

    pytest.importorskip("onnx")
    with pytest.raises(ConfigError, match="model.output"):
        build_onnx([make_trained(output="softmax"), make_trained(output="sigmoid")], ["x"] * 10)


def test_safetensors_round_trip(tmp_path, pixels):
    pytest.importorskip("safetensors")
    from fmnist_mlp.export.safetensors import read_safetensors, safetensors_bytes
    from fmnist_mlp.rundir.trained import load_trained

    trained = make_trained("relu", "softmax", 2, batchnorm=True, test_flip=True, seed=9)
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(
        {**trained.model.params, **trained.model.buffers},
        {"model_spec": trained.model.spec(), "config": trained.config,
         "normalization": {"mean": trained.mean, "std": trained.std},
         "class_names": ["c"] * 10}))
    arrays, meta = read_safetensors(path)
    assert set(arrays) == set(trained.model.params) | set(trained.model.buffers)
    loaded = load_trained(path)
    assert (loaded.mean, loaded.std, loaded.test_flip) == (trained.mean, trained.std, True)
    np.testing.assert_array_equal(loaded.outputs(pixels), trained.outputs(pixels))


@pytest.mark.parametrize("content", [b"", b"garbage that is not safetensors",
                                     b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "])
def test_a_bad_safetensors_file_is_a_checkpoint_error(tmp_path, content):
    pytest.importorskip("safetensors")
    from fmnist_mlp.errors import CheckpointError
    from fmnist_mlp.rundir.trained import load_trained

    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_trained(path)
