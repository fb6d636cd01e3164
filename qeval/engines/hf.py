"""Transformers backend: fp32/fp16/bf16 baselines and bitsandbytes / torchao INT8 and NF4 candidates.

Records what actually ran: the compute dtype, the device and the linear-layer kernels found in the
loaded model (not the ones requested), so a record can never claim a quantization that did not
happen.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qeval.errors import QevalInputError
from qeval.model_source import ResolvedModel
from qeval.types import BackendInfo, VariantSpec
from qeval.util.versions import installed_versions
from qeval.methods import method as method_of
from qeval.engines.base import (
    ForwardTiming, GenerationRequest, GenerationResult, GreedyOutput, LoglikelihoodRequest, NonFiniteScores, Progress,
    SharedPrefixJob, shared_prefix_jobs,
)

ENGINE = "hf"  # its name in qeval/engines/registry.py
TORCH_ALLOCATOR = True  # torch's CUDA allocator sees all its memory (efficiency.meter_for)
# Ways to recompute the baseline along another numeric path, for the noise floor: batch1 scores
# every sequence alone (no padding, other matmul shapes); bf16 recomputes in bfloat16.
NUMERIC_PATHS = ("batch1", "bf16")
HEAD_SLICE = 128  # scored positions projected onto the vocabulary at a time (≈ 25 MB of logits)
TEXT_SLICE_BYTES = 256 << 20  # reference text: logits reduced per slice (see text_slice_rows)
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
CAPPABLE_HEAD_MODELS = frozenset({"gemma", "gemma2", "gemma3_text"})  # plain unless soft-capped
LIBRARIES = ("torch", "transformers", "bitsandbytes", "torchao", "accelerate")
BROKEN = ("the model or its quantization is numerically broken (weights that overflow in this "
          "dtype, or a bad quantization); check the checkpoint's weights, or try another variant "
          "or dtype")


def plain_head(config) -> bool:
    """Whether the logits are exactly lm_head(final hidden state): Llama-like heads, and Gemma's
    when it does not soft-cap them (Gemma-3 does not; Gemma-2 does)."""
    kind = getattr(config, "model_type", "")
    return kind in PLAIN_HEAD_MODELS or (
        kind in CAPPABLE_HEAD_MODELS and getattr(config, "final_logit_softcapping", None) is None)


def text_slice_rows(config) -> int:
    """Positions projected onto the vocabulary at a time for reference text: about 256 MB of
    float32 logits (256 rows at Gemma-3's 262k tokens; at most 1024, a whole default window).
    Fewer rows would stream the head's weights (671 MB in float32 at 262k × 640) from memory
    once per few positions."""
    vocab = int(getattr(config, "vocab_size", 0) or getattr(getattr(config, "text_config", None), "vocab_size", 0) or 50_000)
    return max(16, min(1024, TEXT_SLICE_BYTES // (4 * vocab)))


def library_versions(variant: VariantSpec | None = None) -> dict[str, str]:
    """Versions that change a variant's numbers: hqq too for a `+kv=` variant (its cache's
    backend; other variants' versions, and so their records and keys, stay as they were)."""
    kv = variant is not None and variant.kv_cache is not None
    return installed_versions(LIBRARIES + (("hqq",) if kv else ()))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QevalInputError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise QevalInputError(f"--device {device!r}: use auto, cpu or cuda[:N]")
    return device


@dataclass(frozen=True)
class DtypeChoice:
    requested: str
    compute: str
    notes: tuple[str, ...]


def choose_dtype(method: str, device: str, strict: bool, baseline_compute: str | None,
                 numeric_path: str | None = None) -> DtypeChoice:
    """The dtype a variant computes in. Quantized candidates use the baseline's, to isolate
    quantization; a dtype candidate (bf16 against an fp32 baseline) is the thing under test, so it
    always computes in its own dtype, as does a baseline replica on the bf16 numeric path."""
    if numeric_path == "bf16":
        return DtypeChoice("bfloat16", "bfloat16", (
            "noise-floor replica: the baseline recomputed in bfloat16",))
    requested = method_of(method).dtype
    if requested is not None:
        if baseline_compute is not None and numeric_path is None:
            strict = True  # a dtype candidate must compute in its dtype or it tests nothing
        if device == "cpu" and requested != "float32" and not strict:
            return DtypeChoice(requested, "float32", (
                f"{requested} was requested but this is a CPU, where {requested} matmuls are "
                "emulated and several times slower; computed in float32 instead (a superset of "
                f"{requested}'s precision). Pass --strict-dtype to compute in {requested}.",
            ))
        return DtypeChoice(requested, requested, ())
    compute = baseline_compute or ("float16" if device.startswith("cuda") else "float32")
    return DtypeChoice(compute, compute, ())


def _quantization_config(variant: VariantSpec, compute_dtype):
    """The method's own check (its parameters, its package), then its loading config."""
    m = method_of(variant.method)
    m.check_ready(variant)
    return m.loading_config(variant, compute_dtype)


def _kernel_summary(model) -> str:
    counts: Counter[str] = Counter()
    for _, mod in model.named_modules():
        cls = type(mod).__name__
        if "Linear" not in cls:
            continue
        weight = getattr(mod, "weight", None)
        wcls = type(weight).__name__ if weight is not None else "none"
        # torchao keeps nn.Linear and swaps the weight for a quantized tensor subclass
        label = f"{type(mod).__module__.split('.')[0]}.{cls}"
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is not None and getattr(scheme, "weights", None) is not None:
            # compressed-tensors keeps nn.Linear and swaps in packed weights plus its forward
            label = f"compressed_tensors.{cls}[w{scheme.weights.num_bits}, group {scheme.weights.group_size}]"
        elif wcls not in ("Parameter", "Tensor", "Int8Params", "Params4bit"):
            label += f"[{wcls}]"
        counts[label] += 1
    return "; ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def _quiet_gptqmodel() -> None:
    """gptqmodel logs a banner and kernel choices at INFO through its own logger (logbar); the
    kernel that ran is in qeval's record, so keep only its warnings."""
    import logging

    try:
        from logbar import LogBar
    except ImportError:
        return
    LogBar.shared().setLevel(logging.WARNING)
    # Its `torch` kernel wraps each layer's dequantization in torch.compile, which recompiles
    # per layer on a CPU (minutes, then dynamo's recompile limit). qeval calls that
    # dequantization once per layer at load (_dequantize_torch_linears), so eager is all it needs;
    # qeval compiles nothing else.
    import torch._dynamo

    torch._dynamo.config.disable = True


def _dequantize_torch_linears(model, dtype) -> int:
    """Swap each gptqmodel TorchLinear for an nn.Linear holding exactly the weights its own
    `dequantize_weight()` produces (its forward is `x @ dequantize_weight() + bias`). Eager
    TorchLinear re-dequantizes on every call: 10x slower than the float32 baseline on a CPU."""
    import torch

    count = 0
    for name, mod in list(model.named_modules()):
        if type(mod).__name__ != "TorchLinear" or getattr(mod, "adapter", None):
            continue
        with torch.no_grad():
            # the kernel dequantizes in its scales' dtype, then casts to the activations' dtype
            w = mod.dequantize_weight()[: mod.in_features, : mod.out_features].T.to(dtype).contiguous()
            lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                  device=w.device, dtype=w.dtype)
            lin.weight.copy_(w)
            if mod.bias is not None:
                lin.bias.copy_(mod.bias.to(w.dtype))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, lin)
        count += 1
    return count


# How allocation failures read when they are not torch.OutOfMemoryError: torch's CPU allocator
# ("DefaultCPUAllocator: can't allocate memory"), safetensors' mmap ("Cannot allocate memory (os
# error 12)"), C++ std::bad_alloc, CUDA and Python's own MemoryError.
_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory", "os error 12",
                "std::bad_alloc", "memoryerror")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    seen = 0
    while exc is not None and seen < 8:  # also when a loader re-raised it as another type
        if isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _non_finite_weights(model) -> list[str]:
    """Names of the model's plain floating-point parameters that hold NaN or inf (a broken
    export): found at load, before any scoring. Quantized parameter types are not inspected."""
    import torch

    bad = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = p.data
            if type(t) is not torch.Tensor or not t.is_floating_point() or t.device.type == "meta":
                continue
            if not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def _eos_union(*sources) -> frozenset[int]:
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
    return frozenset(int(i) for i in ids)


def checkpoint_eos_ids(path) -> frozenset[int]:
    """The end-of-sequence ids a transformers baseline of this checkpoint stops generating at:
    its generation config's (else its model config's) and its tokenizer's. Other engines use the
    same set, so a comparison's stopping rule never depends on the engine."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: transformers derives one from the model config
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
    return _eos_union(generation, AutoTokenizer.from_pretrained(path))


def _weight_bytes(model) -> int:
    total = 0
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        inner = [getattr(t, a) for a in ("qdata", "scale", "zero_point") if hasattr(t, a)]
        inner = [x for x in inner if hasattr(x, "nbytes")]
        total += sum(x.nbytes for x in inner) if inner else t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)  # bitsandbytes 4-bit absmax and friends
        if qs is not None and getattr(qs, "absmax", None) is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
    return total


def _packed_batch(batch: Sequence[SharedPrefixJob], pad_id: int):
    """Input ids, position ids and the 4-D boolean attention mask (True where a query may attend)
    of right-padded shared-prefix jobs. The context is causal; each branch sees the context and
    its own earlier tokens; a padding position sees only itself, so its row stays finite and
    cannot leak NaN into real rows."""
    import torch

    width = max(len(job) for job in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    allowed = torch.zeros((len(batch), 1, width, width), dtype=torch.bool)
    for row, job in enumerate(batch):
        n, c = len(job), len(job.context)
        ids[row, :n] = torch.tensor(job.tokens)
        positions[row, :n] = torch.tensor(job.positions())
        allowed[row, 0, :c, :c] = torch.ones((c, c), dtype=torch.bool).tril()
        for at, branch in zip(job.branch_starts(), job.branches):
            b = len(branch)
            allowed[row, 0, at:at + b, :c] = True
            allowed[row, 0, at:at + b, at:at + b] = torch.ones((b, b), dtype=torch.bool).tril()
        pad = torch.arange(n, width)
        allowed[row, 0, pad, pad] = True
    return ids, positions, allowed


class HFBackend:
    def __init__(self, model: ResolvedModel, variant: VariantSpec, *, device: str = "auto",
                 strict_dtype: bool = False, baseline_compute: str | None = None,
                 batch_size: int = 16, checkpoint=None, notes: tuple[str, ...] = (),
                 loading_config=None):
        """`checkpoint`: a quantized checkpoint directory (GPTQ/AWQ) to load instead of the
        baseline's weights; the tokenizer is always the baseline's."""
        # torchao logs optional CUDA kernels it cannot load on a CPU machine, and torch a
        # deprecation per Enum it registers: neither is the user's problem.
        import logging

        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # qeval's own bars show progress; one bar per step
        method = method_of(variant.method)
        if checkpoint is not None:  # a GPTQ/AWQ checkpoint: gptqmodel loads it
            _quiet_gptqmodel()
        self.device = resolve_device(device)
        numeric_path = variant.params.get("numeric_path")
        choice = choose_dtype(variant.method, self.device, strict_dtype, baseline_compute,
                              numeric_path if isinstance(numeric_path, str) else None)
        dtype = getattr(torch, choice.compute)
        qconfig = loading_config or _quantization_config(variant, dtype)
        self.batch_size = 1 if numeric_path == "batch1" else batch_size
        # An item's several prompts (rotated options) in one pass, their common beginning once;
        # False: one pass per prompt (benchmarks/rotation_cost.py measures both).
        self.across_prompts = True
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model.path)
            # A quantized checkpoint carries its own quantization_config; passing None would
            # override it and load the packed weights as missing plain ones.
            extra = {"quantization_config": qconfig} if qconfig is not None else {}
            self.model = AutoModelForCausalLM.from_pretrained(
                checkpoint or model.path, dtype=dtype, device_map={"": self.device}, **extra)
        except Exception as exc:  # MemoryError is an Exception too
            if not is_out_of_memory(exc):
                raise
            del exc  # its traceback holds the half-loaded model
            gc.collect()
            raise QevalInputError(
                f"out of memory while loading {model.spec} as {variant.name} on {self.device}; "
                "use a smaller variant, another device or free memory"
            ) from None
        self.model.eval()
        self._mask_dtype = dtype  # hidden states' dtype: the additive attention mask must match
        # SDPA takes a boolean mask (a little faster here than the additive one eager needs).
        self._bool_mask = getattr(self.model.config, "_attn_implementation", "") == "sdpa"
        # Architectures whose logits are exactly lm_head(final hidden state): no scaling or capping.
        # Quantized checkpoints (compressed-tensors, GPTQ/AWQ) run through the whole model, on
        # every scoring path: their packages hook its forward (compressed-tensors onloads the
        # weights there), which the decoder-then-head shortcut would bypass.
        self._plain_head = (plain_head(self.model.config)
                            and getattr(self.model.config, "quantization_config", None) is None)
        bad = _non_finite_weights(self.model)
        if bad:
            source = checkpoint or model.path
            raise QevalInputError(
                f"{variant.name}: the weights loaded from {source} hold NaN or inf ({bad[0]}"
                + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")
                + "); the checkpoint is broken: export or download it again")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        notes = (*notes, *method.after_load(self.model, self.device))  # fp8: quantized after loading
        kernel = _kernel_summary(self.model)
        weight_bytes = _weight_bytes(self.model)
        notes = list(choice.notes) + list(notes)
        if "gptqmodel.TorchLinear" in kernel:
            n = _dequantize_torch_linears(self.model, dtype)
            notes.append(f"gptqmodel's `torch` kernel dequantizes each layer to {choice.compute} and "
                         f"multiplies in {choice.compute}; qeval does that dequantization once at load "
                         f"({n} layers), the same numbers without re-dequantizing at every forward pass")
        compute = choice.compute
        if "TorchAten" in kernel or "TorchFused" in kernel:
            # gptqmodel's fast CPU kernels cast activations to bfloat16 for aten's int4 matmul
            compute = f"{choice.compute}, bfloat16 activations in the int4 matmuls"
            notes.append("gptqmodel's CPU kernel rounds activations to bfloat16 inside each int4 "
                         "matmul, so this candidate's degradation includes that rounding (a `bf16` "
                         "candidate measures it alone)")
        kernel, more = method.loaded(kernel, self.device)
        notes.extend(more)
        # `+kv=int8|int4`: scoring runs through transformers' quantized KV cache (hf_kv.py);
        # without it the paths below are the default ones, untouched.
        self.kv = None
        if variant.kv_cache is not None:
            from qeval.engines import hf_kv

            hf_kv.check_model(variant, self.model.config, str(model.path))
            self.kv = hf_kv.measure(self.model, variant.kv_cache, dtype.itemsize, self.device, self._kv_forward)
            kernel += f"; {self.kv.kernel}"
            notes.append(self.kv.note(compute))
        self.info = BackendInfo(
            variant=variant.name, backend=ENGINE, device=self.device,
            requested_dtype=choice.requested, compute_dtype=compute, kernel=kernel,
            weight_bytes=weight_bytes, versions=library_versions(variant), notes=tuple(notes),
            # Quantized tensors are packed (several weights per element): only a full-precision
            # variant's tensors count the model's weights.
            params=(sum(p.numel() for p in self.model.parameters())
                    if method.dtype is not None and checkpoint is None else None),
            kv_cache_bytes=None if self.kv is None else self.kv.cache_bytes,
        )
        self._check_quantized(variant, kernel)

    def _check_quantized(self, variant: VariantSpec, kernel: str) -> None:
        markers = method_of(variant.method).kernels
        if markers and not any(m in kernel for m in markers):
            raise RuntimeError(
                f"variant {variant.name}: asked for {variant.method} but the loaded model has "
                f"no {' or '.join(m.rstrip('.') for m in markers)} layers ({kernel}); refusing to "
                "report it as quantized"
            )

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @contextlib.contextmanager
    def _memory(self, what: str):
        """An allocation failure while scoring is one clear error (exit 2), not a traceback."""
        try:
            yield
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            del exc
            gc.collect()
            raise QevalInputError(
                f"{self.info.variant}: out of memory while {what} on {self.device} (batches of "
                f"{self.batch_size} sequences); lower --batch-size, or use a smaller variant, "
                "another device or free memory") from None

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      advance: Progress | None = None) -> list[float]:
        import torch

        if self.kv is not None:
            return self._kv_loglikelihood(requests, advance)
        jobs = shared_prefix_jobs(requests, across_prompts=self.across_prompts)
        out = [0.0] * len(requests)
        with self._memory("scoring"), torch.inference_mode():
            # Longest first, so a batch's neighbours pad little (a token budget that packs more
            # short rows per pass measured no faster here: wider length spread, more padding).
            for start in range(0, len(jobs), self.batch_size):
                batch = jobs[start:start + self.batch_size]
                # Every (row, position) whose next-token distribution scores a continuation token,
                # the token it must give, and the request it counts for.
                rows, cols, targets, owners = [], [], [], []
                for row, job in enumerate(batch):
                    for m, i in enumerate(job.members):
                        cont = requests[i].continuation
                        reads = job.reads(m, len(cont))
                        rows += [row] * len(reads)
                        cols += reads
                        targets += cont
                        owners += [i] * len(reads)
                token_lp = self._scored_logprobs(batch, rows, cols, targets)
                sums: dict[int, float] = {}
                for i, lp in zip(owners, token_lp.double().tolist()):
                    sums[i] = sums.get(i, 0.0) + lp
                for i, lp in sums.items():
                    if not math.isfinite(lp):
                        r = requests[i]
                        raise NonFiniteScores(
                            f"{self.info.variant}: non-finite log-prob for item {r.sample_id} "
                            f"choice {r.choice}; {BROKEN}"
                        )
                    out[i] = lp
                if advance:
                    advance(sum(len(job.members) for job in batch))
        return out

    def _scored_logprobs(self, batch: Sequence[SharedPrefixJob], rows: list[int], cols: list[int],
                         targets: list[int]):
        """log p(target) at the given (row, position) pairs of one packed batch, float32. The
        vocabulary projection (a fifth of this model's compute per position) runs only on those
        pairs, in slices that stay in cache: `logits_to_keep` would project each kept position
        in every row of the batch, 8× the work for cloze answers whose positions differ from row
        to row."""
        import torch

        ids, positions, allowed = _packed_batch(batch, self.pad_id)
        if not self._bool_mask:  # additive: 0 where allowed, the dtype's minimum elsewhere
            mask = torch.zeros(allowed.shape, dtype=self._mask_dtype)
            allowed = mask.masked_fill_(~allowed, torch.finfo(self._mask_dtype).min)
        inputs = dict(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                      attention_mask=allowed.to(self.device))
        where_rows = torch.tensor(rows, device=self.device)
        target = torch.tensor(targets, device=self.device)[:, None]
        if self._plain_head:
            hidden = self.model.base_model(**inputs).last_hidden_state[where_rows, torch.tensor(cols, device=self.device)]
            head = self.model.get_output_embeddings()
            # In float32 whatever the compute dtype (fused upcast: faster than .float() first).
            return torch.cat([torch.log_softmax(head(hidden[k:k + HEAD_SLICE]), dim=-1, dtype=torch.float32)
                              .gather(1, target[k:k + HEAD_SLICE])[:, 0]
                              for k in range(0, len(rows), HEAD_SLICE)])
        needed = sorted(set(cols))  # other heads scale or cap logits: let the model apply them
        column = {p: j for j, p in enumerate(needed)}
        logits = self.model(**inputs, logits_to_keep=torch.tensor(needed, device=self.device)).logits
        picked = logits[where_rows, torch.tensor([column[c] for c in cols], device=self.device)]
        return torch.log_softmax(picked, dim=-1, dtype=torch.float32).gather(1, target)[:, 0]

    # ---- `+kv=`: scoring through the quantized KV cache (qeval/engines/hf_kv.py)

    def _kv_forward(self, ids, cache, keep=None):
        """One forward pass of a (1, n) chunk through `cache`; its logits (the last `keep` only)."""
        extra = {} if keep is None else {"logits_to_keep": keep}
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True, **extra).logits[0]

    def _kv_chunks(self, tokens: Sequence[int], cache, keep_logits: bool = True):
        """Feed `tokens` through `cache` in chunks of hf_kv.CHUNK; (start, float32 logits) per chunk."""
        import torch

        from qeval.engines.hf_kv import CHUNK

        for s in range(0, len(tokens), CHUNK):
            ids = torch.tensor([list(tokens[s:s + CHUNK])], dtype=torch.long, device=self.device)
            logits = self._kv_forward(ids, cache, None if keep_logits else 1)
            if keep_logits:
                yield s, logits.float()

    def _kv_loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                          advance: Progress | None) -> list[float]:
        """Each distinct context but its last token is prefilled through a fresh quantized cache;
        each of its requests then continues from a copy of that cache with the context's last
        token and its continuation but the last, so every scored log-prob reads the whole
        context's keys and values back from the quantized cache."""
        import copy

        import torch

        jobs = shared_prefix_jobs(requests)  # one per distinct context
        out = [0.0] * len(requests)
        with self._memory("scoring through the quantized KV cache"), torch.inference_mode():
            for job in jobs:
                cache = self.kv.new_cache()
                for _ in self._kv_chunks(job.context[:-1], cache, keep_logits=False):
                    pass
                for m, i in enumerate(job.members):
                    r = requests[i]
                    branch = cache if m == len(job.members) - 1 else copy.deepcopy(cache)
                    fed = (job.context[-1], *r.continuation[:-1])
                    logits = torch.cat([x for _, x in self._kv_chunks(fed, branch)])
                    target = torch.tensor(r.continuation, device=logits.device)[:, None]
                    lp = float(torch.log_softmax(logits, dim=-1).gather(1, target).double().sum())
                    if not math.isfinite(lp):
                        raise NonFiniteScores(
                            f"{self.info.variant}: non-finite log-prob for item {r.sample_id} "
                            f"choice {r.choice}; {BROKEN}")
                    out[i] = lp
                if advance:
                    advance(len(job.members))
        return out

    def eos_ids(self) -> frozenset[int]:
        """End-of-sequence ids: the generation config's (what `generate` stops at) and the
        tokenizer's."""
        return _eos_union(getattr(self.model, "generation_config", None), self.tokenizer)

    def decode(self, ids: list[int]) -> str:
        # No clean-up of spaces: the text is exactly the tokens' bytes, as llama.cpp renders them.
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _check_fits(self, request: GenerationRequest) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        need = len(request.prompt) + request.max_tokens
        if limit is not None and need > limit:
            raise QevalInputError(
                f"{self.info.variant}: item {request.sample_id} needs {need} positions (prompt "
                f"{len(request.prompt)} + max_tokens {request.max_tokens}) but the model has "
                f"{limit}; lower the task's generation.max_tokens or shorten its prompt")

    def generate(self, requests: Sequence[GenerationRequest], advance: Progress | None = None
                 ) -> list[GenerationResult]:
        """Greedy decoding in batches of similar prompt length, left-padded, with the KV cache;
        finished sequences leave the batch (their cache rows are dropped)."""
        for r in requests:
            if not r.prompt:
                raise ValueError(f"item {r.sample_id}: empty prompt")
            self._check_fits(r)
        order = sorted(range(len(requests)), key=lambda i: (-len(requests[i].prompt), i))
        out: list[GenerationResult | None] = [None] * len(requests)
        eos = self.eos_ids()
        # A quantized cache cannot drop a finished row's states: one sequence at a time.
        per_batch = 1 if self.kv is not None else self.batch_size
        for start in range(0, len(order), per_batch):
            chunk = order[start:start + per_batch]
            states = [GreedyOutput(requests[i], self.decode, eos) for i in chunk]
            with self._memory("generating"):
                self._decode_batch(states, advance)
            for i, state in zip(chunk, states):
                out[i] = state.result
        return out  # type: ignore[return-value]

    def _decode_batch(self, states: list[GreedyOutput], advance: Progress | None) -> None:
        import torch
        from transformers import DynamicCache

        dev = self.device
        width = max(len(s.request.prompt) for s in states)
        ids = torch.full((len(states), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for row, s in enumerate(states):
            n = len(s.request.prompt)
            ids[row, width - n:] = torch.tensor(s.request.prompt)
            mask[row, width - n:] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        # Positions count real tokens only, so a left-padded prompt sits where it would alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config) if self.kv is None else self.kv.new_cache()
        live = list(range(len(states)))  # index into states of each batch row still decoding
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            next_pos = positions[:, -1] + 1
            while True:
                if not torch.isfinite(logits).all():
                    raise NonFiniteScores(f"{self.info.variant}: non-finite logits while generating item "
                                          f"{states[live[0]].request.sample_id}; {BROKEN}")
                # argmax returns the first maximum: ties go to the lowest token id.
                tokens = logits.float().argmax(dim=-1)
                keep = []
                for row, tok in enumerate(tokens.tolist()):
                    if states[live[row]].push(tok):
                        if advance:
                            advance(1)
                    else:
                        keep.append(row)
                if not keep:
                    return
                if len(keep) < len(live):
                    idx = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(idx)
                    mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[idx]
                    live = [live[k] for k in keep]
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
                logits = self.model(input_ids=tokens[:, None], attention_mask=mask,
                                    position_ids=next_pos[:, None], past_key_values=cache,
                                    use_cache=True).logits[:, -1]
                next_pos = next_pos + 1

    def time_forward(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> ForwardTiming:
        import time

        import torch
        from transformers import DynamicCache

        def sync():
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(self.device)

        ids = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.model.config) if self.kv is None else self.kv.new_cache()
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]
            tokens = logits.argmax(dim=-1)
            sync()
            t1 = time.perf_counter()
            for _ in range(new_tokens):
                logits = self.model(input_ids=tokens[:, None], past_key_values=cache,
                                    use_cache=True).logits[:, -1]
                tokens = logits.argmax(dim=-1)
            tokens.tolist()  # waits for the device
            sync()
            t2 = time.perf_counter()
        return ForwardTiming(t1 - t0, t2 - t1)

    def logit_slices(self, tokens: Sequence[int]):
        """(first position, float32 logits) for the positions that predict tokens[1:], a slice
        of rows at a time: the decoder runs once over the window, the vocabulary projection
        slice by slice, so the (positions × vocabulary) table never exists at once (1 GB for a
        1024-token window at Gemma-3's 262k vocabulary). A slice is on the CPU and valid until
        the next one is asked for."""
        import torch

        n = len(tokens) - 1
        rows = text_slice_rows(self.model.config)
        if self.kv is not None:  # the window in chunks through a fresh quantized cache
            with self._memory("scoring reference text through the quantized KV cache"), torch.inference_mode():
                for s, logits in self._kv_chunks(tokens[:n], self.kv.new_cache()):
                    for k in range(0, len(logits), rows):
                        yield s + k, logits[k:k + rows].cpu()
            return
        with self._memory("scoring reference text"), torch.inference_mode():
            ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
            if self._plain_head:
                hidden = self.model.base_model(input_ids=ids).last_hidden_state[0, :n]
                head = self.model.get_output_embeddings()
                for s in range(0, n, rows):
                    yield s, head(hidden[s:s + rows]).float().cpu()
                return
            logits = self.model(input_ids=ids).logits[0, :n]  # a head that scales or caps
            for s in range(0, n, rows):
                yield s, logits[s:s + rows].float().cpu()

    def token_logprobs(self, tokens: Sequence[int]):
        import torch

        out = torch.cat([torch.log_softmax(x, dim=-1) for _, x in self.logit_slices(tokens)]).numpy()
        if not np.isfinite(out).all():
            raise NonFiniteScores(f"{self.info.variant}: non-finite log-probs on reference text; {BROKEN}")
        return out

    def close(self) -> None:
        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class HFFactory:
    """Opens HF backends for one model; its identity goes into every record-store key."""

    def __init__(self, model: ResolvedModel, *, device: str = "auto", strict_dtype: bool = False,
                 batch_size: int = 16):
        self.model = model
        self.device = resolve_device(device)
        self.strict_dtype = strict_dtype
        self.batch_size = batch_size

    def identity(self, variant: VariantSpec | None = None) -> dict:
        return {"device": self.device, "versions": library_versions(variant)}

    def open(self, variant: VariantSpec, baseline_compute: str | None, checkpoint=None,
             notes: tuple[str, ...] = (), loading_config=None) -> HFBackend:
        return HFBackend(self.model, variant, device=self.device, strict_dtype=self.strict_dtype,
                         baseline_compute=baseline_compute, batch_size=self.batch_size,
                         checkpoint=checkpoint, notes=notes, loading_config=loading_config)


def make_factory(settings) -> HFFactory:
    return HFFactory(settings.model, device=settings.device, strict_dtype=settings.strict_dtype,
                     batch_size=settings.batch_size)
