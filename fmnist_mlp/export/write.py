"""``export``: load the runs, build the file's bytes, write them atomically where asked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.io.files import TargetExists, atomic_write

SUFFIXES = {"onnx": ".onnx", "safetensors": ".safetensors"}


def default_output(target: Path, fmt: str) -> Path:
    """``model.<fmt>`` inside a run directory; beside a model file, with the new suffix."""
    from fmnist_mlp.rundir.layout import EXPORT_NAMES

    target = Path(target)
    if target.is_dir():
        return target / EXPORT_NAMES[fmt]
    return target.with_suffix(SUFFIXES[fmt])


def export_models(targets: Sequence[Path], fmt: str, output: Path | None = None,
                  data_dir: str | Path | None = None) -> Path:
    """Write one run (or, for ONNX, the average of several) as ``fmt``; returns the path."""
    from fmnist_mlp.data import CLASS_NAMES
    from fmnist_mlp.scoring.ensemble import load_members

    if fmt not in SUFFIXES:
        raise ConfigError(f"--format {fmt!r}: expected onnx or safetensors")
    if len(targets) > 1 and fmt != "onnx":
        raise ConfigError("--format safetensors holds one model: export each run on its own, "
                          "or several runs as one averaging graph with --format onnx")
    if len(targets) > 1 and output is None:
        raise ConfigError("exporting several runs needs -o PATH (there is no one run to put it in)")
    output = Path(output) if output is not None else default_output(targets[0], fmt)
    if os.path.lexists(output):      # said early; the final step checks again (below)
        raise ConfigError(f"-o {output}: already exists; remove it or choose another path")
    if not output.parent.is_dir():
        raise ConfigError(f"-o {output}: directory {output.parent} does not exist")
    members = load_members(targets, data_dir)
    if fmt == "onnx":
        from fmnist_mlp.export.onnx import build_onnx

        data = build_onnx(members, CLASS_NAMES).SerializeToString()
    else:
        from fmnist_mlp.export.safetensors import safetensors_bytes

        member = members[0]
        data = safetensors_bytes(
            {**member.model.params, **member.model.buffers},
            {"model_spec": member.model.spec(), "config": member.config,
             "normalization": {"mean": member.mean, "std": member.std},
             "class_names": list(CLASS_NAMES)})
    # An export is meant to be shared: created 0666 less the umask, as any new file would be.
    # replace=False: the name is taken at the last step with link(2), so a file (or a link) that
    # appeared at -o meanwhile -- another export, say -- is never replaced.
    try:
        atomic_write(output, data, mode=0o666, replace=False)
    except TargetExists:
        raise ConfigError(f"-o {output}: already exists; remove it or choose another "
                          f"path") from None
    return output
