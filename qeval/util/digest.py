"""Content hashes of files, once per (path, size, mtime) in a process: several GB take seconds."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def file_sha256(path: Path) -> str:
    path = path.expanduser().resolve()
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)
