"""Gemma-3 on two engines: where does llama.cpp's disagreement with transformers come from?

Issue 23 measured, on the real Gemma-3-270M, a Q4_K_M GGUF on llama.cpp against its own exact
float de-quantization on transformers: mean token KLD 0.0163 (SmolLM2/Llama: 0.0027). Same
weights, two engines. This script separates the candidates by measurement, on tiny random
models built here (no download), Gemma-3 and Llama of the same size:

- conversion and attention: the F32 GGUF (no rounding anywhere) against transformers fp32, on
  passages shorter and longer than Gemma's sliding window, and the GGUF read back by
  transformers (qeval's `--model file.gguf` path) against the original checkpoint;
- llama.cpp's own arithmetic: each GGUF type against transformers running the *same* weights
  (the file's exact float de-quantization), then again with transformers rounding each matmul's
  input activations the way ggml's CPU dot products do (F16 weights: activations to F16; Q8_0:
  to Q8_0, blocks of 32; k-quants: to Q8_K, blocks of 256). What the emulation removes is
  activation rounding; what it leaves is something else.
- Gemma's features: (1 + w) RMSNorm with the large norm weights trained Gemma models carry
  (a few channels x30: activation outliers), embedding scaling by sqrt(hidden), GELU (which ggml
  computes from an fp16 table on the CPU; Llama's SiLU is computed in fp32).

Run: PYTHONPATH=. python benchmarks/gemma3_cross_engine.py  (about 15 minutes on 2 cores);
prints the table and writes its numbers to benchmarks/results_gemma3_cross_engine.json (the
findings: benchmarks/results_gemma3_cross_engine.md).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import tiny_checkpoint  # noqa: E402

TYPES = ["f32", "f16", "q8_0", "q4_k_m"]
# ggml CPU: the type a weight type's dot product converts its input activations to (vec_dot_type).
ACT_ROUNDING = {"F32": None, "F16": "f16", "Q8_0": "q8_0", "Q4_0": "q8_0", "Q5_0": "q8_0",
                "Q4_K": "q8_k", "Q5_K": "q8_k", "Q6_K": "q8_k"}
HF_FROM_GGUF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
WINDOW = 64  # Gemma's sliding window in the tiny model
SHORT, LONG = 48, 240  # tokens per passage: inside the window, and well beyond it


def q8_0(x: torch.Tensor) -> torch.Tensor:
    """ggml quantize_row_q8_0 and back: blocks of 32, d = amax/127 stored as fp16."""
    b = x.reshape(*x.shape[:-1], -1, 32)
    d = (b.abs().amax(-1, keepdim=True) / 127).half().float()
    q = torch.where(d > 0, torch.round(b / torch.where(d > 0, d, 1)), 0)
    return (q * d).reshape(x.shape)


def q8_k(x: torch.Tensor) -> torch.Tensor:
    """ggml quantize_row_q8_K and back: blocks of 256, scale from the signed extreme, fp32."""
    b = x.reshape(*x.shape[:-1], -1, 256)
    idx = b.abs().argmax(-1, keepdim=True)
    mx = torch.gather(b, -1, idx)
    iscale = torch.where(mx != 0, -127.0 / torch.where(mx != 0, mx, 1), 0)
    q = torch.clamp(torch.round(iscale * b), max=127)
    d = torch.where(iscale != 0, 1 / torch.where(iscale != 0, iscale, 1), 0)
    return (q * d).reshape(x.shape)


ROUND = {"f16": lambda x: x.half().float(), "q8_0": q8_0, "q8_k": q8_k}


def tensor_types(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def gelu_fp16_table(x: torch.Tensor) -> torch.Tensor:
    """ggml's CPU GELU (GGML_GELU_FP16): input rounded to fp16, looked up in an fp16 table."""
    y = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))


def rounding_hooks(model, types: dict[str, str]):
    """Round each Linear's input as ggml does for that weight's type, and compute GELU as ggml
    does (an fp16 table); returns the hook handles."""
    handles = []
    for layer in model.model.layers:
        if getattr(model.config, "hidden_activation", None) == "gelu_pytorch_tanh":
            layer.mlp.act_fn = _Gelu16()
    for name, ggml_type in types.items():
        parts = name.split(".")
        if parts[0] == "blk" and parts[2] in HF_FROM_GGUF:
            module = model.get_submodule(f"model.layers.{parts[1]}.{HF_FROM_GGUF[parts[2]]}")
        elif name in ("output.weight",) or (name == "token_embd.weight" and "output.weight" not in types):
            module = model.lm_head
        else:
            continue
        how = ACT_ROUNDING.get(ggml_type)
        if how is None:
            continue
        fn = ROUND[how]
        handles.append(module.register_forward_pre_hook(lambda m, args, fn=fn: (fn(args[0]),)))
    return handles


class _Gelu16(torch.nn.Module):
    def forward(self, x):
        return gelu_fp16_table(x)


def hf_logprobs(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1).numpy()


def mean_kld(ref: np.ndarray, lp: np.ndarray) -> float:
    return float((np.exp(ref) * (ref - lp)).sum(-1).mean())


def outlier_norms(model, factor: float = 30.0, channels: int = 4) -> None:
    """Large (1 + w) norm weights on a few channels, as trained Gemma models have: activation
    outliers entering the next matmul."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("input_layernorm.weight", "pre_feedforward_layernorm.weight")):
                idx = torch.randperm(p.numel(), generator=g)[:channels]
                p[idx] = (1 + p[idx]) * factor - 1 if "gemma" in type(model).__name__.lower() else p[idx] * factor


def measure(arch: str, variant: str, root: Path, rng: np.random.Generator) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from qeval.engines.llamacpp import LlamaCppBackend
    from qeval.run.config import parse_variant
    from qeval.quantize.gguf import gguf_artefact
    from qeval.model_source import ResolvedModel, _materialise_gguf, fingerprint_dir

    ckpt = root / f"{arch}-{variant}" / "ckpt"
    extra = dict(sliding_window=WINDOW) if arch == "gemma3" else {}
    _, model = tiny_checkpoint(ckpt, arch, hidden=256, intermediate=1024, layers=6,
                               max_position_embeddings=512, **extra)
    if arch == "llama":  # norm weights away from ones, as tiny_checkpoint does for Gemma-3
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(1.0, 0.2)
    if variant == "outliers":
        outlier_norms(model)
    model.save_pretrained(ckpt)
    vocab = model.config.vocab_size
    passages = {"short": [rng.integers(1, vocab, SHORT).tolist() for _ in range(6)],
                "long": [rng.integers(1, vocab, LONG).tolist() for _ in range(3)]}
    base = {k: [hf_logprobs(model, p) for p in ps] for k, ps in passages.items()}
    resolved = ResolvedModel("tiny", ckpt, fingerprint_dir(ckpt), "tiny")
    rows = []
    for qtype in TYPES:
        path = gguf_artefact(ckpt, resolved.fingerprint, qtype, root / "cache")
        types = tensor_types(path)
        backend = LlamaCppBackend(resolved, parse_variant(f"gguf:{qtype}"), cache=root / "cache")
        cpp = {k: [backend.token_logprobs(p).astype(np.float64) for p in ps] for k, ps in passages.items()}
        backend.close()
        # The set-up: transformers on the file's exact float de-quantization.
        deq_dir, _ = _materialise_gguf(path)
        deq = AutoModelForCausalLM.from_pretrained(deq_dir, dtype=torch.float32).eval()
        same = {k: [hf_logprobs(deq, p) for p in ps] for k, ps in passages.items()}
        handles = rounding_hooks(deq, types)
        emulated = {k: [hf_logprobs(deq, p) for p in ps] for k, ps in passages.items()}
        for h in handles:
            h.remove()
        del deq  # its activation was replaced
        for k in passages:
            def avg(a, b):
                return float(np.mean([mean_kld(x, y) for x, y in zip(a[k], b[k])]))
            rows.append({
                "arch": arch, "variant": variant, "type": qtype.upper(), "passage": k,
                "vs_fp32": avg(base, cpp),  # what `--base fp32 --candidates gguf:<type>` measures
                "vs_same_weights": avg(same, cpp),  # engine only (the measurement)
                "vs_same_weights_act_rounded": avg(emulated, cpp),  # what activation rounding leaves
                "dequant_vs_fp32": avg(base, same),  # the weights' own rounding, on transformers
            })
    return rows


def table(rows: list[dict]) -> str:
    head = ("| model | GGUF | passage | KLD vs fp32 checkpoint | KLD vs same weights on transformers "
            "(engine only) | ... with ggml's activation rounding emulated | weights' rounding alone "
            "(transformers) |\n|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['arch']}{' (outlier norms)' if r['variant'] == 'outliers' else ''} | {r['type']} | "
        f"{r['passage']} | {r['vs_fp32']:.2e} | {r['vs_same_weights']:.2e} | "
        f"{r['vs_same_weights_act_rounded']:.2e} | {r['dequant_vs_fp32']:.2e} |\n" for r in rows)


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("QEVAL_CACHE", str(Path(tmp) / "qeval-cache"))
        rows = []
        for arch, variant in (("gemma3", "plain"), ("gemma3", "outliers"), ("llama", "plain"), ("llama", "outliers")):
            rows += measure(arch, variant, Path(tmp), rng)
            print(f"{arch} {variant}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = Path(__file__).with_name("results_gemma3_cross_engine.json")
    out.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
