"""Build a cache entry once: under a file lock, into a unique temporary folder beside it, then an
atomic rename, so that parallel runs never build it twice and a killed run never leaves a half
entry that looks whole. The lock is the maintained `filelock` library's (no `fcntl` here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock


def lock_path(target: Path) -> Path:
    """The lock file of a cache entry: beside it, named after it."""
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def locked(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock file `path` (created if needed); `on_wait` is called once if another
    process holds it, before waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(blocking=False)
    except TimeoutError:  # filelock.Timeout is a TimeoutError
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_once(target: Path, build: Callable[[Path], None], *,
               complete: Callable[[Path], bool] = Path.exists,
               on_wait: Callable[[], None] | None = None) -> Path:
    """`target` (a file or a folder) once: when `complete(target)` is false, `build(staging)`
    writes it at `staging` (a path that does not exist yet, in a fresh temporary folder beside
    `target`), which is then renamed to `target`, all under `target`'s lock. A process that
    waited for another's build finds it complete and builds nothing."""
    if complete(target):
        return target
    with locked(lock_path(target), on_wait):
        if complete(target):
            return target
        workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
            staging = workdir / target.name
            build(staging)
            if target.is_dir() and not target.is_symlink():  # an incomplete entry of an older run
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return target
