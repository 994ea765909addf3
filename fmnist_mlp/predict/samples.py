"""A few Fashion-MNIST test images as PNG files: something to try ``predict`` on (the tour's
``photos/``), written as the dataset stores them (28×28, light object on black)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from fmnist_mlp.data.facts import CLASS_NAMES
from fmnist_mlp.errors import ConfigError
from fmnist_mlp.io.files import TargetExists, atomic_write
from fmnist_mlp.io.paths import make_dirs
from fmnist_mlp.io.reader import read_regular

TOUR_IMAGES = (0, 4, 18)          # an ankle boot, a shirt and a bag: the README's tour


def class_slug(label: int) -> str:
    """A class name as a file name: "Ankle boot" -> "ankle-boot", "T-shirt/top" -> "t-shirt-top"."""
    return re.sub(r"[^a-z0-9]+", "-", CLASS_NAMES[label].lower()).strip("-")


def write_test_images(folder: str | Path, indices: Sequence[int] = TOUR_IMAGES,
                      data_dir: str | Path | None = None) -> list[Path]:
    """Write test images ``indices`` as ``<folder>/<class>-<index>.png``; returns the paths.

    Each file goes through the one writer (complete or absent, never through a link). A file
    already there with the same picture is kept, so the command can run again; one with other
    content is refused (ConfigError), never overwritten."""
    import io

    from PIL import Image

    from fmnist_mlp.data import load_raw

    raw = load_raw(data_dir, progress=False)
    count = raw.test_labels.shape[0]
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ConfigError(f"--index {bad[0]}: the test split has images 0..{count - 1}")
    folder = make_dirs(folder, "folder", ConfigError)
    written = []
    for i in indices:
        buffer = io.BytesIO()
        Image.fromarray(raw.test_images[i]).save(buffer, format="PNG")
        target = folder / f"{class_slug(int(raw.test_labels[i]))}-{i}.png"
        try:
            atomic_write(target, buffer.getvalue(), mode=0o666, replace=False)
        except TargetExists:
            try:
                same = read_regular(target, "image", len(buffer.getvalue()),
                                    error=ConfigError) == buffer.getvalue()
            except ConfigError:             # a link, a device, a larger file: not ours
                same = False
            if not same:
                raise ConfigError(f"{target}: already exists with another picture; remove it "
                                  f"or choose another folder") from None
        written.append(target)
    return written
