"""The model a server answers with: the runs ``predict`` takes, loaded by the same loaders and
checks, scored as ``eval`` scores them, and named by what identifies it (/version)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmnist_mlp.data.facts import CLASS_NAMES, NUM_FEATURES


@dataclass(frozen=True)
class ServedModel:
    members: tuple[Any, ...]          # TrainedModel objects (fmnist_mlp.rundir.trained)
    identity: dict[str, Any]          # what /version answers

    @property
    def macs_per_image(self) -> int:
        """Multiply-adds one image costs: every member's weights, twice with test-time flips."""
        return sum(sum(w.size for name, w in m.model.params.items() if name.endswith(".W"))
                   * (2 if m.test_flip else 1) for m in self.members)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 784) raw pixel values 0..255 -> (N, 10) outputs, exactly as ``predict`` scores
        them (each member's normalisation and test-time flips, the members' mean). Not thread
        safe: the batcher calls it from one thread at a time."""
        from fmnist_mlp.scoring.ensemble import ensemble_outputs

        return ensemble_outputs(self.members, pixels.reshape(len(pixels), NUM_FEATURES))


def load_served(targets: Sequence[str | Path], data_dir: str | Path | None = None) -> ServedModel:
    """The runs, model files or ensemble ``predict`` would take, with its checks (a bad file is a
    CheckpointError before any socket is opened)."""
    from fmnist_mlp import __version__
    from fmnist_mlp.scoring.ensemble import load_members, output_kind

    members = load_members(list(targets), data_dir)
    identity = {"tool": "fmnist-mlp", "tool_version": __version__,
                "output": output_kind(members), "class_names": list(CLASS_NAMES),
                "models": [member_identity(m) for m in members]}
    return ServedModel(tuple(members), identity)


def member_identity(member: Any) -> dict[str, Any]:
    """One member as /version names it: its file, its run, a digest of its resolved config and of
    the weights served, and the test accuracy its run recorded (None when there is no run)."""
    from fmnist_mlp.io.printable import valid_text

    run_dir, summary = _run_of(member.path)
    return {"model_file": valid_text(str(member.path)),
            "run": valid_text(str(run_dir)) if run_dir else None,
            "run_name": summary.get("name") if isinstance(summary.get("name"), str) else None,
            "config_sha256": hashlib.sha256(json.dumps(member.config, sort_keys=True)
                                            .encode()).hexdigest(),
            "weights_sha256": weights_digest(member.model),
            "test_acc": _number(summary.get("test_acc")),
            "best_val_acc": _number(summary.get("best_val_acc")),
            "hidden": list(member.model.spec()["hidden"]), "test_flip": member.test_flip}


def weights_digest(model: Any) -> str:
    """SHA-256 over every parameter and buffer served (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    arrays = {**model.params, **getattr(model, "buffers", {})}
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _run_of(model_file: Path) -> tuple[Path | None, dict[str, Any]]:
    """The run directory a checkpoint sits in (RUN/checkpoints/best.npz) and its summary, if
    readable; a model file outside a run has neither."""
    from fmnist_mlp.errors import CheckpointError
    from fmnist_mlp.rundir import layout
    from fmnist_mlp.rundir.files import read_summary

    parent = model_file.parent
    if parent.name != layout.CHECKPOINTS:
        return None, {}
    run_dir = parent.parent
    try:
        return run_dir, read_summary(run_dir)
    except CheckpointError:
        return run_dir, {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
