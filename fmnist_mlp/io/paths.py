"""Paths the user types and folders the tool creates: a ``~user`` that cannot be expanded is one
line naming where it came from, no new folder's name holds a control character, and a folder
several processes create at once is made whole in one call (:func:`make_folder`).

A name holding a newline or an escape sequence cannot be printed for people (it would be shown
escaped, not as it is) nor read back by a script one line at a time, so the tool does not create
one; a folder the user made with such a name is still used (and printed exactly by
:func:`fmnist_mlp.io.terminal.emit`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fmnist_mlp.errors import FmnistMlpError
from fmnist_mlp.io.files import FileWriteError, TargetExists, atomic_write
from fmnist_mlp.io.printable import printable


def expand_user(path: str | os.PathLike, what: str,
                error: type[FmnistMlpError] = FmnistMlpError) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; one line naming ``what`` when it
    cannot be (no such user, no home folder) instead of ``Path.expanduser``'s RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = os.fspath(path).split("/", 1)[0]
        raise error(f"{what} {printable(os.fspath(path))}: cannot expand {printable(user)} "
                    f"(no such user, or no home folder); give the folder in full") from None


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_new_dirs(path: str | os.PathLike, what: str,
                   error: type[FmnistMlpError] = FmnistMlpError) -> None:
    """Refuse to create a folder whose name holds a control character (a newline, an escape
    sequence): such a path cannot be printed for people, nor read back by a script one line at a
    time. Only the components that do not exist yet are checked."""
    path = Path(path)
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path.name)
        path = path.parent
    for name in missing:
        if _CONTROL_CHARS.search(name):
            raise error(f"{what} {printable(name)}: refusing to create a folder whose name "
                        f"holds control characters")


def make_dirs(path: str | os.PathLike, what: str,
              error: type[FmnistMlpError] = FmnistMlpError) -> Path:
    """``mkdir -p path`` after :func:`check_new_dirs`; OSError as ``error`` naming ``what``."""
    check_new_dirs(path, what, error)
    return create_folder(path, what, error)


def create_folder(path: str | os.PathLike, what: str,
                  error: type[FmnistMlpError] = FmnistMlpError, parents: bool = True) -> Path:
    """``mkdir`` (``-p`` with ``parents``), an existing folder kept; a failure is one ``error``
    line naming ``what`` and the path: a file in the folder's place says so, not mkdir's
    "File exists" (true, but not what to fix)."""
    try:
        Path(path).mkdir(parents=parents, exist_ok=True)
    except FileExistsError:
        raise error(f"{what} {path}: exists and is not a folder") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot create directory ({exc.strerror or exc})") from None
    return Path(path)


def make_folder(path: str | os.PathLike, what: str, error: type[FmnistMlpError] = FmnistMlpError,
                *, first: tuple[str, bytes], subfolders: tuple[str, ...] = ()) -> bool:
    """A folder the user named, made whole in one call: :func:`make_dirs`, its ``subfolders``,
    then ``first`` (a name and its bytes: the file that says what the folder is), put in place
    last and exclusively (:func:`~fmnist_mlp.io.files.atomic_write` with ``replace=False``): of
    several processes making the same folder at once exactly one writes it, and none sees it
    before the subfolders are there or reads it half-written. Returns whether this call wrote
    ``first`` (False: its name was taken). Failures are one ``error`` line naming the entry."""
    path = make_dirs(path, what, error)
    for name in subfolders:
        create_folder(path / name, what, error, parents=False)
    name, data = first
    try:
        atomic_write(path / name, data, base=path, replace=False)
    except TargetExists:
        return False
    except FileWriteError as exc:
        raise error(str(exc)) from None
    return True
