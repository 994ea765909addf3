"""Several trained runs scored as one: the mean of their outputs (class probabilities).

Each member keeps its own input normalisation and its own test-time flip averaging, so a member
contributes exactly what ``eval`` scores for it alone. Members must share their output units
(averaging softmax probabilities with sigmoid scores means nothing) and, to be scored on the
validation or training split, the keys that choose those rows; the test split is the same
10,000 images for every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.rundir.trained import TrainedModel, load_trained


def load_members(targets: Sequence[str | Path], data_dir: str | Path | None = None
                 ) -> list[TrainedModel]:
    members = [load_trained(t, data_dir) for t in targets]
    output_kind(members)
    return members


def output_kind(members: Sequence[TrainedModel]) -> str:
    """The members' common output units (softmax, sigmoid or linear); a mix is a ConfigError."""
    kinds = {m.model.spec()["output"] for m in members}
    if len(kinds) != 1:
        raise ConfigError("an ensemble's runs must share model.output; got "
                          + ", ".join(f"{m.path}: {m.model.spec()['output']}" for m in members))
    return kinds.pop()


def check_same_rows(members: Sequence[TrainedModel], split: str) -> None:
    """Validation and training rows depend on the split seed and the row settings
    (:func:`fmnist_mlp.config.plan.row_kwargs`): the members must agree on them."""
    if split == "test" or len(members) < 2:
        return
    first = _row_settings(members[0].cfg)
    for other in members[1:]:
        theirs = _row_settings(other.cfg)
        for key, value in first.items():
            if theirs[key] != value:
                raise ConfigError(
                    f"--split {split}: the runs disagree on {key} ({members[0].path}: {value!r}, "
                    f"{other.path}: {theirs[key]!r}), so their {split} rows differ; score an "
                    f"ensemble of such runs on the test split")


def _row_settings(cfg) -> dict[str, Any]:
    from fmnist_mlp.config.plan import row_kwargs

    kwargs = row_kwargs(cfg)
    return {"the split seed (data.split_seed, else seed)": kwargs.pop("seed"),
            **{f"data.{key}": value for key, value in kwargs.items()}}


def mean_outputs(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """(N, K) mean of the members' (N, K) outputs; one member's are returned unchanged."""
    if len(outputs) == 1:
        return outputs[0]
    total = np.array(outputs[0], dtype=np.result_type(*outputs))
    for out in outputs[1:]:
        total += out
    total /= len(outputs)
    return total


def ensemble_outputs(members: Sequence[TrainedModel], pixels: np.ndarray) -> np.ndarray:
    """(N, K) averaged outputs of raw pixel rows (N, 784), each member as ``eval`` scores it."""
    return mean_outputs([m.outputs(pixels) for m in members])
