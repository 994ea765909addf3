"""One seed, separate streams (fmnist_mlp/rng.py)."""

import numpy as np
import pytest

from fmnist_mlp.config.plan import build_model
from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn import MLP
from fmnist_mlp.nn.rng import spawn_streams


def test_streams_are_named_reproducible_and_independent():
    a, b = spawn_streams(11, ("x", "y", "z")), spawn_streams(11, ("x", "y", "z"))
    assert list(a) == ["x", "y", "z"]
    first = {name: gen.random(4).tolist() for name, gen in a.items()}
    assert first == {name: gen.random(4).tolist() for name, gen in b.items()}
    assert len({tuple(v) for v in first.values()}) == 3
    assert spawn_streams(12, ("x",))["x"].random() != spawn_streams(11, ("x",))["x"].random()


def test_adding_a_stream_at_the_end_leaves_the_others_unchanged():
    short, longer = spawn_streams(3, ("init", "dropout")), spawn_streams(3, ("init", "dropout", "new"))
    for name in short:
        assert short[name].integers(2**62) == longer[name].integers(2**62)


def test_streams_are_the_children_of_the_seeds_sequence():
    # What nn/model.py's integer seed and every saved run's RNG state were made from before
    # this module existed: switching them to spawn_streams changes no weights and no resume.
    for name, child in zip(("init", "dropout"), np.random.SeedSequence(9).spawn(2)):
        assert spawn_streams(9, ("init", "dropout"))[name].random() == \
            np.random.default_rng(child).random()


def test_from_config_builds_what_build_model_builds():
    for config in ({}, {"seed": 2, "model": {"hidden": [7, 3], "layout": "feature", "batchnorm": True}},
                   {"model": {"activation": "tanh", "output": "linear", "dtype": "float64"},
                    "loss": {"name": "squared_error", "l2": 0.1}}):
        a, b = MLP.from_config(config), build_model(config)
        assert a.spec() == b.spec(), config
        for name, value in a.named_arrays().items():
            np.testing.assert_array_equal(b.named_arrays()[name], value)


def test_from_config_is_validated_at_the_boundary_and_passes_every_model_key():
    # The bug this guards against: model.layout was validated and documented but one of two
    # builders never passed it on, so a documented setting silently did nothing.
    assert MLP.from_config({"model": {"hidden": [600], "layout": "row"}}).spec()["layout"] == "row"
    assert MLP.from_config({"model": {"hidden": [600]}}).spec()["layout"] == "feature"
    with pytest.raises(ConfigError, match=r"model\.activaton"):
        MLP.from_config({"model": {"activaton": "tanh"}})
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        MLP.from_config({"model": {"dropout": 1.5}})
