"""Learning-rate schedules give the expected value at chosen steps."""

import math

import pytest

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.nn.schedules import make_schedule


def test_constant():
    lr_at = make_schedule("constant", 0.1, total_steps=100)
    assert [lr_at(s) for s in (0, 50, 99, 1000)] == [0.1] * 4


def test_step():
    lr_at = make_schedule("step", 1.0, total_steps=100, step_size=10, gamma=0.5)
    assert lr_at(0) == 1.0 and lr_at(9) == 1.0
    assert lr_at(10) == 0.5 and lr_at(25) == 0.25 and lr_at(99) == 0.5 ** 9


def test_exponential():
    lr_at = make_schedule("exponential", 1.0, total_steps=100, gamma=0.5, decay_steps=10)
    assert lr_at(0) == 1.0
    assert lr_at(10) == pytest.approx(0.5)
    assert lr_at(5) == pytest.approx(math.sqrt(0.5))


def test_cosine_from_lr_to_min_lr():
    lr_at = make_schedule("cosine", 1.0, total_steps=100, min_lr=0.1)
    assert lr_at(0) == pytest.approx(1.0)
    assert lr_at(50) == pytest.approx(0.55)
    assert lr_at(100) == pytest.approx(0.1)
    assert lr_at(500) == pytest.approx(0.1)


def test_linear_warmup_then_cosine():
    lr_at = make_schedule("cosine", 1.0, total_steps=110, warmup_steps=10)
    assert [lr_at(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10) == pytest.approx(1.0)
    assert lr_at(60) == pytest.approx(0.5)
    assert lr_at(110) == pytest.approx(0.0)


def test_onecycle_peaks_at_30_percent():
    lr_at = make_schedule("onecycle", 2.0, total_steps=100, min_lr=0.0)
    values = [lr_at(s) for s in range(100)]
    assert max(values) == pytest.approx(2.0)
    assert values.index(max(values)) in (29, 30)
    assert values[0] == pytest.approx(2.0 / 30)
    assert values[-1] < 0.01


@pytest.mark.parametrize("kwargs", [{"name": "linear"}, {"base_lr": 0.0}, {"gamma": -1.0},
                                    {"warmup_steps": -1}])
def test_invalid_schedules_are_config_errors(kwargs):
    args = {"name": "step", "base_lr": 0.1, "total_steps": 10, **kwargs}
    with pytest.raises(ConfigError):
        make_schedule(**args)


def test_a_schedule_added_to_the_registry_is_usable(monkeypatch):
    from fmnist_mlp.nn import schedules

    monkeypatch.setitem(schedules.SCHEDULES, "halving", lambda s, d: d.base_lr / 2 ** s)
    lr_at = make_schedule("halving", 1.0, total_steps=10, warmup_steps=2)
    assert [lr_at(s) for s in range(5)] == [0.5, 1.0, 1.0, 0.5, 0.25]
