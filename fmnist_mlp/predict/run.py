"""Predict image files with one trained model or the mean of several: read, preprocess, score."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.predict.images import ImageReadError, expand_paths, read_grayscale, require_pillow
from fmnist_mlp.predict.preprocess import SIDE, to_fashion_mnist


@dataclass
class Predictions:
    files: list[Path]                     # the images predicted, in order
    outputs: np.ndarray                   # (N, 10) averaged outputs (probabilities for softmax)
    failures: list[tuple[Path, str]] = field(default_factory=list)   # (file, one-line reason)

    def top(self, k: int) -> list[list[int]]:
        """Each image's k best classes, best first (ties: the lower class index first)."""
        order = np.argsort(-self.outputs, axis=1, kind="stable")
        return order[:, :k].tolist()


def load_pixels(arguments: Sequence[str | Path]) -> tuple[list[Path], np.ndarray,
                                                          list[tuple[Path, str]]]:
    """Image files and directories -> (files, (N, 28, 28) uint8 images, failures)."""
    require_pillow()
    files, failures = expand_paths(arguments)
    used, images = [], []
    for path in files:
        try:
            images.append(to_fashion_mnist(read_grayscale(path)))
        except ImageReadError as exc:
            failures.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        used.append(path)
    stack = np.stack(images) if images else np.zeros((0, SIDE, SIDE), np.uint8)
    return used, stack, failures


def predict_files(members: Sequence[Any], arguments: Sequence[str | Path],
                  save_dir: Path | None = None) -> Predictions:
    """Score every readable image with the mean of ``members``' outputs (TrainedModel objects)."""
    from fmnist_mlp.scoring.ensemble import ensemble_outputs

    files, images, failures = load_pixels(arguments)
    if save_dir is not None and files:
        save_preprocessed(files, images, save_dir)
    outputs = (ensemble_outputs(members, images.reshape(len(files), -1)) if files
               else np.zeros((0, 10), np.float32))
    return Predictions(files, outputs, failures)


def save_preprocessed(files: Sequence[Path], images: np.ndarray, save_dir: Path) -> list[Path]:
    """Write each 28×28 image the network saw as ``<save_dir>/<file stem>.png``; a name already
    taken (two inputs with one stem, or a file that was there before) gets ``-2``, ``-3`` …"""
    from PIL import Image

    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--save-preprocessed {save_dir}: cannot create the folder "
                          f"({exc.strerror or exc})") from None
    written = []
    for path, image in zip(files, images):
        n = 1
        while True:
            target = save_dir / (f"{path.stem}.png" if n == 1 else f"{path.stem}-{n}.png")
            try:
                # Exclusive creation: a name already taken -- also by a link, dangling or not --
                # is never written through.
                with open(target, "xb") as out:
                    Image.fromarray(image).save(out, format="PNG")
                break
            except FileExistsError:
                n += 1
        written.append(target)
    return written


def as_json(predictions: Predictions, members: Sequence[Any], k: int,
            class_names: Sequence[str]) -> dict[str, Any]:
    rows = []
    for path, out, top in zip(predictions.files, predictions.outputs, predictions.top(k)):
        rows.append({"file": str(path), "label": top[0], "class_name": class_names[top[0]],
                     "top": [{"label": c, "class_name": class_names[c],
                              "probability": float(out[c])} for c in top],
                     "probabilities": [float(p) for p in out]})
    return {"models": [str(m.path) for m in members], "predictions": rows,
            "errors": [{"file": str(p), "error": msg} for p, msg in predictions.failures]}


def as_text(predictions: Predictions, k: int, class_names: Sequence[str]) -> str:
    lines = []
    for path, out, top in zip(predictions.files, predictions.outputs, predictions.top(k)):
        lines.append(f"{path}: " + ", ".join(f"{class_names[c]} {out[c]:.3f}" for c in top))
    return "\n".join(lines)
