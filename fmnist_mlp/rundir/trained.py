"""A trained model read back from disk: network, config, input normalisation, test-time flips.

Every reader of a saved model comes through here: ``eval``, ``predict``, ``export``, ensembles,
distillation's teachers and the session's final test score. A model file is a run directory's
checkpoint (best.npz, else last.npz), a .npz checkpoint or a .safetensors export.

``predict``, ``export`` and ensembles start from raw 0..255 pixel rows rather than from a dataset
split, so they need what a split carries implicitly: the run's pixel mean and std. New runs keep it
in every checkpoint; for older ones it is recomputed from the training rows the run used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fmnist_mlp.config.load import config_to_dict
from fmnist_mlp.config.schema import Config
from fmnist_mlp.config.validate import config_from_dict
from fmnist_mlp.errors import CheckpointError, ConfigError
from fmnist_mlp.rundir import files as runs
from fmnist_mlp.rundir.flips import Scorer, scorer_for


@dataclass
class TrainedModel:
    path: Path                  # the model file: a .npz checkpoint or a .safetensors export
    model: Any                  # the MLP
    config: dict[str, Any]      # the run's resolved config, as a plain dict (what exports store)
    mean: float                 # pixel mean and std the inputs are standardised with
    std: float                  # (0.0 and 1.0 for data.normalize: scale)
    cfg: Config | None = None   # the same config, checked (made from ``config`` when not given)

    def __post_init__(self) -> None:
        if self.cfg is None:
            self.cfg = config_from_dict(self.config)

    @property
    def test_flip(self) -> bool:
        return self.cfg.data.augment.test_flip

    @property
    def scorer(self) -> Scorer:
        """The model as ``eval`` scores it (flip-averaged when data.augment.test_flip)."""
        return scorer_for(self.model, self.test_flip)

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 784) raw pixels 0..255 -> (N, 784) network inputs, exactly as training made them."""
        from fmnist_mlp.data.dataset import pixels_to_inputs

        return pixels_to_inputs(pixels, self.mean, self.std, self.model.spec()["dtype"])

    def outputs(self, pixels: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(N, 10) outputs (class probabilities for softmax) of raw pixel rows, as ``eval``."""
        return self.scorer.forward(self.inputs(pixels), batch_size)


def load_trained(target: str | Path, data_dir: str | Path | None = None) -> TrainedModel:
    """A run directory (best.npz, else last.npz), a .npz checkpoint or a .safetensors export."""
    path = runs.find_checkpoint(target)
    arrays, meta = read_model_file(path)
    model, stored = model_from(arrays, meta, path)
    cfg = checked_config(stored, path)
    mean, std = _normalization(meta.get("normalization"), cfg, path, data_dir)
    return TrainedModel(path, model, config_to_dict(cfg), mean, std, cfg)


def load_model(target: str | Path) -> tuple[Scorer, Config]:
    """``(scorer, Config)`` of a saved model: the network as ``eval`` scores it (a
    :class:`~fmnist_mlp.rundir.flips.FlipAveraged` when the run set data.augment.test_flip, else
    the MLP itself) and the run's checked config."""
    network, stored, path = read_network(target)
    cfg = checked_config(stored, path)
    return scorer_for(network, cfg.data.augment.test_flip), cfg


def read_network(target: str | Path) -> tuple[Any, dict[str, Any], Path]:
    """``(MLP, stored config dict, model file)``: the network alone, its config not yet checked
    (a caller that holds the run's checked config already uses that one)."""
    path = runs.find_checkpoint(target)
    network, stored = model_from(*read_model_file(path), path)
    return network, stored, path


def read_model_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(named arrays, metadata) of a .npz checkpoint, or of a .safetensors file (by suffix)."""
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path}: an ONNX export is run with ONNX Runtime; give fmnist-mlp "
                              f"the run directory, a .npz checkpoint or a .safetensors export")
    if path.suffix == ".safetensors":
        return read_safetensors_model(path)
    ckpt = runs.load_checkpoint(path)
    return ckpt.params, ckpt.meta


def read_safetensors_model(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(named arrays, metadata) of a .safetensors export: names, dtypes and shapes read from its
    header and checked against the stored spec and the memory estimate before any tensor is read
    (:mod:`fmnist_mlp.io.model_file`)."""
    from fmnist_mlp.io.model_file import read_safetensors
    from fmnist_mlp.rundir.checkpoint_check import expected_model_arrays

    path = Path(path)
    return read_safetensors(path, lambda meta: expected_model_arrays(meta["model_spec"], path))


def model_from(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], path: Path):
    """``(MLP, config dict)`` rebuilt from a model file's arrays and its spec and config."""
    from fmnist_mlp.nn import MLP

    spec, config = meta.get("model_spec"), meta.get("config")
    if not isinstance(spec, dict) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its model spec or config")
    try:
        model = MLP(**spec)
        model.load_state_dict(arrays)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: parameters do not fit the stored model spec ({exc})") from None
    # Training never saves a non-finite epoch (a NaN loss stops the run first), so one here is
    # damage: scored, it gives NaN everywhere and screens of NumPy warnings.
    for name, array in arrays.items():
        if np.issubdtype(np.asarray(array).dtype, np.floating) and not np.isfinite(array).all():
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values (a damaged "
                                  f"model); use another checkpoint")
    return model, config


def checked_config(config: Mapping[str, Any], path: Path) -> Config:
    """The stored config checked, keys added to the schema since filled in at their defaults."""
    try:
        return config_from_dict(config)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config is not valid ({exc})") from None


MAX_STANDARDISED = 1e6     # |(pixel − mean) / std| a stored normalisation may give a 0..1 pixel


def _normalization(stored: Any, cfg: Config, path: Path,
                   data_dir: str | Path | None) -> tuple[float, float]:
    if cfg.data.normalize == "scale":
        return 0.0, 1.0
    if stored is not None:
        try:
            mean, std = float(stored["mean"]), float(stored["std"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: its stored normalization is not valid") from None
        # Pixels 0..1 standardised must stay ordinary numbers: a std of 1e-320 passes "> 0" and
        # turns every input into inf, every probability into NaN. A real training set's
        # standardised pixels stay within a few thousand even for a nearly blank one.
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0
                and max(abs(mean), abs(1.0 - mean)) / std <= MAX_STANDARDISED):
            raise CheckpointError(f"{path}: its stored normalization (mean {mean:g}, std {std:g}) "
                                  f"is not valid: pixels 0..1 standardised with it would pass "
                                  f"±{MAX_STANDARDISED:g} (damaged)")
        return mean, std
    # Checkpoints written before the normalisation was stored: recompute it from the dataset.
    from fmnist_mlp.config.plan import load_splits

    splits = load_splits(cfg, data_dir)
    return float(splits.mean), float(splits.std)
