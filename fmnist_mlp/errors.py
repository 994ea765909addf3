"""The package's own exceptions.

Everything the tool raises on purpose derives from :class:`FmnistMlpError`, so the CLI can turn
it into a one-line message and an exit code in a single place.
"""


class FmnistMlpError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class ConfigError(FmnistMlpError, ValueError):
    """A malformed, unknown or out-of-range configuration value."""

    exit_code = 2


class DataError(FmnistMlpError):
    """The dataset could not be found, fetched, read or verified."""


class CheckpointError(FmnistMlpError):
    """A checkpoint or run directory is missing, truncated or not ours."""


class TrainingDivergedError(FmnistMlpError):
    """The loss became NaN or infinite."""

    exit_code = 3


class TrainingInterrupted(FmnistMlpError):
    """Ctrl-C (or SIGTERM) stopped training; the last completed epoch is what gets saved."""

    exit_code = 130


class TrainingPruned(FmnistMlpError):
    """Raised by a callback (a sweep's pruner) to stop a run that is clearly behind; the run is
    marked ``pruned`` and keeps its checkpoints."""


class ImageReadError(FmnistMlpError):
    """One input file of ``predict`` could not be used; the others are still predicted."""


class MissingExtra(ConfigError):
    """An optional package a feature needs is not installed (a setup error: exit 2, as usage)."""


# import name -> the name pip knows it by, where they differ
_PACKAGE_NAMES = {"PIL": "pillow"}


def require_extra(module: str, extra: str, feature: str | None = None):
    """Import and return ``module``, or raise :class:`MissingExtra` with one line saying how to
    install it: "<feature> needs <package>: pip install -e '.[<extra>]'" ("install <package>: ..."
    when no feature is named)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = _PACKAGE_NAMES.get(module.partition(".")[0], module.partition(".")[0])
        what = f"{feature} needs {package}" if feature else f"install {package}"
        raise MissingExtra(f"{what}: pip install -e '.[{extra}]'") from None
