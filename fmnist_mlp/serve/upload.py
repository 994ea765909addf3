"""``POST /predict``: image files sent as ``multipart/form-data``, split with the standard library
and decoded exactly as ``predict`` decodes files on disk.

Each file's bytes go into an anonymous in-memory file (``memfd_create``; a private temporary file
where there is none) that ``predict``'s own reader opens by name
(:func:`fmnist_mlp.predict.run.load_pixels`): the same formats opened by content, the same
decompression-bomb and structure checks, the same orientation, transparency and preprocessing,
and the same one-line refusals.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Iterator

import numpy as np

from fmnist_mlp.data.facts import IMAGE_SHAPE
from fmnist_mlp.serve.payload import BadRequest


@dataclass(frozen=True)
class Upload:
    name: str           # the file name the client gave (or the form field's name)
    data: bytes


def split_multipart(body: bytes, content_type: str, max_files: int) -> list[Upload]:
    """The file parts of a ``multipart/form-data`` body (RFC 7578), in order; other fields are
    ignored."""
    boundary = _param(content_type, "content-type", "boundary")
    if not boundary or len(boundary) > 70:
        raise BadRequest("multipart/form-data without a valid boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    sections = (b"\r\n" + body).split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise BadRequest("malformed multipart body (no closing boundary)",
                         code="MALFORMED_REQUEST")
    uploads = []
    for section in sections[1:-1]:
        head, sep, data = section.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest("malformed multipart body (a part without headers)",
                             code="MALFORMED_REQUEST")
        headers = _headers(head)
        disposition = headers.get("content-disposition", "")
        filename = _param(disposition, "content-disposition", "filename")
        if filename is None and "filename*" not in disposition:
            continue                                   # a plain form field
        if len(uploads) == max_files:
            raise BadRequest(f"more than {max_files} files in one request (--max-files)",
                             status=413, code="TOO_MANY_FILES")
        name = filename or _param(disposition, "content-disposition", "name") or "upload"
        uploads.append(Upload(os.path.basename(name.replace("\\", "/")) or "upload", data))
    if not uploads:
        raise BadRequest("no image files in the form (send them as file fields, e.g. "
                         "curl -F file=@photo.jpg)")
    return uploads


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n"):
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _param(header_value: str, header: str, param: str) -> str | None:
    message = Message()
    message[header] = header_value
    if param == "filename":
        return message.get_filename()
    value = message.get_param(param, header=header)
    return value if isinstance(value, str) else None


def decode_images(uploads: list[Upload]) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """``(indices of the uploads read, (n, 28, 28) uint8 images, [(index, reason)] refused)``,
    each file read by ``predict``'s reader and preprocessing."""
    from fmnist_mlp.predict.run import load_pixels

    used, images, failures = [], [], []
    for index, upload in enumerate(uploads):
        with _file_holding(upload.data) as path:
            _, pixels, refused = load_pixels([path])
        if refused:
            failures.append((index, refused[0][1]))
        else:
            used.append(index)
            images.append(pixels[0])
    stack = np.stack(images) if images else np.zeros((0, *IMAGE_SHAPE), np.uint8)
    return used, stack, failures


@contextmanager
def _file_holding(data: bytes) -> Iterator[Path]:
    """A name under which ``data`` can be opened as a regular file, for the time of a ``with``:
    an anonymous in-memory file (Linux), else a private temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("fmnist-mlp-upload", getattr(os, "MFD_CLOEXEC", 0))
        path, temporary = Path(f"/proc/self/fd/{fd}"), None
    else:                                                   # pragma: no cover - not Linux
        fd, name = tempfile.mkstemp(prefix="fmnist-mlp-upload-")
        path = temporary = Path(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        yield path
    finally:
        os.close(fd)
        if temporary is not None:                           # pragma: no cover
            temporary.unlink()
