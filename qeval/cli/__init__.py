"""`qeval` command line: typer only. common.py holds the app and what commands share;
commands.py and release.py declare the commands, which call qeval.run.app (the same functions as
the Python API) or the readers of a finished run."""

from __future__ import annotations

import os
import sys

from qeval.cli.common import app, flag_error_line  # noqa: F401 - `qeval.cli.app` for tests and tools
from qeval.cli import commands, release  # noqa: F401,E402 - registers the commands, in help order


def main() -> None:
    # Quiet third-party chatter (PHI-safe: never echo inputs) without hiding our own errors; what
    # libraries print while a run loads and scores models goes to <run>/qeval.log.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # qeval's own status lines show progress
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        sys.exit(app())
    except Exception as exc:  # a bug, not bad input (that exits 2 with one line)
        _internal_error(exc)
        sys.exit(1)


def _internal_error(exc: BaseException) -> None:
    """Where an unexpected exception came from — its class and the file, line and function of
    each frame — without its message or any local variable: either may quote prompt text (PHI)."""
    import traceback

    err = sys.stderr
    print(f"qeval: internal error: {type(exc).__module__}.{type(exc).__qualname__} (message withheld: "
          "it may quote prompt text); traceback, innermost last:", file=err)
    for frame in traceback.extract_tb(exc.__traceback__):
        print(f"  {frame.filename}:{frame.lineno} in {frame.name}", file=err)
    err.flush()
