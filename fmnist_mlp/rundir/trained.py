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
    def rows(self) -> dict[str, Any]:
        """Which training images trained it and which validated it: ``split_rows``' arguments."""
        from fmnist_mlp.config.plan import row_kwargs

        return row_kwargs(self.cfg)

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
    check_fashion_mnist_sizes(model, path)
    cfg = checked_config(stored, path)
    mean, std = _normalization(meta.get("normalization"), cfg, path, data_dir)
    check_outputs_finite(model, mean, std, path)
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
    """(named arrays, metadata) of a .npz checkpoint or a .safetensors file, told apart by their
    first bytes (a zip archive, or a safetensors header), not by the name's suffix: a
    ``MODEL.SAFETENSORS`` or a checkpoint copied to ``best.safetensors`` is read for what it is.
    A FIFO, device or directory is refused without being read (or waited on)."""
    from fmnist_mlp.io.model_file import check_zip_directory, file_kind

    kind = file_kind(path)
    if kind == "npz":
        check_zip_directory(path)        # before zipfile reads a directory of a million members
    if kind is None and path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path}: an ONNX export is run with ONNX Runtime; give fmnist-mlp "
                              f"the run directory, a .npz checkpoint or a .safetensors export")
    if kind == "npz" or (kind is None and path.suffix.lower() == ".npz"):
        ckpt = runs.load_checkpoint(path)
        return ckpt.params, ckpt.meta
    return read_safetensors_model(path)


def stored_model_spec(target: str | Path) -> dict[str, Any] | None:
    """The model spec a run directory or model file stores, from its headers alone (no array
    is read; a spec too large for memory is refused as loading would refuse it): for checks
    that the size alone settles, such as ONNX's 2 GB. None when the headers cannot be read that
    way; reading the model then says why."""
    import zipfile

    from fmnist_mlp.io.model_file import check_zip_directory, file_kind, read_safetensors
    from fmnist_mlp.rundir.checkpoint_check import check_members, expected_model_arrays

    class _Spec(Exception):
        pass

    def stop(meta: dict[str, Any]):          # called with the metadata, before any tensor
        raise _Spec(meta.get("model_spec"))

    try:
        path = runs.find_checkpoint(target)
        kind = file_kind(path)
        if kind == "npz":
            check_zip_directory(path)
            with zipfile.ZipFile(path) as zf:
                spec = check_members(path, zf).get("model_spec")
        elif kind == "safetensors":
            read_safetensors(path, stop)
            return None
        else:
            return None
    except _Spec as found:
        spec = found.args[0]
    except (CheckpointError, ConfigError, OSError, ValueError, zipfile.BadZipFile, KeyError):
        return None
    if not isinstance(spec, dict):
        return None
    expected_model_arrays(spec, path)      # the memory estimate speaks first, as on loading
    return spec


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


def check_fashion_mnist_sizes(model: Any, path: Path) -> None:
    """The model must score Fashion-MNIST's classes from its pixels: a 5-class model would be
    shown with the first five class names, and averaged with 10-class runs it cannot be."""
    from fmnist_mlp.data.facts import NUM_CLASSES, NUM_FEATURES

    spec = model.spec()
    if spec["input_size"] != NUM_FEATURES:
        raise CheckpointError(f"{path}: takes {spec['input_size']} inputs, not the dataset's "
                              f"{NUM_FEATURES} pixels: it cannot score Fashion-MNIST images")
    if spec["num_classes"] != NUM_CLASSES:
        raise CheckpointError(f"{path}: scores {spec['num_classes']} classes, not the dataset's "
                              f"{NUM_CLASSES}")


OVERFLOW_MARGIN = 2.0 ** 10   # outputs stay this far below the dtype's largest number


def check_outputs_finite(model: Any, mean: float, std: float, path: Path) -> None:
    """Refuse a model whose outputs can overflow for some image, before it scores any.

    Finite weights are not enough: weights of 3e38 make every float32 output inf, then NaN
    (``predict`` printed "nan", ``eval`` a loss of nan and an accuracy, exit 0). A bound on every
    unit by interval arithmetic -- inputs of pixels 0..255 standardised with (mean, std), then
    per layer |x W + b| <= sum|W|·max|x| + |b|, batch norm as its affine map, tanh and sigmoid
    at most 1 -- must stay far below the dtype's largest number (then the softmax's shift by the
    row maximum cannot overflow either). Trained models stay many orders of magnitude below it
    (a bound of ~1e19 would take ten layers each multiplying by 70); it costs one pass over the
    weights. A running variance below -eps (the square root of a negative number) is named as
    such.
    """
    from fmnist_mlp.nn.layers import batchnorm_eval_affine

    spec = model.spec()
    dtype = np.dtype(spec["dtype"])
    largest = float(np.finfo(dtype).max)
    hidden = len(spec["hidden"])
    bound = max(abs(mean), abs(1.0 - mean)) / std          # |input| for any pixel 0..255
    params, buffers = model.params, model.buffers
    with np.errstate(all="ignore"):
        for i in range(hidden + 1):
            worst_z = _column_abs_sums(params[f"layer{i}.W"]) * bound
            if i < hidden and spec["batchnorm"]:
                var = buffers[f"layer{i}.running_var"].astype(np.float64)
                if not (var + spec["bn_eps"] > 0).all():
                    raise CheckpointError(f"{path}: layer{i}.running_var holds values below "
                                          f"-bn_eps (a variance is never negative): a damaged "
                                          f"model; use another checkpoint")
                scale, shift = batchnorm_eval_affine(
                    params[f"layer{i}.gamma"].astype(np.float64),
                    params[f"layer{i}.beta"].astype(np.float64),
                    buffers[f"layer{i}.running_mean"].astype(np.float64), var, spec["bn_eps"])
                units = np.maximum(worst_z, worst_z * np.abs(scale) + np.abs(shift))
            else:
                units = worst_z + np.abs(params[f"layer{i}.b"].astype(np.float64))
            worst = float(units.max()) if units.size else 0.0
            if not worst <= largest / OVERFLOW_MARGIN:      # (also NaN)
                raise CheckpointError(
                    f"{path}: its weights can overflow: layer {i}'s units can reach {worst:.3g} "
                    f"on some image, beyond what {dtype.name} holds (a damaged model, outputs of "
                    f"inf and nan); use another checkpoint")
            if i < hidden:
                bound = min(worst, 1.0) if spec["activation"] in ("tanh", "sigmoid") else worst


def _column_abs_sums(W: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """sum_i |W[i, j]| in float64, a few rows at a time: no copy of a large layer."""
    rows = max(1, block // max(1, W.shape[1]))
    total = np.zeros(W.shape[1], np.float64)
    for start in range(0, W.shape[0], rows):
        total += np.abs(W[start:start + rows]).sum(axis=0, dtype=np.float64)
    return total


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
            mean, std = stored["mean"], stored["std"]
            # JSON numbers only: a boolean or a string is not a mean (float() would take them)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in (mean, std)):
                raise TypeError
            mean, std = float(mean), float(std)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise CheckpointError(f"{path}: its stored normalization is not valid") from None
        # Pixels 0..1 standardised must stay ordinary numbers: a std of 1e-320 passes "> 0" and
        # turns every input into inf, every probability into NaN. A real training set's
        # standardised pixels stay within a few thousand even for a nearly blank one. And it is
        # the mean and std of pixels in 0..1: the mean lies in 0..1, the std is at most 0.5 (1.0
        # for an empty set) -- so {mean 1e308, std 1e308}, which float32 turns into inf, is no
        # training set's.
        if not (np.isfinite(mean) and np.isfinite(std) and 0.0 <= mean <= 1.0
                and 0.0 < std <= 1.0
                and max(abs(mean), abs(1.0 - mean)) / std <= MAX_STANDARDISED):
            raise CheckpointError(f"{path}: its stored normalization (mean {mean:g}, std {std:g}) "
                                  f"is not valid: pixels 0..1 standardised with it would pass "
                                  f"±{MAX_STANDARDISED:g} (damaged)")
        return mean, std
    # Checkpoints written before the normalisation was stored: recompute it from the dataset.
    from fmnist_mlp.config.plan import load_splits

    splits = load_splits(cfg, data_dir)
    return float(splits.mean), float(splits.std)
