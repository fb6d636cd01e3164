"""int8: bitsandbytes LLM.int8 while loading (int8 weights, outlier features kept in 16-bit)."""

from __future__ import annotations

from qeval.errors import QevalInputError
from qeval.types import VariantSpec
from qeval.variants.base import OnLoad


class Int8(OnLoad):
    name = "int8"
    params = frozenset({"threshold"})
    package = "bitsandbytes"
    kernels = ("Linear8bitLt",)

    def check_values(self, variant: VariantSpec) -> None:
        p = variant.params
        if "threshold" in p and (isinstance(p["threshold"], bool) or not isinstance(p["threshold"], (int, float))
                                 or p["threshold"] <= 0):
            raise QevalInputError(f"variant {variant.name!r}: threshold must be a positive number, e.g. threshold=6")

    def loading_config(self, variant: VariantSpec, compute_dtype):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(variant.params.get("threshold", 6.0)))

    def loaded(self, kernel: str, device: str) -> tuple[str, tuple[str, ...]]:
        kernel = bitsandbytes_kernel(kernel, device)
        if device == "cpu":
            return kernel, ("bitsandbytes LLM.int8 on CPU casts activations to float16 inside its matmul",)
        return kernel, ()

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        return "int8"


def bitsandbytes_kernel(kernel: str, device: str) -> str:
    import logging

    import bitsandbytes

    # bitsandbytes logs one cast warning per matmul call; it is stated once in the notes.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return kernel + f" (bitsandbytes {bitsandbytes.__version__}, {device} backend)"


METHOD = Int8()
