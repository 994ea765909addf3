"""The ``fmnist-mlp`` group and its entry point: package errors become one line on stderr and
their exit code here, and only here."""

from __future__ import annotations

import sys

import click

from fmnist_mlp.cli.common import EXIT_CODES_HELP, Group, StdoutClosed, sigterm_as_interrupt
from fmnist_mlp.cli.model_commands import eval_command, export, plot, predict, runs_command
from fmnist_mlp.cli.serve_command import serve
from fmnist_mlp.cli.sweep_commands import sweep
from fmnist_mlp.cli.training_commands import download, gradcheck, test_images, train


@click.group(cls=Group, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fmnist-mlp", prog_name="fmnist-mlp")
def cli() -> None:
    """Train multi-layer perceptrons on Fashion-MNIST with hand-written NumPy backprop."""


for command in (train, eval_command, predict, export, runs_command, download, gradcheck, plot,
                test_images, sweep):
    cli.add_command(command)
cli.add_command(serve)              # fmnist-mlp serve (cli/serve_command.py)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: package errors become one line on stderr and their exit code."""
    from fmnist_mlp.errors import FmnistMlpError
    from fmnist_mlp.io.printable import printable

    # SIGTERM is Ctrl-C for every command (exit 130, "interrupted"), as the exit-code table says;
    # train also saves its run first (sigterm_as_interrupt keeps this handler in place).
    sigterm = sigterm_as_interrupt().__enter__()
    try:
        code = cli.main(args=argv, prog_name="fmnist-mlp", standalone_mode=False)
    except (BrokenPipeError, StdoutClosed):
        code = _stdout_closed()
    except click.ClickException as exc:          # usage errors: exit 2
        exc.show()
        code = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = _interrupted()
    except FmnistMlpError as exc:
        # printable: paths and names in messages come from the user's files and must not
        # send escape sequences to the terminal.
        text = printable(exc, keep_newlines=True)
        click.echo(f"error: {text}" if exc.exit_code != 130 else text, err=True)
        code = exc.exit_code
    except OSError as exc:
        click.echo(f"error: {printable(exc)}", err=True)
        code = 1
    except MemoryError:                 # anywhere not estimated beforehand: one line, not a traceback
        click.echo("error: out of memory (use smaller layers or batches, fewer files, or a "
                   "machine with more memory)", err=True)
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _stdout_closed()
    except KeyboardInterrupt:           # SIGTERM while stdout's reader is not reading
        code = _interrupted()
    sigterm.__exit__(None, None, None)  # (main may be called in-process, e.g. by tests)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> int:
    """Ctrl-C or SIGTERM: say so and exit 130. Output not yet written is dropped, so that a
    stdout nobody reads cannot keep an interrupted process alive."""
    import os

    try:
        click.echo("interrupted", err=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, KeyboardInterrupt):
        pass
    return 130


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``, ``| true``): stop quietly, as a process killed
    by SIGPIPE would, and keep Python from complaining about the unflushed buffer at exit."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141
