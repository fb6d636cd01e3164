"""The quantization-method registry (a leaf: the methods live in qeval/variants/). Methods by name: `method:` in configs/variants/*.yaml and VariantSpec.method.

Each entry is `module:ATTRIBUTE` (imported on first use) naming a `QuantMethod`
(qeval/variants/base.py): its parameters and their checks, the engine that scores it, how its
artefact is made and loaded, the kernels a loaded model must show, its planner format. Adding a
method is one module and one line here; tests register their own (an object instead of a path)."""

from __future__ import annotations

import importlib
from typing import Any

METHODS: dict[str, Any] = {
    "fp32": "qeval.variants.full_precision:FP32",
    "fp16": "qeval.variants.full_precision:FP16",
    "bf16": "qeval.variants.full_precision:BF16",
    "int8": "qeval.variants.int8:METHOD",
    "int8wo": "qeval.variants.int8wo:METHOD",
    "fp8": "qeval.variants.fp8:METHOD",
    "fp8wo": "qeval.variants.fp8:WEIGHT_ONLY",
    "nf4": "qeval.variants.nf4:METHOD",
    "gguf": "qeval.variants.gguf:METHOD",
    "gptq": "qeval.variants.gptq:METHOD",
    "awq": "qeval.variants.awq:METHOD",
    "vllm": "qeval.variants.vllm:METHOD",
    "fake": "qeval.variants.fake:METHOD",
}


def method(name: str):
    """The QuantMethod registered under `name`."""
    try:
        entry = METHODS[str(getattr(name, "value", name))]
    except KeyError:
        raise KeyError(f"unknown quantization method {name!r}; known: {', '.join(sorted(METHODS))}") from None
    if not isinstance(entry, str):
        return entry
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)
