"""gptq: GPTQ by gptqmodel on a calibration set, or a GPTQ checkpoint brought (`gptq=PATH`)."""

from __future__ import annotations

from qeval.variants.calibrated import COMMON, Calibrated


class GPTQ(Calibrated):
    name = "gptq"
    params = COMMON | {"act_order", "damp"}
    bits = (2, 3, 4, 8)
    # gptqmodel's fast CPU kernels (TorchAten, TorchFused) round activations to bfloat16 inside
    # the int4 matmul; GPTQ's `torch` kernel dequantizes to the baseline's float32 instead, so
    # the comparison measures the quantized weights alone.
    cpu_kernel = "torch"
    # On a CPU, GPTQ works from the float32 weights the baseline computes with (gptqmodel's own
    # choice there, bfloat16, adds rounding that is not GPTQ's).
    cpu_quantize_dtype = "float32"


METHOD = GPTQ()
