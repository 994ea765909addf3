"""A trained model ready for raw pixels: network, config, input normalisation, test-time flips.

``predict``, ``export`` and ensembles start from raw 0..255 pixel rows rather than from a dataset
split, so they need what a split carries implicitly: the run's pixel mean and std. New runs keep it
in every checkpoint; for older ones it is recomputed from the training rows the run used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmnist_mlp.rundir import files as runs
from fmnist_mlp.config.schema import config_from_dict
from fmnist_mlp.errors import CheckpointError


@dataclass
class TrainedModel:
    path: Path                  # the model file: a .npz checkpoint or a .safetensors export
    model: Any                  # the MLP
    config: dict[str, Any]      # the run's resolved config
    mean: float                 # pixel mean and std the inputs are standardised with
    std: float                  # (0.0 and 1.0 for data.normalize: scale)

    @property
    def test_flip(self) -> bool:
        return bool(self.config["data"]["augment"]["test_flip"])

    @property
    def scorer(self):
        """The model as ``eval`` scores it (flip-averaged when data.augment.test_flip)."""
        from fmnist_mlp.config.plan import build_scorer

        return build_scorer(self.model, self.config)

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 784) raw pixels 0..255 -> (N, 784) network inputs, exactly as training made them."""
        from fmnist_mlp.data.dataset import pixels_to_inputs

        return pixels_to_inputs(pixels, self.mean, self.std, self.model.spec()["dtype"])

    def outputs(self, pixels: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N, 10) outputs (class probabilities for softmax) of raw pixel rows, as ``eval``."""
        return self.scorer.forward(self.inputs(pixels), batch_size)


def load_trained(target: str | Path, data_dir: str | Path | None = None) -> TrainedModel:
    """A run directory (best.npz, else last.npz), a .npz checkpoint or a .safetensors export."""
    from fmnist_mlp.training.session import model_from, read_model_file

    path = runs.find_checkpoint(target)
    arrays, meta = read_model_file(path)
    model, config = model_from(arrays, meta, path)
    config = _resolved(config, path)
    mean, std = _normalization(meta.get("normalization"), config, path, data_dir)
    return TrainedModel(path, model, config, mean, std)


def _resolved(config: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The stored config with every key present (keys added since, at their defaults)."""
    from fmnist_mlp.config.schema import config_to_dict
    from fmnist_mlp.errors import ConfigError

    try:
        return config_to_dict(config_from_dict(config))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config is not valid ({exc})") from None


def _normalization(stored: Any, config: Mapping[str, Any], path: Path,
                   data_dir: str | Path | None) -> tuple[float, float]:
    if config["data"]["normalize"] == "scale":
        return 0.0, 1.0
    if stored is not None:
        try:
            mean, std = float(stored["mean"]), float(stored["std"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: its stored normalization is not valid") from None
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise CheckpointError(f"{path}: its stored normalization is not valid")
        return mean, std
    # Checkpoints written before the normalisation was stored: recompute it from the dataset.
    from fmnist_mlp.training.session import load_splits_for

    splits = load_splits_for(config, data_dir)
    return float(splits.mean), float(splits.std)
