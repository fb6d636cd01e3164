"""One factory for every real engine: a variant's `backend` field picks transformers or llama.cpp
(a lookup by name, so a new engine is one entry, not another branch in the pipeline)."""

from __future__ import annotations

import functools
from pathlib import Path

from ..models import ResolvedModel
from ..types import VariantSpec
from .hf import HFFactory


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per (path, size, mtime) in a process: several GB take seconds."""
    from ..gguf_export import sha256_file

    return sha256_file(Path(path))


class EngineFactory:
    def __init__(self, model: ResolvedModel, *, device: str = "auto", strict_dtype: bool = False,
                 batch_size: int = 16, cache: Path, progress=None):
        self.model = model
        self.cache = cache
        self.progress = progress
        self.hf = HFFactory(model, device=device, strict_dtype=strict_dtype, batch_size=batch_size)

    def identity(self, variant: VariantSpec) -> dict:
        if variant.backend == "llamacpp":
            from .llamacpp import llamacpp_versions

            ident = {"device": "cpu" if not variant.params.get("gpu_layers") else "cuda",
                     "versions": llamacpp_versions()}
            if "file" in variant.params:
                # A file the user brings is known by its content, not its path.
                path = Path(str(variant.params["file"])).expanduser().resolve()
                st = path.stat()
                ident["versions"] = {**ident["versions"],
                                     "gguf_sha256": _digest(str(path), st.st_size, st.st_mtime_ns)}
            return ident
        return self.hf.identity(variant)

    def open(self, variant: VariantSpec, baseline_compute: str | None):
        if variant.backend == "llamacpp":
            from .llamacpp import LlamaCppBackend

            return LlamaCppBackend(self.model, variant, cache=self.cache, progress=self.progress)
        return self.hf.open(variant, baseline_compute)
