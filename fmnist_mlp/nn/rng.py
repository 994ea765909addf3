"""One seed, separate random streams: the only place SeedSequences are spawned.

Pure NumPy (no config, no I/O), so the numerical modules may use it too. Each name gets its own
child sequence, so e.g. switching dropout on draws from the ``dropout`` stream only and leaves
the initial weights and the batch order unchanged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def spawn_streams(seed: int, names: Sequence[str]) -> dict[str, np.random.Generator]:
    """``{name: Generator}`` for each name, all spawned from ``seed``; the i-th name always gets
    the i-th child, so adding a name at the end leaves the earlier streams unchanged."""
    children = np.random.SeedSequence(int(seed)).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}
