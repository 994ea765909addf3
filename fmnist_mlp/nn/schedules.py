"""Learning-rate schedules: pure functions of the global step (one step = one mini-batch).

``make_schedule`` returns ``lr_at(step) -> float`` for step = 0, 1, 2, … Warm-up, when asked for,
ramps linearly from lr/warmup_steps up to lr over the first ``warmup_steps`` steps, and the chosen
decay then runs over the remaining steps.
  constant     lr
  step         lr · γ^⌊s / step_size⌋
  exponential  lr · γ^(s / decay_steps)        (γ per ``decay_steps``, e.g. per epoch)
  cosine       min_lr + (lr − min_lr) · ½(1 + cos(π·s/S))
  onecycle     warm-up (30 % of the steps unless warmup_steps is given) then cosine to min_lr
where s counts steps after warm-up and S is the number of steps after warm-up.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

from fmnist_mlp.errors import ConfigError


class Decay(NamedTuple):
    """A schedule's settings in steps; ``total`` counts the steps after warm-up (at least 1)."""

    base_lr: float
    total: int
    step_size: int
    gamma: float
    min_lr: float
    decay_steps: int


def _constant(s: int, d: Decay) -> float:
    return d.base_lr


def _step(s: int, d: Decay) -> float:
    return d.base_lr * d.gamma ** (s // d.step_size)


def _exponential(s: int, d: Decay) -> float:
    return d.base_lr * d.gamma ** (s / d.decay_steps)


def _cosine(s: int, d: Decay) -> float:
    progress = min(1.0, s / d.total)
    return d.min_lr + (d.base_lr - d.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# The registry: a new schedule is its function of (steps after warm-up, settings) and its entry.
SCHEDULES: dict[str, Callable[[int, Decay], float]] = {
    "constant": _constant,
    "step": _step,
    "exponential": _exponential,
    "cosine": _cosine,
    "onecycle": _cosine,
}
# The warm-up a schedule takes when none is given, as a fraction of all steps.
DEFAULT_WARMUP_FRACTION = {"onecycle": 0.3}


def make_schedule(name: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  step_size: int = 1, gamma: float = 0.1, min_lr: float = 0.0,
                  decay_steps: int = 1) -> Callable[[int], float]:
    """The learning rate at each step for the named schedule."""
    if name not in SCHEDULES:
        raise ConfigError(f"schedule.name: {name!r} is not valid; expected one of {', '.join(SCHEDULES)}")
    if base_lr <= 0:
        raise ConfigError(f"optimizer.lr: {base_lr!r} is not valid; expected a positive number")
    if warmup_steps < 0 or step_size < 1 or decay_steps < 1 or total_steps < 0:
        raise ConfigError("schedule: warm-up, step size and step counts must be positive")
    if gamma <= 0:
        raise ConfigError(f"schedule.gamma: {gamma!r} is not valid; expected a positive number")
    if warmup_steps == 0 and name in DEFAULT_WARMUP_FRACTION:
        warmup_steps = int(round(DEFAULT_WARMUP_FRACTION[name] * total_steps))
    decayed = SCHEDULES[name]
    settings = Decay(base_lr, max(1, total_steps - warmup_steps), step_size, gamma, min_lr,
                     decay_steps)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        return decayed(step - warmup_steps, settings)

    return lr_at
