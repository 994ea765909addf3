"""The ``fmnist-mlp`` command line: thin click glue over the package.

Each command parses its options, calls one function and prints through the one door to the
terminal (:mod:`fmnist_mlp.io.terminal`: ``show`` for people, ``emit`` for what scripts read);
package errors become one line on stderr and an exit code in :func:`main` (``app.py``), and only
there. Heavy modules (numpy, tqdm,
requests) are imported inside the commands so that ``fmnist-mlp --help`` stays fast. One module
per kind of command: ``training_commands`` (train, gradcheck, download), ``model_commands`` (eval,
predict, export, runs, plot), ``sweep_commands`` (sweep run, status, report); ``common`` holds
what they share.
"""

from fmnist_mlp.cli.app import cli, main

__all__ = ["cli", "main"]
