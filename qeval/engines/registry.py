"""Engines by name: a variant's `backend` names the engine that scores it. Each entry names a
module, imported on first use (so naming an engine never loads torch or llama.cpp).

Adding an engine is one module and one line here. The module offers
`make_factory(settings: EngineSettings)`: an object with `identity(variant)`, `open(variant,
baseline_compute, **loading)` (and optionally `prepare`), and may set `TORCH_ALLOCATOR = True`
when torch's CUDA allocator sees all its memory. Tests register their own engines in ENGINES
(an object with the same attributes instead of a module path)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINES: dict[str, Any] = {
    "hf": "qeval.engines.hf",
    "llamacpp": "qeval.engines.llamacpp",
    "vllm": "qeval.engines.vllm",
    "fake": "qeval.engines.fake",
}


@dataclass(frozen=True)
class EngineSettings:
    """What every engine's factory is made from (each uses what it needs)."""

    model: Any  # qeval.model_source.ResolvedModel
    device: str = "auto"
    strict_dtype: bool = False
    batch_size: int = 16
    cache: Path | None = None
    progress: Any = None
    tasks: tuple = field(default=())  # the run's tasks (the fake engine knows their answer keys)


def known_engine(name: str) -> bool:
    return name in ENGINES


def engine(name: str):
    """The engine module (or object) registered under `name`."""
    try:
        entry = ENGINES[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None
    return importlib.import_module(entry) if isinstance(entry, str) else entry
