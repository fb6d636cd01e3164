"""Where qeval finds things: its built-in resources, and the user's cache, data and audit paths.

Built-in resources are the repository's top-level `tasks/`, `configs/` and `calibration/`
folders. A wheel ships them as package data, `qeval/_resources/<name>` (pyproject.toml maps each
folder there), found through importlib.resources; in a checkout (an editable install, or the
source tree on PYTHONPATH) they are the folders themselves. Either way the same files.

Paths the user sets are resolved flag > environment variable > file > default.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal

from qeval.errors import QevalInputError

Resource = Literal["tasks", "configs", "calibration"]
RESOURCES: tuple[Resource, ...] = ("tasks", "configs", "calibration")
PACKAGED = "_resources"  # qeval/_resources/<name> inside an installed wheel


def resource_dir(name: Resource) -> Path:
    """The built-in tasks/, configs/ or calibration/ folder (see the module docstring)."""
    if name not in RESOURCES:
        raise ValueError(f"unknown resource {name!r}; one of {', '.join(RESOURCES)}")
    packaged = files("qeval").joinpath(PACKAGED, name)
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    raise QevalInputError(f"qeval's built-in {name}/ folder is missing (looked in {packaged} and "
                          f"{checkout / name}); reinstall qeval")


def cache_dir() -> Path:
    """Materialised models, quantized artefacts, records, hub downloads: $QEVAL_CACHE, else the
    platform's user cache folder."""
    env = os.environ.get("QEVAL_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("qeval"))


def audit_path() -> Path:
    """The audit log: $QEVAL_AUDIT_LOG, else audit.jsonl in the cache."""
    env = os.environ.get("QEVAL_AUDIT_LOG")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "audit.jsonl"


DATA_FILE = "data.yaml"  # in the built-in configs/


def data_dir_from(flag: str | Path | None) -> Path | None:
    """The benchmark data directory: --data-dir, else $QEVAL_DATA_DIR, else `data_dir` in
    configs/data.yaml (relative to that file), else none."""
    from qeval.util.yamlio import read_yaml

    source, value = "--data-dir", flag
    if not value and os.environ.get("QEVAL_DATA_DIR"):
        source, value = "QEVAL_DATA_DIR", os.environ["QEVAL_DATA_DIR"]
    conf = resource_dir("configs") / DATA_FILE
    if not value and conf.is_file():
        data = read_yaml(conf, empty={})
        if not isinstance(data, dict) or set(data) - {"data_dir"}:
            raise QevalInputError(f"{conf}: expected only `data_dir: <path or null>`")
        if data.get("data_dir"):
            source, value = str(conf), conf.parent / str(data["data_dir"])
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise QevalInputError(f"data directory {path} (from {source}) does not exist; give the folder "
                              "holding the benchmark files (layout: tasks/open_medical/README.md)")
    return path
