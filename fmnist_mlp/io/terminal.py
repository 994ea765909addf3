"""The one door to the terminal: every byte the tool writes on stdout or stderr passes here.

Two kinds of output, two functions:

- :func:`show` -- text for people (messages, tables, reports, progress lines), on stderr or
  stdout. It goes through :func:`fmnist_mlp.io.printable.printable`: a run name, a journal's
  ``run_dir`` or a file name holding ``\\x1b]0;...`` reaches the terminal as the text
  ``\\x1b]0;...``, never as an escape sequence.
- :func:`emit` -- what scripts read on stdout (a run directory, a file written, JSON): written
  exactly, byte for byte as the operating system names the path (a non-UTF-8 name included), and
  never filtered, stripped or re-encoded on the way (click strips escape sequences when stdout is
  not a terminal, which changed the path a script read).

The standard streams may be closed (``>&-``), full (``>/dev/full``) or a pipe whose reader left
(``| head``). Stderr is for people only: a write that fails there is dropped and never changes the
outcome of a command. On stdout, a reader that left or a stream that was never open raises
:class:`StdoutClosed` (exit 141, as the exit-code table says) and any other failure (a full disk)
:class:`StdoutError` (one line on stderr, exit 1) -- never a traceback, and never before the
command's own work (a training, a file written) is complete.

``tests/test_hostile_terminal.py`` scans the package for output calls (``print``,
``click.echo``, ``sys.stdout``/``sys.stderr``, a ``tqdm`` without ``file=progress_stream()``)
anywhere else.
"""

from __future__ import annotations

import errno
import os
import sys

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.io.printable import printable


class StdoutClosed(Exception):
    """Stdout was closed, or its reader went away: nothing more can be printed (exit 141)."""


class StdoutError(FmnistMlpError):
    """Stdout could not take the output (a full disk, an I/O error): one line, exit 1."""


_stderr_broken = False


def show(text: object, *, err: bool = True, end: str = "\n") -> None:
    """Text for people: made printable (control characters and escape sequences shown as
    ``\\xNN``, newlines and tabs kept) and written to stderr (default) or stdout."""
    data = (printable(text, keep_newlines=True) + end).encode("utf-8", "backslashreplace")
    (_write_stderr if err else _write_stdout)(data)


def emit(text: str | os.PathLike) -> None:
    """What scripts read on stdout, exactly: a path or JSON as one line, its bytes as the
    operating system gives them (``os.fsencode``), not filtered or re-encoded."""
    _write_stdout(os.fsencode(os.fspath(text)) + b"\n")


def flush_stdout() -> None:
    """Flush stdout at the end of a command (StdoutClosed / StdoutError as for a write)."""
    stream = sys.stdout
    if stream is None:
        return
    try:
        stream.flush()
    except (OSError, ValueError) as exc:
        _stdout_failed(exc)


def drop_stdout() -> None:
    """Send whatever stdout still holds, and anything written to it later, to /dev/null (an
    interrupted command, a reader that went away)."""
    if sys.stdout is not None:
        _silence(sys.stdout)


def progress_stream() -> "ProgressStream":
    """A file-like stream on stderr for progress bars (tqdm ``file=``) and progress lines: text is
    made printable except the carriage returns that redraw a bar; failures are dropped."""
    return ProgressStream()


class ProgressStream:
    """stderr for tqdm: ``write`` escapes control characters but ``\\r`` and ``\\n``."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        lines = text.split("\n")
        shown = "\n".join("\r".join(printable(part) for part in line.split("\r"))
                          for line in lines)
        _write_stderr(shown.encode("utf-8", "backslashreplace"))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        try:
            return sys.stderr is not None and sys.stderr.isatty()
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        if sys.stderr is None:
            raise OSError(errno.EBADF, "stderr is closed")
        return sys.stderr.fileno()


def guard_standard_streams() -> None:
    """Put ``/dev/null`` on standard descriptors 0-2 that were closed at start (``>&-``), so
    that a file the tool opens later cannot become "stdout" (a checkpoint would receive the
    printed lines, a worker started later would write into it). Stdout stays marked closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
            except OSError:
                pass


def route_warnings() -> None:
    """Python's warnings (which may quote a file name) go through :func:`show` as well."""
    import warnings

    def show_warning(message, category, filename, lineno, file=None, line=None):
        show(warnings.formatwarning(message, category, filename, lineno, line), end="")

    warnings.showwarning = show_warning


def _write_stdout(data: bytes) -> None:
    stream = sys.stdout
    if stream is None:      # closed when the process started
        raise StdoutClosed
    try:
        _write(stream, data)
    except (OSError, ValueError) as exc:
        _stdout_failed(exc)


def _stdout_failed(exc: Exception) -> None:
    _silence(sys.stdout)
    if isinstance(exc, BrokenPipeError) or isinstance(exc, ValueError) \
            or getattr(exc, "errno", None) == errno.EBADF:
        raise StdoutClosed from None
    raise StdoutError(f"cannot write to standard output "
                      f"({getattr(exc, 'strerror', None) or exc})") from None


def _write_stderr(data: bytes) -> None:
    """Stderr is for people: a closed or full stderr loses the message, nothing else."""
    global _stderr_broken
    stream = sys.stderr
    if stream is None or _stderr_broken:
        return
    try:
        _write(stream, data)
    except (OSError, ValueError):
        _stderr_broken = True
        _silence(stream)


def _write(stream, data: bytes) -> None:
    """``data`` to ``stream``'s bytes, after whatever its text layer still holds; flushed."""
    stream.flush()
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:                   # a text-only stream (a test's StringIO): the same bytes as text
        stream.write(data.decode("utf-8", "surrogateescape"))
        stream.flush()


def _silence(stream) -> None:
    """Point ``stream``'s descriptor at /dev/null, so that the bytes still in its buffer cannot
    fail again when Python flushes it at exit (which would print a warning and exit 120)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
