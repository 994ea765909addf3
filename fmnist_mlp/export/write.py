"""``export``: load the runs, build the file's bytes, write them atomically where asked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fmnist_mlp.errors import ConfigError
from fmnist_mlp.io.files import TargetExists, atomic_write

SUFFIXES = {"onnx": ".onnx", "safetensors": ".safetensors"}
# suffixes that name a model format (any case): -o may not carry another format's
_MODEL_SUFFIXES = {".onnx": "onnx", ".safetensors": "safetensors", ".npz": "npz"}


def default_output(target: Path, fmt: str) -> Path:
    """``model.<fmt>`` inside a run directory; beside a model file, with the new suffix."""
    from fmnist_mlp.rundir.layout import EXPORT_NAMES

    target = Path(target)
    if target.is_dir():
        return target / EXPORT_NAMES[fmt]
    return target.with_suffix(SUFFIXES[fmt])


ONNX_MAX_BYTES = (1 << 31) - (1 << 24)   # protobuf's 2 GB, less room for the graph itself


def _check_onnx_size(targets: Sequence[Path]) -> None:
    """An ONNX file is one protobuf message of at most 2 GB: weights past it are refused from the
    stored specs alone, before a model of gigabytes is loaded and copied into a graph (a 2.4 GB
    model took 9.2 GB and 37 s, then protobuf's EncodeError)."""
    from fmnist_mlp.io.memory import format_bytes
    from fmnist_mlp.nn.memory import parameter_count
    from fmnist_mlp.rundir.trained import stored_model_spec

    total = 0
    for target in targets:
        spec = stored_model_spec(target)
        try:
            widths = [spec["input_size"], *spec["hidden"], spec["num_classes"]]
            itemsize = 8 if spec.get("dtype") == "float64" else 4
            if not all(type(w) is int and w > 0 for w in widths):
                continue
        except (TypeError, KeyError):
            continue                   # unreadable here: loading the model says why
        total += parameter_count(widths[0], widths[1:-1], widths[-1]) * itemsize
    if total > ONNX_MAX_BYTES:
        raise ConfigError(f"--format onnx: the weights take {format_bytes(total)}; ONNX files "
                          f"hold at most 2 GB (protobuf's limit); use --format safetensors")


def export_models(targets: Sequence[Path], fmt: str, output: str | Path | None = None,
                  data_dir: str | Path | None = None) -> Path:
    """Write one run (or, for ONNX, the average of several) as ``fmt``; returns the path.

    ``output`` as the user typed it: ``out/`` names a folder (Path() would drop the slash and
    write a file named ``out``), ``-`` is not stdout here, and an empty name is not ``.``.
    """
    from fmnist_mlp.scoring.ensemble import load_members

    _check_request(targets, fmt, output)
    given = output is not None
    output = Path(output) if given else default_output(targets[0], fmt)
    _refuse_input_as_output(targets, output)
    _check_output(output, fmt, given)
    if fmt == "onnx":
        _check_onnx_size(targets)
    members = load_members(targets, data_dir)
    data = _onnx_bytes(members) if fmt == "onnx" else _safetensors_bytes(members[0])
    # An export is meant to be shared: created 0666 less the umask, as any new file would be.
    # replace=False: the name is taken at the last step with link(2), so a file (or a link) that
    # appeared at -o meanwhile -- another export, say -- is never replaced.
    try:
        atomic_write(output, data, mode=0o666, replace=False)
    except TargetExists:
        raise ConfigError(_exists(output, given)) from None
    return output


def _exists(output: Path, given: bool) -> str:
    """The one-line refusal of a name already taken, naming -o only when it was given."""
    if given:
        return f"-o {output}: already exists; remove it or choose another path"
    return (f"{output}: already exists (exported before: the default file); remove it, or "
            f"give another with -o PATH")


def _check_request(targets: Sequence[Path], fmt: str, output: str | Path | None) -> None:
    """The format, the number of runs and ``-o`` as typed, before anything is read."""
    if fmt not in SUFFIXES:
        raise ConfigError(f"--format {fmt!r}: expected onnx or safetensors")
    if len(targets) > 1 and fmt != "onnx":
        raise ConfigError("--format safetensors holds one model: export each run on its own, "
                          "or several runs as one averaging graph with --format onnx")
    if len(targets) > 1 and output is None:
        raise ConfigError("exporting several runs needs -o PATH (there is no one run to put it in)")
    if output is None:
        return
    text = os.fspath(output)
    if text == "":
        raise ConfigError("-o '': an empty name; give the file's name")
    if text == "-":
        raise ConfigError("-o -: export writes a file, not stdout; give the file's name")
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
        raise ConfigError(f"-o {text}: names a folder; give the file's name, e.g. "
                          f"{os.path.join(text, 'model' + SUFFIXES.get(fmt, ''))}")


def _refuse_input_as_output(targets: Sequence[Path], output: Path) -> None:
    """``-o`` (or the default beside a model file) naming one of the models being exported: it is
    an input, and "remove it" would be the wrong advice."""
    for target in targets:
        same = os.path.abspath(target) == os.path.abspath(output)
        try:
            same = same or os.path.samefile(target, output)
        except OSError:
            pass
        if same:
            raise ConfigError(f"{output}: is the model being exported, and the export would "
                              f"replace it; give another name with -o")


def _check_output(output: Path, fmt: str, given: bool = True) -> None:
    """A new file of its format's name in an existing folder (said early; the write checks
    again at its last step)."""
    # An ONNX graph named .safetensors (or the reverse) is read by the next tool as the other
    # format: "its header claims 7597129906443651080 bytes". Other suffixes are the user's.
    named_for = _MODEL_SUFFIXES.get(output.suffix.lower())
    if named_for is not None and named_for != fmt:
        raise ConfigError(f"-o {output}: the name says {named_for}, --format says {fmt}; name it "
                          f"{output.with_suffix(SUFFIXES[fmt]).name} (or export --format "
                          f"{named_for})" if named_for in SUFFIXES else
                          f"-o {output}: a .npz name is a checkpoint's; --format {fmt} writes "
                          f"{SUFFIXES[fmt]} files")
    if os.path.lexists(output):
        raise ConfigError(_exists(output, given))
    if not output.parent.is_dir():
        raise ConfigError(f"-o {output}: directory {output.parent} does not exist")


def _onnx_bytes(members) -> bytes:
    from fmnist_mlp.data import CLASS_NAMES
    from fmnist_mlp.export.onnx import build_onnx

    try:
        return build_onnx(members, CLASS_NAMES).SerializeToString()
    except Exception as exc:       # protobuf's EncodeError: past 2 GB after all
        if not type(exc).__module__.startswith("google.protobuf"):
            raise
        raise ConfigError(f"the ONNX graph cannot be written ({exc}): ONNX files hold at "
                          f"most 2 GB; use --format safetensors") from None


def _safetensors_bytes(member) -> bytes:
    from fmnist_mlp.data import CLASS_NAMES
    from fmnist_mlp.export.safetensors import safetensors_bytes

    return safetensors_bytes(
        {**member.model.params, **member.model.buffers},
        {"model_spec": member.model.spec(), "config": member.config,
         "normalization": {"mean": member.mean, "std": member.std},
         "class_names": list(CLASS_NAMES)})
