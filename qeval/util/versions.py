"""Installed versions of the libraries that change a variant's numbers (part of every cache key)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

QEVAL_VERSION = "0.1.0"  # qeval's own version (qeval.__version__); pyproject.toml says the same


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
