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
