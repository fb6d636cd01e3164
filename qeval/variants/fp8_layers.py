"""The torch side of fp8 / fp8wo (qeval/variants/fp8.py says what and why): which layers,
torchao's real FP8 path where it runs, and the exact emulation of FP8 W8A8 where it does not.
Imported only when a model is being quantized (it imports torch and torchao)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
FP8_MATMUL_CAPABILITY = (8, 9)  # Ada and Hopper: FP8 tensor cores (torchao's own threshold)
SCALED_MM_MULTIPLE = 16  # torch._scaled_mm needs both widths to be multiples of 16


def cuda_capability(device: str) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(torch.device(device)))


def _torchao():
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)  # optional CUDA kernels it cannot load
    import torchao

    return torchao


class Fp8EmulatedLinear(torch.nn.Module):
    """nn.Linear under FP8 W8A8 as torchao quantizes it, with the FP8 matmul emulated: the weight
    is torchao's Float8Tensor (e4m3, one scale per output row); each call rounds the input to
    e4m3 with one scale per token (torchao's Float8Tensor.from_hp, PerRow) and multiplies the
    dequantized operands in the input's dtype (torchao's weight-only matmul)."""

    def __init__(self, linear: torch.nn.Linear):
        from torchao.quantization import Float8Tensor, PerRow

        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = Float8Tensor.from_hp(linear.weight.detach(), float8_dtype=E4M3, granularity=PerRow())
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.quantization import Float8Tensor, PerRow

        q = Float8Tensor.from_hp(x, float8_dtype=E4M3, granularity=PerRow()).dequantize()
        # An all-zero token (padding in a batched generation) has scale 0 in torchao and would
        # come back NaN; it is zero in e4m3 at any scale (vLLM clamps the scale instead).
        x = torch.where(x.abs().amax(-1, keepdim=True) == 0, torch.zeros_like(q), q)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 W8A8 (emulated)"


def _linear_layers(model) -> tuple[dict[str, torch.nn.Linear], list[str]]:
    """The nn.Linear layers to quantize (name → layer), and the names of those kept: the output
    head (and so the embeddings it may be tied to)."""
    head = model.get_output_embeddings()
    chosen, kept = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            (kept.append(name) if mod is head else chosen.__setitem__(name, mod))
    return chosen, kept


def _real_fp8_refusal(device: str, dtype: torch.dtype) -> str | None:
    """Why torchao's FP8 matmul cannot run here, or None when it can."""
    if not device.startswith("cuda"):
        return "a CPU has no FP8 matmul (torchao's FP8 W8A8 needs CUDA compute capability >= 8.9)"
    cap = cuda_capability(device)
    if cap < FP8_MATMUL_CAPABILITY:
        return (f"this GPU (compute capability {cap[0]}.{cap[1]}) has no FP8 tensor cores "
                "(torchao's FP8 W8A8 needs compute capability >= 8.9: Ada, Hopper)")
    if dtype != torch.bfloat16:
        return (f"torchao's per-row FP8 matmul takes bfloat16 weights and gives bfloat16 outputs, and "
                f"this comparison computes in {str(dtype).removeprefix('torch.')}; --base bf16 runs the "
                "real kernels")
    return None


def quantize_fp8(model, device: str, *, activations: bool) -> tuple[str, ...]:
    """Quantize `model` in place: torchao's FP8 (W8A8 if `activations`, else weight-only) on
    every linear layer but the output head; W8A8 emulated where torchao's FP8 matmul cannot run.
    Returns the record's notes."""
    torchao = _torchao()
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow, quantize_,
    )

    dtype = next(model.parameters()).dtype
    chosen, kept = _linear_layers(model)
    notes = []
    if kept:
        notes.append(f"{', '.join(kept)} (the output head) kept in {str(dtype).removeprefix('torch.')}, "
                     "as vLLM's fp8 and transformers' TorchAoConfig keep it")
    if activations:
        narrow = [n for n, m in chosen.items()
                  if m.in_features % SCALED_MM_MULTIPLE or m.out_features % SCALED_MM_MULTIPLE]
        if narrow:
            notes.append(f"{len(narrow)} linear layers whose widths are not multiples of 16 kept unquantized, "
                         "as torchao keeps them (torch._scaled_mm needs multiples of 16)")
        chosen = {n: m for n, m in chosen.items() if n not in narrow}
    refusal = _real_fp8_refusal(device, dtype) if activations else None
    if activations and refusal is not None:
        for name, mod in chosen.items():
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, Fp8EmulatedLinear(mod))
        notes.append(f"FP8 emulated: {refusal}. torchao's e4m3 rounding of weights (per output row) and of "
                     f"activations (per token, at every call) is applied exactly; the dequantized operands "
                     f"are multiplied in {str(dtype).removeprefix('torch.')} (torchao {torchao.__version__})")
        return tuple(notes)
    config = (Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
              if activations else Float8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False))
    targets = set(map(id, chosen.values()))
    quantize_(model, config, filter_fn=lambda mod, fqn: id(mod) in targets)
    return tuple(notes)


def describe(kernel: str, device: str, *, activations: bool) -> str:
    """The kernel summary completed with what ran: real FP8 kernels, emulated, or weight-only."""
    torchao = _torchao()
    version = f"torchao {torchao.__version__}"
    if not activations:
        return (f"{kernel} — FP8 weight-only ({version}): e4m3 weights, one scale per output row, "
                "dequantized to the compute dtype for each matmul; activations not quantized (the same "
                "arithmetic on every device: weight-only FP8 has no FP8 matmul)")
    if "Fp8EmulatedLinear" in kernel:
        return (f"{kernel} — FP8 emulated ({version} e4m3 rounding: weights per output row, activations "
                "per token; the dequantized operands multiplied in the compute dtype)")
    try:  # torchao picks mslk's kernel when that package is installed on Hopper
        from torchao.utils import _is_mslk_available, is_sm_at_least_90

        mslk = _is_mslk_available() and is_sm_at_least_90()
    except ImportError:
        mslk = False
    matmul = "mslk f8f8bf16_rowwise" if mslk else "torch._scaled_mm, rowwise scales"
    return (f"{kernel} — real FP8 kernels ({version}: e4m3 weights per output row, dynamic per-token "
            f"e4m3 activations, {matmul}, bfloat16 output)")
