"""Text from files the tool does not control, made safe to print on a terminal.

A run directory's name, a summary's fields or an error naming a file may carry escape sequences
(``\\x1b]0;...`` retitles the window, ``\\x1b[2J`` clears it, some terminals do worse). Control
characters are shown as ``\\xNN`` instead of being sent.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: object, keep_newlines: bool = False) -> str:
    """``str(text)`` with C0/C1 control characters (and DEL) escaped as ``\\xNN``; tabs and, with
    ``keep_newlines``, newlines are kept."""
    pattern = _CONTROL if keep_newlines else _CONTROL_OR_NEWLINE
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
