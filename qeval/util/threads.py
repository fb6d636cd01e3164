"""How many threads a CPU engine runs."""

from __future__ import annotations

import os

ENV = "QEVAL_THREADS"


def cpu_threads() -> int:
    """$QEVAL_THREADS when set (a Ray job: the CPUs it was given, so that two jobs on one machine
    do not each spin a thread per core), else every CPU of the machine."""
    value = os.environ.get(ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)
