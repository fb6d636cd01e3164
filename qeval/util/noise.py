"""Third-party noise kept off the terminal: while a run loads and scores models, what libraries
print — Python warnings, log records of other packages' loggers, and (where stderr is file
descriptor 2) anything written to fd 2, native libraries' messages included — goes to one file
instead; qeval's own messages keep the terminal through `terminal_stderr()`.

The captured text is whatever the libraries said (class names, file paths, versions): qeval never
passes them prompt text, and tests/test_phi.py scans the file a run writes (`<run>/qeval.log`)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import TextIO

_terminal: list[TextIO] = []  # innermost capture's way to the real stderr


def terminal_stderr() -> TextIO:
    """Where qeval's own warnings go: the real stderr, also while noise is being captured."""
    return _terminal[-1] if _terminal else sys.stderr


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


class Captured:
    """The capture's file; `text()` reads back what was written to it."""

    def __init__(self, file):
        self.file = file

    def text(self) -> str:
        self.file.flush()
        self.file.seek(0)
        return self.file.read().decode(errors="replace")


@contextlib.contextmanager
def capture_noise() -> Iterator[Captured]:
    log = tempfile.TemporaryFile()
    text = io.TextIOWrapper(log, encoding="utf-8", errors="replace", write_through=True)
    captured = Captured(log)
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()

    def show(message, category, filename, lineno, file=None, line=None):
        text.write(f"{category.__name__} {filename}:{lineno}: {message}\n")

    sys.stderr.flush()
    native = _writes_to_fd2(sys.stderr)
    saved = os.dup(2) if native else None
    terminal = os.fdopen(os.dup(saved), "w", buffering=1) if native else sys.stderr
    if native:
        os.dup2(log.fileno(), 2)
    _terminal.append(terminal)
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield captured
    finally:
        root.removeHandler(handler)
        _terminal.pop()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if native:
            os.dup2(saved, 2)
            os.close(saved)
            terminal.close()
        text.flush()
        text.detach()
