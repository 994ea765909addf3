"""The engine a run trains, built in one place from plain values: the network, the optimiser over
its parameters, and the learning rate at each step (one step = one minibatch).

    engine = build_engine(plan.engine, init_rng=streams["init"])
    engine.optimizer.step(engine.model.params, engine.model.grads, engine.lr_at(0))

A run's plan holds the values (:class:`fmnist_mlp.config.plan.EngineSpec`, filled in from its
config by :func:`fmnist_mlp.config.plan.engine_spec`); this module knows nothing of configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Engine:
    """What a spec builds: the network, the optimiser over its parameters, and the learning
    rate at each step."""

    model: Any
    optimizer: Any
    lr_at: Callable[[int], float]


def build_engine(spec: Any, init_rng=None) -> Engine:
    """Model, optimiser and schedule from their arguments, ``spec``'s plain values: ``model``
    (MLP's keyword arguments), ``optimizer`` (make_optimizer's, with its ``name``), ``schedule``
    (make_schedule's), ``kernels`` and ``seed`` (a plan's EngineSpec holds them). The weights are
    drawn from ``init_rng`` (a ``np.random.Generator``: a training run's ``init`` stream), else
    seeded by ``spec.seed``."""
    from fmnist_mlp.nn.model import MLP
    from fmnist_mlp.nn.optim import make_optimizer
    from fmnist_mlp.nn.schedules import make_schedule

    model = MLP(**spec.model, seed=spec.seed if init_rng is None else init_rng,
                kernels=spec.kernels)
    settings = dict(spec.optimizer)
    optimizer = make_optimizer(settings.pop("name"), model.params, kernels=spec.kernels,
                               **settings)
    return Engine(model, optimizer, make_schedule(**spec.schedule))
