"""int8wo: torchao int8 weight-only while loading (per-channel int8 weights, activations in the
compute dtype)."""

from __future__ import annotations

from qeval.types import VariantSpec
from qeval.variants.base import OnLoad


class Int8WeightOnly(OnLoad):
    name = "int8wo"
    package = "torchao"
    kernels = ("Int8",)

    def loading_config(self, variant: VariantSpec, compute_dtype):
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        return "int8"


METHOD = Int8WeightOnly()
