"""Every file the tool reads that someone else could have replaced is opened here: the read-side
twin of :mod:`fmnist_mlp.io.files`.

A data cache, a decoded array, a run's files, a journal or a spec may have been swapped by another
user or process for a symbolic link (to ``/dev/zero``, to someone's files), a FIFO (an ``open``
that waits for ever), a sparse file of terabytes, or a header that claims 10^13 elements. So:

- :func:`open_regular` opens without following a link where none is expected (``follow_links``:
  a file the user names on the command line may be a link) -- below a trusted ``base`` directory
  no component is followed -- with ``O_NONBLOCK``, so a FIFO cannot block the open itself; then
  ``fstat`` on the open descriptor: anything but a regular file, or more than ``max_bytes``, is a
  one-line error, before a byte is read.
- :func:`read_regular` reads such a file whole, stopping past ``max_bytes`` should it grow.
- :func:`gunzip_bounded` inflates a gzip stream and stops once it passes the size it should have
  (a 140 MB gzip can inflate to 30 GB).
- :func:`read_npy` reads a ``.npy`` header, compares shape and dtype with what the caller
  expects and the file's size with what they need, and only then reads the data.

Every failure is the caller's ``error`` (a :class:`~fmnist_mlp.errors.FmnistMlpError`) naming the
file.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.io.files import UnsafePathError, _open_dir_fd, _parts

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20


def open_regular(path: str | os.PathLike, what: str, *, max_bytes: int | None = None,
                 base: str | os.PathLike | None = None, follow_links: bool = False,
                 error: type[FmnistMlpError] = FmnistMlpError) -> BinaryIO:
    """``path`` opened for reading in binary, once it is known to be a regular file of at most
    ``max_bytes``; else ``error`` (FileNotFoundError is kept as such, for "missing" callers).

    base: a trusted directory ``path`` lies below; no component between them is followed.
    follow_links: follow a link at ``path`` itself (a file the user named); never below ``base``.
    """
    path = Path(path)
    flags = os.O_RDONLY | _NONBLOCK | _CLOEXEC | (0 if follow_links and base is None else _NOFOLLOW)
    dir_fd = None
    try:
        if base is not None:
            parts = _parts(path.relative_to(base))
            dir_fd = _open_dir_fd(Path(base), parts[:-1], create=False)
            fd = os.open(parts[-1], flags, dir_fd=dir_fd)
        else:
            fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except UnsafePathError as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{path}: is a symbolic link; a {what} is never read through a link "
                        f"(replace the link with the file itself)") from None
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: not a regular file (a device, FIFO or socket); give the "
                        f"{what} as a file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{path}: {info.st_size} bytes is too large for a {what} "
                        f"(limit {max_bytes})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike, what: str, max_bytes: int, *,
                 base: str | os.PathLike | None = None, follow_links: bool = False,
                 error: type[FmnistMlpError] = FmnistMlpError) -> bytes:
    """The bytes of regular file ``path`` (:func:`open_regular`), at most ``max_bytes``; a
    missing file is ``error`` too ("<path>: <what> not found"), except below ``base``, where it
    stays FileNotFoundError (a run's optional file)."""
    try:
        f = open_regular(path, what, max_bytes=max_bytes, base=base, follow_links=follow_links,
                         error=error)
    except FileNotFoundError:
        if base is not None:
            raise
        raise error(f"{path}: {what} not found") from None
    with f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:           # it grew after the fstat
        raise error(f"{path}: more than {max_bytes} bytes; too large for a {what}")
    return data


def gunzip_bounded(stream: BinaryIO, max_bytes: int, label: str,
                   error: type[FmnistMlpError] = FmnistMlpError) -> Iterator[bytes]:
    """The inflated contents of gzip ``stream`` in chunks; ``error`` once more than ``max_bytes``
    came out (reading stops there, however much more the stream would give)."""
    total = 0
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as inflated:
            while chunk := inflated.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise error(f"{label}: inflates to more than {max_bytes} bytes, more than "
                                f"the file it should be holds")
                yield chunk
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise error(f"{label}: corrupt or truncated gzip data ({exc or type(exc).__name__})") from None
    except OSError as exc:
        raise error(f"{label}: cannot read the file: {exc.strerror or exc}") from None


def read_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype: str, *,
             base: str | os.PathLike | None = None,
             error: type[FmnistMlpError] = FmnistMlpError):
    """The array in ``.npy`` file ``path``, once its header says ``shape`` and ``dtype`` (a dtype
    string such as ``"|u1"``, C order) and the file's size is exactly header plus data.

    Nothing past the header is read before those checks, so a header claiming 10^13 elements
    costs nothing; a MemoryError while reading is reported as ``error`` too.
    """
    import numpy as np

    shape = tuple(int(n) for n in shape)
    expected = np.dtype(dtype)
    with open_regular(path, "decoded array", base=base, error=error) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            got_shape, fortran, got_dtype = read_header(f, max_header_size=10_000)
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            raise error(f"{path}: not a .npy file ({exc})") from None
        if tuple(got_shape) != shape or got_dtype != expected or fortran or got_dtype.hasobject:
            raise error(f"{path}: holds {got_dtype.str} {tuple(got_shape)}"
                        f"{' in Fortran order' if fortran else ''}, expected {expected.str} {shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * expected.itemsize
        if os.fstat(f.fileno()).st_size != f.tell() + nbytes:
            raise error(f"{path}: {os.fstat(f.fileno()).st_size - f.tell()} bytes of data, "
                        f"expected {nbytes}")
        try:
            array = np.empty(shape, dtype=expected)
            if f.readinto(memoryview(array).cast("B")) != nbytes:
                raise error(f"{path}: truncated while being read")
        except MemoryError:
            raise error(f"{path}: not enough memory for {nbytes} bytes") from None
    return array
