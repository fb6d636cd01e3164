"""awq: AWQ by gptqmodel (GEMM format) on a calibration set, or an AWQ or llm-compressor
(compressed-tensors) checkpoint brought (`awq=PATH`)."""

from __future__ import annotations

from qeval.types import VariantSpec
from qeval.variants.calibrated import COMMON, Calibrated


class AWQ(Calibrated):
    name = "awq"
    params = COMMON | {"clip"}
    bits = (4,)
    cpu_kernel = None  # AWQ has no float32 CPU kernel in gptqmodel 7.6: its CPU kernels take bf16
    # AWQ's only CPU packing kernel takes float16/bfloat16; forcing float32 through it produced a
    # broken model (measured: NLL 14.8 vs 4.3), so AWQ stays in bfloat16 on a CPU.
    cpu_quantize_dtype = "bfloat16"

    def resolved(self, ctx, variant: VariantSpec) -> VariantSpec:
        if "clip" not in variant.params:
            # AWQ's clip search is seconds on a GPU and ~10 minutes on 2 CPU cores: on by default
            # where it is cheap, off elsewhere, and stated in the artefact either way.
            return variant.model_copy(update={"params": {
                **variant.params, "clip": ctx.engine_for(variant).device.startswith("cuda")}})
        return variant


METHOD = AWQ()
