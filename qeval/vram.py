"""VRAM planning for a deployment: weights + KV cache + CUDA overhead + 15% headroom.

Pure arithmetic on a model's shape; nothing here loads a model. Every line of a Plan says how it
was computed, so a reader can check it by hand.

- Weights: the linear layers at the format's bits per weight (scales and zero points included);
  embeddings, the output head and norms stay 16-bit in GPTQ/AWQ/bitsandbytes checkpoints (GGUF
  quantizes them too).
- KV cache per token: 2 (K and V) × layers × KV heads × head dim × bytes per element. With grouped-
  query attention the KV heads are fewer than the attention heads; counting attention heads instead
  (a common naive estimate) overstates the cache by heads / KV heads.
- Overhead per GPU: the CUDA context and library workspaces (a fixed allowance), plus activations
  of one prefill chunk and the logits of one decoding step.
- Headroom: 15% of the sum, for fragmentation and allocator slack.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qeval.errors import QevalInputError

GiB = 1024**3
HEADROOM = 0.15
CUDA_CONTEXT_BYTES = int(0.75 * GiB)  # CUDA context + cuBLAS/NCCL workspaces, per GPU (allowance)
PREFILL_CHUNK_TOKENS = 2048  # tokens of one prefill chunk (vLLM's chunked-prefill default order)
DEFAULT_UTILIZATION = 0.85

# Memory as nvidia-smi reports it (MiB → bytes): the usable total, not the marketing number.
GPUS: dict[str, int] = {
    "T4": 15360 * 2**20,
    "A10G": 23028 * 2**20,
    "L4": 23034 * 2**20,
    "A100-40GB": 40960 * 2**20,
    "A100-80GB": 81920 * 2**20,
    "H100-80GB": 81559 * 2**20,
    "H200": 143771 * 2**20,
}

# Bits per weight of the quantized linear layers, scales included. GGUF k-quant mixes depend on
# the model's row lengths (see the GGUF notes in README); these are llama.cpp's figures for 7B+.
GGUF_BPW = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.5625, "q5_k_m": 5.69,
            "q5_k_s": 5.54, "q5_1": 6.0, "q5_0": 5.5, "q4_k_m": 4.85, "q4_k_s": 4.58, "q4_1": 5.0,
            "q4_0": 4.5, "q3_k_l": 4.27, "q3_k_m": 3.91, "q3_k_s": 3.5, "q2_k": 2.63}
# Bytes per KV-cache element, block scales included: llama.cpp's q8_0 is 34 bytes per 32 (an fp16
# scale per block), q4_0 18 per 32; transformers' quantized cache (HQQ, groups of 64, as the
# engine runs it: qeval/engines/hf_kv.py) keeps a scale and zero point per group in the compute
# dtype, fp16 here: int8 1 + 4/64, int4 0.5 + 4/64 (a float32 model's are 8 bytes per group; the
# engine keeps no full-precision tail: each position is quantized when written). f16 is llama.cpp's name for fp16.
KV_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "f16": 2, "fp8": 1, "int8": 1 + 4 / 64, "q8_0": 34 / 32,
            "int4": 0.5 + 4 / 64, "q4_0": 18 / 32}
KV_SCALES = {"q8_0": ", 34 B per block of 32", "q4_0": ", 18 B per block of 32",
             "int8": ", fp16 scale and zero per 64", "int4": ", fp16 scale and zero per 64"}
KV_SUFFIX = "+kv="  # a variant's KV-cache dtype, as qeval/variants/spec.py reads it


def split_kv_format(fmt: str) -> tuple[str, str | None]:
    """`gguf:q4_k_m+kv=q8_0` → (`gguf:q4_k_m`, `q8_0`): the planner follows a variant's cache."""
    base, sep, kv = fmt.partition(KV_SUFFIX)
    return (base, kv.strip().lower() or None) if sep else (fmt, None)


class ModelShape(BaseModel):
    """What the memory of a decoder-only transformer depends on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    tied_embeddings: bool = False
    # Total parameters when known (e.g. stated by the model card); else computed from the shape.
    params: int | None = Field(None, gt=0)

    def linear_params(self) -> int:
        """Attention and MLP projections (gated MLP: gate, up, down), all layers."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp)

    def other_params(self) -> int:
        """Embeddings, output head (unless tied) and norms: kept 16-bit by weight quantizers."""
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        norms = (2 * self.layers + 1) * self.hidden
        if self.params is not None:
            return max(self.params - self.linear_params(), embed + norms)
        return embed + norms

    def total_params(self) -> int:
        return self.params if self.params is not None else self.linear_params() + self.other_params()


PRESETS: dict[str, ModelShape] = {
    # Llama-2-70B: the worked example most engineers know (GQA, 8 KV heads).
    "llama-2-70b": ModelShape(name="llama-2-70b", layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128,
                              vocab=32000, intermediate=28672, params=68_976_648_192),
    "llama-3-70b": ModelShape(name="llama-3-70b", layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128,
                              vocab=128256, intermediate=28672, params=70_553_706_496),
    "llama-3-8b": ModelShape(name="llama-3-8b", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128,
                             vocab=128256, intermediate=14336, params=8_030_261_248),
}


def shape_from_config(config: dict, name: str = "custom") -> ModelShape:
    """From an HF config.json (llama-like field names)."""
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return ModelShape(
            name=name, layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
            intermediate=int(config["intermediate_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)))
    except KeyError as exc:
        raise QevalInputError(f"model config {name}: no {exc.args[0]!r}; give a decoder-only HF "
                              "config.json or the shape with --layers/--hidden/... ") from None


def load_shape(model: str) -> ModelShape:
    """A preset name, a config.json, a checkpoint directory holding one, or a built-in alias."""
    if model in PRESETS:
        return PRESETS[model]
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            return shape_from_config(json.loads(path.read_text()), name=model)
        except ValueError:
            raise QevalInputError(f"{path}: not valid JSON; give an HF config.json") from None
    from qeval.model_source import ALIASES, resolve_model

    if model in ALIASES:
        return shape_from_config(json.loads((Path(resolve_model(model).path) / "config.json").read_text()),
                                 name=model)
    raise QevalInputError(f"--model {model!r}: not a preset ({', '.join(PRESETS)}), a built-in alias, "
                          "a config.json or a checkpoint directory; or give the shape with --layers, "
                          "--hidden, --heads, --kv-heads, --head-dim, --vocab, --intermediate")


def bits_per_weight(fmt: str) -> tuple[float, str]:
    """(bits per quantized weight, how it was computed) for fp16, bf16, fp32, fp8, int8, int4/gptq/awq
    with `:group=N`, or gguf:<type>."""
    name, _, rest = fmt.lower().partition(":")
    params = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
    if name in ("fp16", "bf16"):
        return 16.0, "16-bit weights"
    if name == "fp32":
        return 32.0, "32-bit weights"
    if name == "int8":
        return 8.0 + 16 / 4096, "8-bit weights + one fp16 scale per row (~8.0)"
    if name == "fp8":  # e4m3 weights; vLLM's dynamic FP8 keeps one fp32 scale per tensor (or per row)
        return 8.0 + 32 / 4096, "8-bit e4m3 weights + an fp32 scale per row at most (~8.0)"
    if name == "nf4":  # bitsandbytes: 4-bit codes + an absmax per block of 64 (fp32, or 8-bit doubly quantized)
        if str(params.get("double_quant", "false")).lower() == "true":
            return 4 + 8 / 64 + 32 / (64 * 256), "4 bits + 8-bit absmax per 64 (+ fp32 per 256 blocks)"
        return 4 + 32 / 64, "4 bits + fp32 absmax per block of 64"
    if name in ("gptq", "awq", "int4"):
        group = int(params.get("group", 128))
        bits = int(params.get("bits", 4))
        if group <= 0:  # per-channel: one scale and zero per output row, negligible per weight
            return float(bits), f"{bits}-bit weights, per-channel scales"
        return bits + (16 + bits) / group, f"{bits} bits + fp16 scale and {bits}-bit zero per group of {group}"
    if name == "gguf":
        kind = rest.split(",")[0] if rest else ""
        if kind not in GGUF_BPW:
            raise QevalInputError(f"--format {fmt!r}: unknown GGUF type; choose from {', '.join(GGUF_BPW)}")
        return GGUF_BPW[kind], f"GGUF {kind}: {GGUF_BPW[kind]} bits per weight (llama.cpp's figure)"
    raise QevalInputError(f"--format {fmt!r}: choose fp16, bf16, fp32, fp8, int8, nf4, gptq[:group=N], "
                          "awq[:group=N] or gguf:<type>")


class PlanLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item: str
    bytes: int
    how: str


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    format: str
    context: int
    sequences: int
    kv_dtype: str
    gpu: str
    gpu_bytes: int
    lines: tuple[PlanLine, ...]  # weights, KV cache, overhead, headroom, total
    total_bytes: int
    kv_bytes_per_token: int
    gpus_needed: int  # memory alone
    tensor_parallel: int | None  # smallest size ≥ gpus_needed dividing the heads; None: none fits 1..8
    gpu_memory_utilization: float
    sequences_that_fit: int  # of this context, in the KV budget at that utilization
    notes: tuple[str, ...]


def kv_bytes_per_token(shape: ModelShape, kv_dtype: str, *, with_gqa: bool = True) -> int:
    heads = shape.kv_heads if with_gqa else shape.heads
    return math.ceil(2 * shape.layers * heads * shape.head_dim * KV_BYTES[kv_dtype])


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def plan(shape: ModelShape, *, fmt: str = "fp16", context: int = 4096, sequences: int = 1,
         kv_dtype: str | None = None, gpu: str = "H100-80GB", gpu_bytes: int | None = None) -> Plan:
    """`kv_dtype` None: the format's own `+kv=` suffix (a variant's KV cache), else fp16."""
    fmt, fmt_kv = split_kv_format(fmt)
    if fmt_kv is not None and kv_dtype is not None and kv_dtype != fmt_kv:
        raise QevalInputError(f"--format {fmt}+kv={fmt_kv} and --kv-dtype {kv_dtype} disagree; give the "
                              "KV-cache dtype once")
    kv_dtype = fmt_kv or kv_dtype or "fp16"
    if kv_dtype not in KV_BYTES:
        raise QevalInputError(f"--kv-dtype {kv_dtype!r}: choose from {', '.join(KV_BYTES)}")
    if gpu_bytes is None:
        if gpu not in GPUS:
            raise QevalInputError(f"--gpu {gpu!r}: choose from {', '.join(GPUS)} or give --gpu-memory")
        gpu_bytes = GPUS[gpu]
    if context < 1 or sequences < 1:
        raise QevalInputError("--context and --sequences must be at least 1")
    bpw, bpw_how = bits_per_weight(fmt)
    # Embeddings and head stay 16-bit in GPTQ/AWQ/bitsandbytes checkpoints; llama.cpp quantizes
    # them with the rest of a GGUF.
    other_bits = 32.0 if fmt.lower().startswith("fp32") else bpw if fmt.lower().startswith("gguf") else 16.0
    linear, other = shape.linear_params(), shape.other_params()
    weights = int(linear * bpw / 8 + other * other_bits / 8)
    per_token = kv_bytes_per_token(shape, kv_dtype)
    kv = per_token * context * sequences
    act = PREFILL_CHUNK_TOKENS * (4 * shape.hidden + 2 * shape.intermediate) * 2
    logits = min(sequences, 256) * shape.vocab * 4
    overhead = CUDA_CONTEXT_BYTES + act + logits
    subtotal = weights + kv + overhead
    headroom = int(HEADROOM * subtotal)
    total = subtotal + headroom
    lines = (
        PlanLine(item="weights", bytes=weights, how=(
            f"{linear / 1e9:.3g}B linear params × {bpw:.4g} bits ({bpw_how}) + {other / 1e9:.3g}B "
            f"embedding/head/norm params × {other_bits:g} bits")),
        PlanLine(item="KV cache", bytes=kv, how=(
            f"2 (K,V) × {shape.layers} layers × {shape.kv_heads} KV heads × {shape.head_dim} head dim × "
            f"{KV_BYTES[kv_dtype]:.4g} B ({kv_dtype}{KV_SCALES.get(kv_dtype, '')}) = {per_token:,} B/token × "
            f"{context} tokens × {sequences} sequences")),
        PlanLine(item="CUDA + activations", bytes=overhead, how=(
            f"{_gib(CUDA_CONTEXT_BYTES)} CUDA context/workspaces + {_gib(act)} activations of a "
            f"{PREFILL_CHUNK_TOKENS}-token prefill chunk + {_gib(logits)} fp32 logits of one decode step "
            "(per GPU; counted once here)")),
        PlanLine(item="headroom", bytes=headroom, how=f"{HEADROOM:.0%} of the above (fragmentation, allocator slack)"),
        PlanLine(item="total", bytes=total, how="weights + KV cache + overhead + headroom"),
    )
    needed = max(1, math.ceil(total / gpu_bytes))
    tp = next((t for t in (1, 2, 4, 8) if t >= needed and shape.heads % t == 0
               and (shape.kv_heads % t == 0 or t % shape.kv_heads == 0)), None)
    notes = []
    util = DEFAULT_UTILIZATION
    fits = 0
    if tp is not None:
        # Each GPU holds 1/tp of the weights and KV cache, and its own overhead.
        per_gpu = (weights + kv) / tp + overhead
        if per_gpu > util * gpu_bytes:
            util = min(0.95, math.ceil(per_gpu / gpu_bytes * 100) / 100)
            notes.append(f"gpu_memory_utilization raised to {util:.2f}: at 0.85 the KV cache for "
                         f"{sequences} × {context} tokens does not fit on {tp} GPU(s)")
        budget = (util * gpu_bytes - overhead - weights / tp) * tp
        fits = max(0, int(budget // (per_token * context)))
        if tp > needed:
            notes.append(f"memory needs {needed} GPU(s); tensor parallelism must divide the "
                         f"{shape.heads} attention heads, so {tp}")
    else:
        notes.append(f"needs {needed} GPUs of {_gib(gpu_bytes)}: more than 8-way tensor parallelism; "
                     "use pipeline parallelism or a bigger GPU")
    naive = kv_bytes_per_token(shape, kv_dtype, with_gqa=False) * context * sequences
    if shape.kv_heads != shape.heads:
        notes.append(f"without GQA (KV counted for all {shape.heads} heads) the KV cache would be "
                     f"{_gib(naive)}, {shape.heads // shape.kv_heads}× too much")
    notes.append(f"weights only would say {math.ceil(weights / gpu_bytes)} GPU(s): it ignores "
                 f"{_gib(total - weights)} of KV cache, overhead and headroom")
    return Plan(model=shape.name, format=fmt, context=context, sequences=sequences, kv_dtype=kv_dtype,
                gpu=gpu, gpu_bytes=gpu_bytes, lines=lines, total_bytes=total, kv_bytes_per_token=per_token,
                gpus_needed=needed, tensor_parallel=tp, gpu_memory_utilization=util,
                sequences_that_fit=fits, notes=tuple(notes))


# ---------------------------------------------------------------- the plan as vLLM arguments

VLLM_QUANTIZATION = {"fp8": "fp8", "nf4": "bitsandbytes"}  # formats vLLM quantizes while loading
VLLM_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
VLLM_KV = {"fp16": "auto", "f16": "auto", "bf16": "auto", "fp32": "auto", "fp8": "fp8"}  # auto: the model's dtype


class VllmServe(BaseModel):
    """What a plan implies for vLLM: the `vllm serve` command, and the qeval variant that scores
    the same configuration (so the gate evaluates what will be served)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: tuple[str, ...]
    variant: str | None  # the qeval candidate (None: vLLM serves this format, qeval cannot make it)
    notes: tuple[str, ...]


def vllm_serve(result: Plan, model: str) -> VllmServe:
    """`vllm serve` arguments from a plan: tensor-parallel size, gpu_memory_utilization, the
    context as max-model-len, the KV-cache dtype, concurrent sequences; request logging off (a
    PHI server logs no prompts) and statistics logging off."""
    fmt = result.format.split(":")[0]
    notes: list[str] = []
    if result.tensor_parallel is None:
        raise QevalInputError(f"no tensor-parallel size of 1..8 GPUs holds {result.model} as {result.format} "
                              f"on {result.gpu}; plan a larger GPU (--gpu) or a smaller format")
    argv = ["vllm", "serve", model, "--tensor-parallel-size", str(result.tensor_parallel),
            "--gpu-memory-utilization", f"{result.gpu_memory_utilization:.2f}",
            "--max-model-len", str(result.context), "--max-num-seqs", str(result.sequences)]
    if fmt in VLLM_DTYPE:
        argv += ["--dtype", VLLM_DTYPE[fmt]]
    if fmt in VLLM_QUANTIZATION:
        argv += ["--quantization", VLLM_QUANTIZATION[fmt]]
    if fmt in ("gptq", "awq"):
        notes.append(f"{fmt}: serve the checkpoint directory; vLLM reads the format from its config.json")
    if fmt in ("int8", "gguf"):
        notes.append(f"{result.format}: vLLM's kernels for this format differ from qeval's (bitsandbytes "
                     "LLM.int8 / llama.cpp); evaluate the configuration you serve")
    kv = VLLM_KV.get(result.kv_dtype)
    if kv is None:
        notes.append(f"KV cache {result.kv_dtype}: vLLM has no such cache dtype; it takes auto or fp8")
    elif kv != "auto":
        argv += ["--kv-cache-dtype", kv]
    argv += ["--no-enable-log-requests", "--disable-log-stats", "--disable-uvicorn-access-log"]
    engine = [f"tensor_parallel_size={result.tensor_parallel}",
              f"gpu_memory_utilization={result.gpu_memory_utilization:.2f}", f"max_model_len={result.context}"]
    if kv and kv != "auto":
        engine.append(f"kv_cache_dtype={kv}")
    served = (*VLLM_DTYPE, "fp8", "gptq", "awq")  # the formats qeval's vllm variants take
    variant = ",".join([f"vllm:{fmt}", *engine]) if fmt in served else None
    return VllmServe(argv=tuple(argv), variant=variant, notes=tuple(notes))
