"""fp32 / fp16 / bf16: the baseline's weights in a float dtype on transformers (the baselines,
and dtype candidates)."""

from __future__ import annotations

from qeval.types import VariantSpec
from qeval.variants.base import OnLoad

_FULL_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


class FullPrecision(OnLoad):
    baseline = True
    params = frozenset({"numeric_path"})

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        # Held in the dtype it computed in (fp16 is computed, and held, in float32 on a CPU
        # unless strict).
        return _FULL_PRECISION.get(compute_dtype.split(",")[0].strip(), self.name)


FP32 = FullPrecision("fp32", "float32")
FP16 = FullPrecision("fp16", "float16")
BF16 = FullPrecision("bf16", "bfloat16")
