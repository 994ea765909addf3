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
from typing import Callable

from fmnist_mlp.errors import ConfigError

SCHEDULES = ("constant", "step", "exponential", "cosine", "onecycle")


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
    if name == "onecycle" and warmup_steps == 0:
        warmup_steps = int(round(0.3 * total_steps))
    decay_total = max(1, total_steps - warmup_steps)

    def decayed(s: int) -> float:
        if name == "step":
            return base_lr * gamma ** (s // step_size)
        if name == "exponential":
            return base_lr * gamma ** (s / decay_steps)
        if name in ("cosine", "onecycle"):
            progress = min(1.0, s / decay_total)
            return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return base_lr

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        return decayed(step - warmup_steps)

    return lr_at
