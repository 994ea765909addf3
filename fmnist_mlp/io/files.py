"""Every file the tool writes is created by the tool: atomic writes and link-refusing opens.

- :func:`atomic_write` puts bytes in a new temporary file beside the target (created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``, so it can never be a link planted in advance), fsyncs it and
  renames it over the target: a reader sees the old file or the new one, never half of either.
  Temporary names say who made them (``.<target>.<pid>-<hex>.fmnist-mlp.tmp``), so leftovers of a
  SIGKILL are recognised and removed by the next write (their process is gone).
- :func:`open_inside` / :func:`dir_inside` open a path *below* a trusted directory (a run
  directory) one component at a time with ``O_NOFOLLOW``: a ``train.log``, ``checkpoints`` or
  ``plots`` planted as a symbolic link is refused with one line instead of being followed.
- :class:`OpenDir` opens a directory once and writes its entries relative to that descriptor
  (``openat``), so a folder checked and then swapped for a link is never written through.

Reading is the twin module :mod:`fmnist_mlp.io.reader`.

Every failure is a :class:`~fmnist_mlp.errors.FmnistMlpError` naming the file.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Callable, Iterator, Sequence

from fmnist_mlp.errors import FmnistMlpError

TMP_SUFFIX = ".fmnist-mlp.tmp"
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}" + re.escape(TMP_SUFFIX) + "$")
# Names the previous versions gave their temporaries (mkstemp, pid-only): removed only where the
# caller holds the directory's lock, since their owner cannot be told from the name.
_LEGACY_TMP_RE = re.compile(r"^\.(?P<target>config\.yaml|summary\.json|metrics\.jsonl|"
                            r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*?\.(?:npz|png|npy|gz))\.[A-Za-z0-9_]+\.(tmp|part)$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class UnsafePathError(FmnistMlpError):
    """A path inside a directory the tool owns is a symbolic link or not what it should be."""


class FileWriteError(FmnistMlpError):
    """Writing a file failed (disk full, read-only, permissions): the message names the file."""


class TargetExists(FileWriteError):
    """``atomic_write(..., replace=False)``: the name was taken (by a file, a folder or a link,
    dangling or not) when the new file was put in place; nothing was replaced."""


# ---------------------------------------------------------------------------------------------
# Opening below a trusted directory without following links


def _parts(relative: str | os.PathLike) -> list[str]:
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{relative!r}: expected a plain relative path")
    return list(parts)


def _link_error(path: Path) -> UnsafePathError:
    return UnsafePathError(f"{path}: is a symbolic link or not a regular entry; refusing to follow "
                           f"it inside a run directory (remove it, or restore the run's own file)")


def _open_dir_fd(base: Path, parts: Sequence[str], create: bool) -> int:
    """An O_DIRECTORY fd of ``base/parts...``; each component is opened with O_NOFOLLOW."""
    try:
        fd = os.open(base, os.O_RDONLY | _DIRECTORY)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "No such directory", str(base)) from None
    except OSError as exc:
        raise FileWriteError(f"{base}: cannot open directory ({exc.strerror or exc})") from None
    path = base
    try:
        for part in parts:
            path = path / part
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise FileWriteError(f"{path}: cannot create directory "
                                         f"({exc.strerror or exc})") from None
            try:
                child = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _link_error(path) from None
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, "No such directory", str(path)) from None
                raise FileWriteError(f"{path}: cannot open directory ({exc.strerror or exc})") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def dir_inside(base: str | os.PathLike, relative: str | os.PathLike, create: bool = True) -> Path:
    """``base/relative`` as a real directory (created if ``create``); links inside are refused."""
    fd = _open_dir_fd(Path(base), _parts(relative), create)
    os.close(fd)
    return Path(base) / relative


class OpenDir:
    """A directory opened once (``openat``-style): every entry written or read through it is
    relative to that open descriptor, so the directory swapped for a link after it was checked
    changes nothing. ``handle / "name.png"`` is a :class:`DirEntry` for writers such as
    :func:`fmnist_mlp.plots.plot_run`'s. Use as a context manager (it closes the descriptor)."""

    def __init__(self, base: str | os.PathLike, relative: str | os.PathLike, create: bool = True):
        self.path = Path(base) / relative
        self.fd = _open_dir_fd(Path(base), _parts(relative), create)

    def write(self, name: str, data: bytes | Callable[[object], None], *, mode: int = 0o644,
              fsync: bool = True, replace: bool = True) -> Path:
        """:func:`atomic_write` of ``name`` in this directory; returns its path."""
        path = self.path / _parts(name)[0]
        _write_at(self.fd, path, data, mode=mode, fsync=fsync, replace=replace)
        return path

    def __truediv__(self, name: str) -> "DirEntry":
        return DirEntry(self, name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OpenDir":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class DirEntry(os.PathLike):
    """``name`` in an :class:`OpenDir`: a path for messages, written through the open directory."""

    def __init__(self, directory: OpenDir, name: str):
        self.directory, self.name = directory, name

    def __fspath__(self) -> str:
        return os.fspath(self.directory.path / self.name)

    def write(self, data: bytes | Callable[[object], None], **kwargs) -> Path:
        return self.directory.write(self.name, data, **kwargs)


def open_inside(base: str | os.PathLike, relative: str | os.PathLike, mode: str = "r",
                encoding: str | None = "utf-8"):
    """``open(base/relative, mode)`` without following a link at any component below ``base``.

    mode: "r", "rb", "r+b", "a" or "ab" ("a" creates the file). Raises UnsafePathError for a link,
    FileNotFoundError when reading a missing file.
    """
    parts = _parts(relative)
    path = Path(base).joinpath(*parts)
    flags = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT}[mode[0]]
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    dir_fd = _open_dir_fd(Path(base), parts[:-1], create=False)
    try:
        # O_NONBLOCK: a FIFO planted under the name must not block the open itself.
        fd = os.open(parts[-1], flags | _NOFOLLOW | _NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                     0o644, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):     # a link; a FIFO with no reader
            raise _link_error(path) from None
        raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _link_error(path)
    os.set_blocking(fd, True)
    binary = "b" in mode
    return os.fdopen(fd, mode, **({} if binary else {"encoding": encoding}))


# ---------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[object], None], *,
                 base: str | os.PathLike | None = None, mode: int = 0o644, fsync: bool = True,
                 replace: bool = True) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file object) to ``path`` atomically.

    base: a trusted directory ``path`` lies in; every component between them must be a real
    directory, not a link. Stale temporaries of ``path`` left by killed processes are removed.
    replace=False: a file of the user's is never replaced: the finished temporary is *linked* to
    ``path`` (``link(2)`` fails on any existing name, a dangling link included, at that very
    moment), else :class:`TargetExists`. Two writers of one new name: one wins, one is told.
    """
    path = Path(path)
    if base is not None:
        relative = path.relative_to(base)
        dir_fd = _open_dir_fd(Path(base), _parts(relative)[:-1], create=False)
    else:
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY | _DIRECTORY)
        except OSError as exc:
            raise FileWriteError(f"{path}: cannot open its folder ({exc.strerror or exc})") from None
    try:
        _write_at(dir_fd, path, data, mode=mode, fsync=fsync, replace=replace)
    finally:
        os.close(dir_fd)
    return path


def _write_at(dir_fd: int, path: Path, data, *, mode: int, fsync: bool, replace: bool) -> None:
    """atomic_write's steps in the open directory ``dir_fd`` (``path`` names the file in errors;
    its last component is the entry written)."""
    _remove_stale(dir_fd, path.parent, only_target=path.name)
    tmp_name = f".{_tmp_target(path.name)}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        # Opened inside the cleanup's reach: Ctrl-C or SIGTERM is acted on as soon as the open
        # returns, before its result is even stored, and must not leave the temporary behind.
        try:
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode,
                         dir_fd=dir_fd)
        except OSError as exc:
            raise FileWriteError(f"{path}: cannot write ({exc.strerror or exc})") from None
        with os.fdopen(fd, "wb") as out:
            if callable(data):
                data(out)
            else:
                out.write(data)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        if replace:
            os.replace(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            _link_new(tmp_name, path, dir_fd)
    except BaseException as exc:
        # Includes KeyboardInterrupt and a full disk: never leave the temporary behind.
        try:
            os.unlink(tmp_name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, FmnistMlpError):
            raise FileWriteError(f"{path}: cannot write ({exc.strerror or exc})") from None
        if isinstance(exc, MemoryError):    # building the bytes: the old file stays as it was
            raise FileWriteError(f"{path}: cannot write (out of memory while building "
                                 f"it)") from None
        raise
    if fsync:
        os.fsync(dir_fd)      # the rename itself survives a power cut


def _link_new(tmp_name: str, path: Path, dir_fd: int) -> None:
    """Put the finished temporary at ``path`` only if that name is free; then drop the
    temporary's own name."""
    try:
        os.link(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise TargetExists(f"{path}: already exists; remove it or choose another path") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # No hard links here (some FUSE and FAT mounts): claim the name with O_EXCL, then
        # rename onto the empty file we just made.
        try:
            os.close(os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600,
                             dir_fd=dir_fd))
        except FileExistsError:
            raise TargetExists(f"{path}: already exists; remove it or choose another "
                               f"path") from None
        os.replace(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.unlink(tmp_name, dir_fd=dir_fd)


def _tmp_target(name: str) -> str:
    """``name`` as it appears in its temporaries' names: cut (by bytes) so that the temporary's
    name fits in 255 bytes even when ``name`` itself takes all of them."""
    room = 255 - len(f"..{'9' * 10}-00000000{TMP_SUFFIX}")      # room for a 10-digit pid
    raw = os.fsencode(name)
    return name if len(raw) <= room else os.fsdecode(raw[:room])


def new_temporary(directory: str | os.PathLike, target: str) -> Path:
    """Create an empty temporary for ``directory/target`` (for writers that need a path, such as a
    download resumed by Range); the caller renames or removes it. Named like atomic_write's."""
    directory = Path(directory)
    path = directory / f".{target}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644))
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot create ({exc.strerror or exc})") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return atomic_write(path, text.encode("utf-8"), **kwargs)


# ---------------------------------------------------------------------------------------------
# Stale temporaries


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may exist on this host (unsure, e.g. another user's: yes)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _stale_names(names: Iterator[str], legacy: bool, only_target: str | None) -> list[str]:
    stale = []
    for name in names:
        match = _TMP_RE.match(name)
        if match:
            if (only_target is None or match["target"] == _tmp_target(only_target)) \
                    and not pid_alive(int(match["pid"])):
                stale.append(name)
        elif legacy and _LEGACY_TMP_RE.match(name) and (
                only_target is None or _LEGACY_TMP_RE.match(name)["target"] == only_target):
            stale.append(name)
    return stale


def _remove_stale(dir_fd: int, where: Path, only_target: str | None = None,
                  legacy: bool = False) -> list[Path]:
    removed = []
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return removed
    for name in _stale_names(iter(names), legacy, only_target):
        try:
            if stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=dir_fd)
                removed.append(where / name)
        except OSError:
            pass
    return removed


def clean_stale_tmp(directory: str | os.PathLike, legacy: bool = False) -> list[Path]:
    """Remove temporaries in ``directory`` whose writing process is gone; returns what went.

    legacy: also the older names (``.<file>.<random>.tmp``/``.part``), which carry no pid; pass it
    only while holding the directory's lock, when no other writer can be mid-write there.
    """
    directory = Path(directory)
    try:
        fd = os.open(directory, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    except OSError:
        return []
    try:
        return _remove_stale(fd, directory, legacy=legacy)
    finally:
        os.close(fd)
