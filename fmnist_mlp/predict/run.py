"""Predict image files with one trained model or the mean of several: read, preprocess, score."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmnist_mlp.data.facts import NUM_CLASSES
from fmnist_mlp.errors import ConfigError
from fmnist_mlp.io.files import FileWriteError, TargetExists, atomic_write
from fmnist_mlp.io.paths import check_new_dirs
from fmnist_mlp.io.printable import printable, valid_text
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
        except ValueError as exc:           # e.g. a picture of zero pixels
            failures.append((path, f"not a usable image ({exc})"))
            continue
        except MemoryError:                 # preprocessing, as decoding: this file alone fails
            failures.append((path, "not enough memory to preprocess it"))
            continue
        used.append(path)
    stack = np.stack(images) if images else np.zeros((0, SIDE, SIDE), np.uint8)
    return used, stack, failures


def predict_files(members: Sequence[Any], arguments: Sequence[str | Path],
                  save_dir: str | Path | None = None) -> Predictions:
    """Score every readable image with the mean of ``members``' outputs (TrainedModel objects).

    ``save_dir`` as the user typed it: an empty name (an unset shell variable) is refused, not
    taken for the current directory.
    """
    from fmnist_mlp.scoring.ensemble import ensemble_outputs

    if save_dir is not None:
        if os.fspath(save_dir) == "":
            raise ConfigError("--save-preprocessed '': an empty name; give the folder to write "
                              "the images into")
        save_dir = Path(save_dir)
    files, images, failures = load_pixels(arguments)
    if save_dir is not None and files:
        try:
            save_preprocessed(files, images, save_dir)
        except FileWriteError as exc:        # a full disk: said, and the predictions still made
            target = exc.path if isinstance(getattr(exc, "path", None), Path) else save_dir
            failures.append((target, str(exc).removeprefix(f"{target}: ")))
    outputs = (ensemble_outputs(members, images.reshape(len(files), -1)) if files
               else np.zeros((0, NUM_CLASSES), np.float32))
    return Predictions(files, outputs, failures)


def save_preprocessed(files: Sequence[Path], images: np.ndarray, save_dir: Path) -> list[Path]:
    """Write each 28×28 image the network saw as ``<save_dir>/<file stem>.png``; a name already
    taken (two inputs with one stem, or a file that was there before) gets ``-2``, ``-3`` …

    Each file is written by the one safe writer (:func:`fmnist_mlp.io.files.atomic_write`):
    complete or absent, never through a link, never over a name already taken; a stem too long
    for its suffix is shortened. A write that fails (a full disk) is a ``FileWriteError`` naming
    the file, its ``path`` attribute set.
    """
    import io

    from PIL import Image

    check_new_dirs(save_dir, "--save-preprocessed", ConfigError)
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if os.path.islink(save_dir) and not save_dir.exists():
            reason = "a symbolic link to a missing folder"
        elif save_dir.exists() and not save_dir.is_dir():
            reason = "not a folder (a file or device is there)"
        else:
            reason = f"cannot create the folder ({exc.strerror or exc})"
        raise ConfigError(f"--save-preprocessed {save_dir}: {reason}") from None
    written = []
    for path, image in zip(files, images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        n = 1
        while True:
            target = save_dir / _fitted(path.stem, ".png" if n == 1 else f"-{n}.png")
            try:
                atomic_write(target, buffer.getvalue(), mode=0o666, replace=False)
                break
            except TargetExists:
                n += 1
            except FileWriteError as exc:
                exc.path = target
                raise
        written.append(target)
    return written


def _fitted(stem: str, suffix: str, limit: int = 255) -> str:
    """``stem + suffix`` with the stem cut (by bytes) so that the name fits in ``limit`` bytes."""
    raw, tail = os.fsencode(stem), os.fsencode(suffix)
    if len(raw) + len(tail) <= limit:
        return stem + suffix
    return os.fsdecode(raw[:limit - len(tail)]) + suffix


def as_json(predictions: Predictions, members: Sequence[Any], k: int,
            class_names: Sequence[str]) -> dict[str, Any]:
    """One JSON document. Names are valid Unicode: the bytes of a name that is not UTF-8 appear
    as the four characters ``\\xNN`` (:func:`fmnist_mlp.io.printable.valid_text`)."""
    rows = []
    for path, out, top in zip(predictions.files, predictions.outputs, predictions.top(k)):
        rows.append({"file": valid_text(str(path)), "label": top[0],
                     "class_name": class_names[top[0]],
                     "top": [{"label": c, "class_name": class_names[c],
                              "probability": float(out[c])} for c in top],
                     "probabilities": [float(p) for p in out]})
    return {"models": [valid_text(str(m.path)) for m in members], "predictions": rows,
            "errors": [{"file": valid_text(str(p)), "error": valid_text(msg)}
                       for p, msg in predictions.failures]}


def as_text(predictions: Predictions, k: int, class_names: Sequence[str]) -> str:
    lines = []
    for path, out, top in zip(predictions.files, predictions.outputs, predictions.top(k)):
        lines.append(f"{printable(path)}: "
                     + ", ".join(f"{class_names[c]} {out[c]:.3f}" for c in top))
    return "\n".join(lines)


def error_lines(predictions: Predictions) -> list[str]:
    """One ``error: FILE: reason`` line per file that could not be used, safe for a terminal."""
    return [f"error: {printable(path)}: {printable(message)}"
            for path, message in predictions.failures]
