"""fp8 and fp8wo: FP8 (float8 e4m3) on the transformers engine, quantized after the model loads.

- `fp8`  (W8A8): each linear layer's weights rounded to e4m3 with one scale per output row
  (absmax / 448), and its input activations rounded to e4m3 at every call with one scale per
  token (dynamic, absmax / 448); the two FP8 operands are multiplied.
- `fp8wo` (weight-only): the same e4m3 weights, dequantized to the compute dtype for each
  matmul; activations stay in the compute dtype.

**Implementation: torchao** (the maintained PyTorch implementation, already qeval's `int8wo`
package; transformers' TorchAoConfig calls the same code): `Float8DynamicActivationFloat8WeightConfig(
granularity=PerRow())` and `Float8WeightOnlyConfig(granularity=PerRow())`, applied with
`torchao.quantization.quantize_` to the layers chosen below (qeval/variants/fp8_layers.py).

- `fp8wo` runs torchao's own code on every device: its weight-only linear dequantizes the e4m3
  weights and multiplies in the compute dtype everywhere (weight-only FP8 has no FP8 matmul on any
  hardware), so a CPU computes what a Hopper GPU computes. Nothing is emulated.
- `fp8` runs torchao's real FP8 matmul (torch._scaled_mm rowwise, or mslk's f8f8bf16_rowwise when
  installed) where torchao runs it: CUDA compute capability >= 8.9 (Ada, Hopper) and bfloat16
  compute (torchao's per-row FP8 takes bfloat16 weights only; the rowwise matmul outputs
  bfloat16). Elsewhere torchao has no path (it refuses FP8 W8A8 below compute capability 8.9 and
  on a CPU), so qeval emulates it exactly: `Fp8EmulatedLinear` holds torchao's own e4m3 weights
  and per-row scales (a torchao Float8Tensor), rounds each call's activations with torchao's
  per-token e4m3 quantization, and multiplies the dequantized operands in the compute dtype. The
  quantization error is torchao's bit for bit; only the matmul's accumulation order differs
  from the FP8 tensor cores'. The record says which ran: "real FP8 kernels (torchao …)" or
  "FP8 emulated".

**Layers**: every nn.Linear except the output head (lm_head; with tied embeddings, the embedding
matrix it shares); embeddings and norms are not linear layers. vLLM's fp8 and transformers'
TorchAoConfig leave the same ones in 16-bit. For `fp8`, a layer whose input or output width is
not a multiple of 16 stays unquantized too, as torchao leaves it (torch._scaled_mm needs
multiples of 16); the record counts such layers. `vllm:fp8` (qeval/variants/vllm.py) is the same
format on vLLM's kernels."""

from __future__ import annotations

from typing import Any

from qeval.types import VariantSpec
from qeval.variants.base import OnLoad


class FP8(OnLoad):
    name = "fp8"
    package = "torchao"
    kernels = ("Float8Tensor",)  # torchao's FP8 weights, in nn.Linear or in Fp8EmulatedLinear
    activations = True  # W8A8: activations rounded to e4m3 per token

    def identity(self, ctx: Any, variant: VariantSpec) -> dict:
        """Whether a CUDA device has FP8 matmuls decides real or emulated, so its compute
        capability joins the record-store key (an A100's emulated records are not an H100's)."""
        ident = super().identity(ctx, variant)
        device = str(ident.get("device", ""))
        if device.startswith("cuda"):
            from qeval.variants.fp8_layers import cuda_capability

            ident = {**ident, "cuda_capability": ".".join(map(str, cuda_capability(device)))}
        return ident

    def after_load(self, model: Any, device: str) -> tuple[str, ...]:
        from qeval.variants.fp8_layers import quantize_fp8

        return quantize_fp8(model, device, activations=self.activations)

    def loaded(self, kernel: str, device: str) -> tuple[str, tuple[str, ...]]:
        from qeval.variants.fp8_layers import describe

        return describe(kernel, device, activations=self.activations), ()

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        return "fp8"


class FP8WeightOnly(FP8):
    name = "fp8wo"
    activations = False

    def identity(self, ctx: Any, variant: VariantSpec) -> dict:
        return OnLoad.identity(self, ctx, variant)  # the same arithmetic on every device


METHOD = FP8()
WEIGHT_ONLY = FP8WeightOnly()
