"""A picture file's structure counted before Pillow parses it: Pillow's parsers walk PNG chunks,
JPEG markers, GIF blocks and a TIFF's first directory in Python, keeping a little for each step,
and libjpeg decodes every scan of a JPEG over the whole picture. A small file made of millions of
such steps would cost gigabytes and minutes; these checks refuse it in one line, reading only the
file's headers (through ``os.pread``, leaving the file object's position to Pillow).
"""

from __future__ import annotations

import os
from pathlib import Path

from fmnist_mlp.errors import ImageReadError

# Scans x pixels a JPEG may ask to decode (~500 scans at the pixel limit, a few seconds). libjpeg
# decodes every scan over the whole picture, and a repeated scan costs ~100 bytes of file: a
# 2 MB JPEG of 20,000 scans took 94 s. Progressive JPEGs have about 10 scans.
MAX_JPEG_SCAN_PIXELS = 500 * 89_478_485
# Steps Pillow's Python parsers may take over a file's structure (PNG chunks, JPEG markers and
# padding bytes before the first scan, GIF blocks before the first picture). Each costs it a
# loop turn and ~100-200 bytes kept: 2 million empty JPEG markers (8 MB) took 330 MB, a GIF
# comment of 4 million sub-blocks (8 MB) 409 MB, 8 million empty PNG chunks (96 MB) 1.0 GB and
# 24 s. Real files take tens of steps; 100,000 costs a tenth of a second and ~10-20 MB.
MAX_STRUCTURE_STEPS = 100_000


class _Bytes:
    """Bytes of a file at given offsets, read through a 64 kB window (os.pread: the file
    object's own position, which Pillow uses, is left alone)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.base, self.window = fd, 0, b""

    def at(self, offset: int, n: int) -> bytes:
        if offset >= 1 << 62:                    # past any file (pread would overflow)
            return b""
        start = offset - self.base
        if start < 0 or start + n > len(self.window):
            self.base, self.window, start = offset, os.pread(self.fd, max(n, 1 << 16), offset), 0
        return self.window[start:start + n]


def check_structure(fd: int, path: Path) -> None:
    """Walk a PNG's chunks, a JPEG's markers up to its first scan or a GIF's blocks up to its
    first picture -- the structure Pillow parses in Python, one loop turn and a few hundred bytes
    kept per step -- and refuse a file of more than MAX_STRUCTURE_STEPS of them. Anything else
    (or a file this walk does not understand) is left to Pillow."""
    data = _Bytes(fd)
    head = data.at(0, 13)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        kind, steps = "PNG chunks", _png_steps(data)
    elif head[:3] == b"\xff\xd8\xff":
        kind, steps = "JPEG markers before its first scan", _jpeg_steps(data)
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) == 13:
        kind, steps = "GIF blocks before its first picture", _gif_steps(data, head[10])
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        _check_tiff_directory(data, head, path)
        return
    else:
        return
    if steps > MAX_STRUCTURE_STEPS:
        raise ImageReadError(f"{path}: refused: more than {MAX_STRUCTURE_STEPS} {kind} (each "
                             f"costs memory and time to parse; real files have far fewer)")


# TIFF: what Pillow reads of the first directory into Python objects (tag values as tuples of
# ints, ~36 bytes each) and the strips or tiles it then decodes one by one. An 80 MB TIFF of an
# 8 x 8 picture declaring 10 million one-byte strips took 2.65 GB and 79 s.
MAX_TIFF_TAGS = 4096
MAX_TIFF_VALUES = 1_000_000
_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
               13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_BYTES = (1, 2, 6, 7)           # BYTE, ASCII, SBYTE, UNDEFINED: kept as one bytes object
_STRIPS, _TILES = (273, 279), (324, 325)


def _check_tiff_directory(data: _Bytes, head: bytes, path: Path) -> None:
    """Refuse a first directory (the page Pillow opens) of more than MAX_TIFF_TAGS tags, more
    than MAX_TIFF_VALUES numbers, or more strips or tiles than its picture has room for (a strip
    holds at least one row, a tile at least 16 x 16 pixels)."""
    order = "little" if head[:2] == b"II" else "big"
    big = head[2:4] in (b"+\x00", b"\x00+")
    number = lambda raw: int.from_bytes(raw, order)             # noqa: E731
    offset = number(data.at(8, 8)) if big else number(data.at(4, 4))
    count_size, entry_size = (8, 20) if big else (2, 12)
    tags = number(data.at(offset, count_size))
    if tags > MAX_TIFF_TAGS:
        raise ImageReadError(f"{path}: refused: a TIFF directory of {tags} tags (real files "
                             f"have tens; each costs memory and time to parse)")
    values, counts, inline = 0, {}, {}
    for i in range(tags):
        entry = data.at(offset + count_size + i * entry_size, entry_size)
        if len(entry) < entry_size:
            return                                   # truncated: Pillow says so
        tag, kind = number(entry[0:2]), number(entry[2:4])
        count = number(entry[4:12] if big else entry[4:8])
        counts[tag] = count
        if count == 1 and kind in (3, 4, 16):
            inline[tag] = number(entry[12:12 + _TIFF_SIZES[kind]] if big
                                 else entry[8:8 + _TIFF_SIZES[kind]])
        if kind not in _TIFF_BYTES:
            values += count
    if values > MAX_TIFF_VALUES:
        raise ImageReadError(f"{path}: refused: a TIFF directory of {values} numbers (more than "
                             f"{MAX_TIFF_VALUES}; each costs memory and time to parse)")
    width, height = inline.get(256, 1), inline.get(257, 1)
    planes = max(1, inline.get(277, 1))
    room = {_STRIPS: max(1, height) * planes,
            _TILES: max(1, -(-width // 16)) * max(1, -(-height // 16)) * planes}
    for group, most in room.items():
        for tag in group:
            if counts.get(tag, 0) > most:
                raise ImageReadError(f"{path}: refused: {counts[tag]} strips or tiles for a "
                                     f"{width} x {height} picture (at most {most} fit in it)")


def _png_steps(data: _Bytes) -> int:
    offset, steps = 8, 0
    while steps <= MAX_STRUCTURE_STEPS:
        head = data.at(offset, 8)
        if len(head) < 8 or head[4:8] == b"IEND":
            break
        steps += 1
        offset += 12 + int.from_bytes(head[:4], "big")
    return steps


def _jpeg_steps(data: _Bytes) -> int:
    offset, steps = 2, 0
    while steps <= MAX_STRUCTURE_STEPS:
        head = data.at(offset, 4)
        if len(head) < 2:
            break
        steps += 1
        if head[0] != 0xFF or head[1] == 0xFF:      # padding, or fill before a marker
            offset += 1
        elif head[1] in (0xDA, 0xD9):               # the first scan, or the end
            break
        elif head[1] in (0x01, 0xD8) or 0xD0 <= head[1] <= 0xD7:   # markers without a length
            offset += 2
        elif len(head) < 4:
            break
        else:
            offset += 2 + int.from_bytes(head[2:4], "big")
    return steps


def _gif_steps(data: _Bytes, flags: int) -> int:
    offset = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)   # after the colour table
    steps = 0
    while steps <= MAX_STRUCTURE_STEPS:
        block = data.at(offset, 2)
        if not block or block[:1] in (b",", b";"):   # the first picture, or the end
            break
        steps += 1
        if block[:1] != b"!":                        # Pillow skips stray bytes one by one
            offset += 1
            continue
        offset += 2                                  # extension introducer and label
        while steps <= MAX_STRUCTURE_STEPS:          # its sub-blocks, to the empty one
            size = data.at(offset, 1)
            if not size:
                return steps
            steps += 1
            offset += 1 + size[0]
            if size[0] == 0:
                break
    return steps


def check_jpeg_scans(f, image, path: Path) -> None:
    """Count the file's scans (its start-of-scan markers: 0xFF 0xDA never occurs inside
    entropy-coded data, where every 0xFF byte is followed by 0x00; one inside, say, an EXIF
    thumbnail only over-counts) before libjpeg decodes them, each over the whole picture."""
    pixels = max(1, image.width * image.height)
    limit = MAX_JPEG_SCAN_PIXELS // pixels
    fd, offset, scans, tail = f.fileno(), 0, 0, b""
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return
        scans += (tail + chunk).count(b"\xff\xda")
        if scans > limit:
            raise ImageReadError(f"{path}: refused: a JPEG of more than {limit} scans over "
                                 f"{image.width} x {image.height} pixels would take minutes to "
                                 f"decode (progressive JPEGs have about 10)")
        tail, offset = chunk[-1:], offset + len(chunk)
