"""nf4: bitsandbytes 4-bit NormalFloat (QLoRA's NF4) while loading, block size 64."""

from __future__ import annotations

from qeval.errors import QevalInputError
from qeval.types import VariantSpec
from qeval.variants.base import OnLoad
from qeval.variants.int8 import bitsandbytes_kernel


class NF4(OnLoad):
    name = "nf4"
    params = frozenset({"double_quant"})
    package = "bitsandbytes"
    kernels = ("Linear4bit",)

    def check_values(self, variant: VariantSpec) -> None:
        if "double_quant" in variant.params and not isinstance(variant.params["double_quant"], bool):
            raise QevalInputError(f"variant {variant.name!r}: double_quant must be true or false")

    def loading_config(self, variant: VariantSpec, compute_dtype):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=bool(variant.params.get("double_quant", False)),
        )

    def loaded(self, kernel: str, device: str) -> tuple[str, tuple[str, ...]]:
        return bitsandbytes_kernel(kernel, device), ()

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        return f"nf4:double_quant={str(variant.params.get('double_quant', False)).lower()}"


METHOD = NF4()
