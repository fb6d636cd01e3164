"""Native libraries' own stderr (C code writing to file descriptor 2), kept off the terminal."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs from C to file descriptor 2; keep the terminal for qeval's own output."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)
