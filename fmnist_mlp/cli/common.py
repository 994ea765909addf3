"""What the commands share: the exit-code table, the common options, strict JSON, SIGTERM as
Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fmnist_mlp.io.terminal import StdoutClosed   # raised instead of BrokenPipeError (which
                                                  # click would turn into a silent exit 1)

# Every exit code a command can give, and what it means: each command's --help lists its own.
EXIT_CODES = {
    0: "success",
    1: "other errors (data, checkpoint, I/O)",
    2: "usage or config error (nothing is created on disk)",
    3: "training diverged (NaN/inf loss): the run is marked failed",
    130: "interrupted (Ctrl-C / SIGTERM): the run is saved and can be resumed",
    141: "stdout was closed (piped into head, or >&-): nothing more is printed",
}
# What any command can give: training's codes (3, and 130's "resumed") are train's and sweeps'.
COMMON_CODES = (0, 1, 2, 130, 141)


def exit_codes_help(*codes: int, interrupted: str = "interrupted (Ctrl-C / SIGTERM)") -> str:
    """The "Exit codes:" epilog of a command that can exit with ``codes`` (click keeps the
    block's lines as written: the \\b line). ``interrupted`` says what 130 means there."""
    lines = [f"  {code:<4} {interrupted if code == 130 else EXIT_CODES[code]}"
             for code in codes]
    return "\b\nExit codes:\n" + "\n".join(lines) + "\n"


EXIT_CODES_HELP = exit_codes_help(*EXIT_CODES, interrupted=EXIT_CODES[130])   # every code: train
MODEL_EXIT_CODES_HELP = exit_codes_help(*COMMON_CODES)      # commands that train nothing


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Dataset cache directory (default: $FMNIST_MLP_DATA_DIR, else "
         "$XDG_CACHE_HOME/fmnist-mlp, else ~/.cache/fmnist-mlp).")
json_option = click.option("--json", "as_json", is_flag=True,
                            help="Print one JSON object on stdout and nothing else there.")


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise StdoutClosed from None


def click_message(exc: click.ClickException) -> str:
    """What click would print for a usage error (usage line, hint, "Error: ..."), as text for
    :func:`fmnist_mlp.io.terminal.show`: the offending value may be the user's escape sequence."""
    import io

    text = io.StringIO()
    exc.show(file=text)
    return text.getvalue()


def json_dumps(obj) -> str:
    """Strict JSON: NaN and infinities (a diverged loss, an empty class) become null."""
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), allow_nan=False)


class sigterm_as_interrupt:
    """SIGTERM (Slurm pre-emption, ``kill``) is handled like Ctrl-C: save, mark, exit 130."""

    def __enter__(self):
        import signal
        import threading

        self._previous = None
        SIGTERM_RECEIVED.clear()            # main may run again in one process (tests)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        return self

    def __exit__(self, *exc_info):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# Set once SIGTERM arrived: an exception that escapes a library because the interrupt landed
# inside it (a C extension's import turns it into "ImportError: initialization failed") is then
# still the interrupt, exit 130 (cli/app.py: _run).
SIGTERM_RECEIVED: list[bool] = []


def raise_keyboard_interrupt(signum, frame):
    SIGTERM_RECEIVED.append(True)
    raise KeyboardInterrupt


def interrupt_behind(exc: BaseException) -> bool:
    """True when ``exc`` came of Ctrl-C or SIGTERM: a KeyboardInterrupt in its chain of causes,
    or SIGTERM received in this process."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return bool(SIGTERM_RECEIVED)


