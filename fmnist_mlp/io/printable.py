"""Text from files the tool does not control, made safe to print on a terminal.

A run directory's name, a summary's fields or an error naming a file may carry escape sequences
(``\\x1b]0;...`` retitles the window, ``\\x1b[2J`` clears it, some terminals do worse). Control
characters are shown as ``\\xNN`` instead of being sent.

A file name need not be UTF-8 at all: Python keeps such bytes as lone surrogates (``\\udcff``),
which no terminal can show and no JSON reader can map back. :func:`valid_text` writes each such
byte as the four characters ``\\xNN`` instead (Python's ``backslashreplace``); :func:`printable`
does that too, so one filter serves every name shown on a terminal.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: object, keep_newlines: bool = False) -> str:
    """``str(text)`` with C0/C1 control characters (and DEL) escaped as ``\\xNN``; tabs and, with
    ``keep_newlines``, newlines are kept; bytes that were not UTF-8 as in :func:`valid_text`."""
    pattern = _CONTROL if keep_newlines else _CONTROL_OR_NEWLINE
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", valid_text(str(text)))


def valid_text(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name (lone surrogates, as ``os.fsdecode``
    keeps them) written as ``\\xNN``: valid Unicode, for JSON and terminals alike."""
    return _SURROGATE.sub(_escape_surrogate, text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF: one undecodable byte 0x80..0xFF (surrogateescape); others: as \uXXXX
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
