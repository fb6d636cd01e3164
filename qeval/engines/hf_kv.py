"""`+kv=int8|int4` on the transformers engine: transformers' own quantized KV cache
(`QuantizedCache`, KIVI-style) with the HQQ backend, and how the engine scores through it.

Why HQQ: transformers' other group-wise backend, optimum-quanto, takes 2 and 4 bits only; HQQ
takes 8 and 4 (and is maintained; `hqq` is the `kv` extra). Settings, all in the record:

- groups of `group` consecutive values of one token's K (or V) head vector (`axis=1`; 64, or the
  head size when it is not a multiple of 64), each with its own scale and zero point in the
  compute dtype, by min-max rounding (HQQ's optimiser off: see _MinMax).
- each chunk of new positions is quantized once, when it is written, and appended (an append-only
  layer on HQQ's: see _AppendOnly): transformers' own layer instead re-quantizes the whole cache,
  earlier positions' dequantized values included, at every flush of its full-precision residual
  (`residual_length`, 128 by default, which would leave every short prompt unquantized) — with
  per-token groups that second rounding only adds float noise and costs time quadratic in the
  document's length. No earlier position is ever kept in full precision.
- scoring feeds tokens in chunks of CHUNK: a chunk's tokens attend to each other in full
  precision (they are the pass's own K/V) and to every earlier chunk through the quantized cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from qeval.errors import QevalInputError

BACKEND = "hqq"  # transformers' QuantizedCache backend (`pip install hqq`, the `kv` extra)
NBITS = {"int8": 8, "int4": 4}  # `+kv=` → HQQ's bits
DTYPES = tuple(NBITS)
AXIS = 1  # HQQ groups consecutive values: one token's head vector (axis 0 would stride across tokens)
MAX_GROUP = 64  # transformers' default q_group_size
CHUNK = 64  # tokens per forward pass through the cache (prefill chunks, reference-text chunks)
MEASURE_TOKENS = 256  # the known-length prefill whose cache bytes are measured at load
CONTEXT = 2048  # positions kv_cache_bytes is stated for (llama.cpp's default n_ctx), or the model's limit


def check_ready(variant) -> None:
    """The backend package is installed: checked before any model loads."""
    import importlib.util

    if variant.kv_cache is not None and importlib.util.find_spec(BACKEND) is None:
        raise QevalInputError(
            f"variant {variant.name!r}: +kv={variant.kv_cache} needs hqq (the backend of transformers' "
            "quantized KV cache), which is not installed; pip install -e '.[kv]' or leave this candidate out")


def text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def head_dim(config) -> int:
    c = text_config(config)
    return int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


def group_size(config, dtype: str) -> int:
    """64, or the head size when it is not a multiple of 64; for int4 halved until a token's
    K (or V) of one layer holds an even number of groups: HQQ packs two 4-bit rows into one byte
    row and cannot pack an odd count (SmolLM2's 3 KV heads × 64 at an odd length)."""
    d = head_dim(config)
    group = MAX_GROUP if d % MAX_GROUP == 0 else d
    c = text_config(config)
    kv_heads = int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    while NBITS[dtype] == 4 and (kv_heads * d // group) % 2 and group % 2 == 0:
        group //= 2
    return group


class _MinMax:
    """HQQ's Quantizer with its optimiser off: plain asymmetric min-max rounding per group (as
    KIVI and quanto do). transformers calls HQQ's `quantize` with the optimiser on, which costs
    3.5 s per layer and pass on a CPU at 512 cached tokens (10 ms off) and would make the scores
    depend on the device's optimiser arithmetic."""

    @staticmethod
    def quantize(tensor, **kwargs):
        from hqq.core.quantize import Quantizer

        return Quantizer.quantize(tensor, optimize=False, **kwargs)

    @staticmethod
    def cuda(*args, **kwargs):
        from hqq.core.quantize import Quantizer

        return Quantizer.cuda(*args, **kwargs)

    @staticmethod
    def dequantize(*args, **kwargs):
        from hqq.core.quantize import Quantizer

        return Quantizer.dequantize(*args, **kwargs)


def _append_only_layer():
    from transformers.cache_utils import HQQQuantizedLayer

    class _AppendOnly(HQQQuantizedLayer):
        """One layer's K and V as a list of quantized chunks, each quantized once when written.

        Groups hold one token's values only (axis 1), so quantizing a chunk alone gives the codes
        quantizing the whole sequence would: appending is exact, as for transformers' own FP8
        layer. A pass returns the earlier positions read back from their codes (dequantized once,
        when written, and kept for reading) followed by its own K/V in full precision."""

        def update(self, key_states, value_states, *args, **kwargs):
            import torch

            self.cumulative_length += key_states.shape[-2]
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.chunks, self.read_keys, self.read_values = [], None, None
            earlier_k, earlier_v = self.read_keys, self.read_values
            qk = self._quantize(key_states.contiguous(), axis=self.axis_key)
            qv = self._quantize(value_states.contiguous(), axis=self.axis_value)
            self.chunks.append((qk, qv))
            dk, dv = self._dequantize(qk), self._dequantize(qv)
            self.read_keys = dk if earlier_k is None else torch.cat([earlier_k, dk], dim=-2)
            self.read_values = dv if earlier_v is None else torch.cat([earlier_v, dv], dim=-2)
            if earlier_k is None:
                return key_states, value_states
            return torch.cat([earlier_k, key_states], dim=-2), torch.cat([earlier_v, value_states], dim=-2)

        def stored_bytes(self) -> int:
            """Bytes of its codes (HQQ's packed uint8), scales and zero points."""
            if not self.is_initialized:
                return 0
            return sum(codes.nbytes + meta["scale"].nbytes + meta["zero"].nbytes
                       for pair in self.chunks for codes, meta in pair)

    return _AppendOnly


def new_cache(config, dtype: str):
    """An empty quantized cache for one sequence: transformers' QuantizedCache (which checks that
    the model can hold one) with its HQQ layers made append-only."""
    from transformers import QuantizedCache

    group = group_size(config, dtype)
    cache = QuantizedCache(BACKEND, config, nbits=NBITS[dtype], axis_key=AXIS, axis_value=AXIS,
                           q_group_size=group)
    layer_class = _append_only_layer()
    cache.layers = [layer_class(nbits=NBITS[dtype], axis_key=AXIS, axis_value=AXIS, q_group_size=group)
                    for _ in cache.layers]
    for layer in cache.layers:
        layer.quantizer = _MinMax
    return cache


def check_model(variant, config, source: str) -> None:
    """The model can hold this cache (transformers' QuantizedCache takes models whose layers are
    all full attention: not Gemma-2/3's sliding-window layers): one line, before any scoring."""
    if variant.kv_cache is None:
        return
    check_ready(variant)
    try:
        new_cache(config, variant.kv_cache)
    except ValueError as exc:
        raise QevalInputError(
            f"variant {variant.name!r}: transformers' quantized KV cache cannot hold {source} "
            f"({str(exc).splitlines()[0]}); leave +kv={variant.kv_cache} out for this model, or "
            "score it as a GGUF with +kv=q8_0|q4_0 on llama.cpp") from None


def stored_bytes(cache) -> int:
    """Bytes the cache holds now: every layer's quantized K and V codes (HQQ's packed uint8) with
    their scales and zero points."""
    return sum(layer.stored_bytes() for layer in cache.layers)


@dataclass(frozen=True)
class QuantizedKV:
    """A loaded model's quantized-cache settings and its measured bytes."""

    dtype: str  # int8 | int4
    config: object  # the model's config
    bytes_per_token: int  # measured
    full_bytes_per_token: int  # the same K and V in the compute dtype
    measured_tokens: int
    context: int

    def new_cache(self):
        return new_cache(self.config, self.dtype)

    @property
    def group(self) -> int:
        return group_size(self.config, self.dtype)

    @property
    def kernel(self) -> str:
        return (f"KV cache {self.dtype} (K and V; transformers QuantizedCache, {BACKEND} {NBITS[self.dtype]}-bit "
                f"min-max, group {self.group}, append-only, chunks of {CHUNK})")

    @property
    def cache_bytes(self) -> int:
        return self.bytes_per_token * self.context

    def note(self, compute: str) -> str:
        return (f"KV cache {self.dtype} for K and V: transformers' QuantizedCache with the {BACKEND} backend "
                f"({NBITS[self.dtype]}-bit codes by min-max rounding, HQQ's optimiser off; a scale and zero point "
                f"in {compute} per group of {self.group} "
                f"consecutive values of a token's head vector; each position quantized once, when written, and "
                "never kept in full precision). Scored through the cache in chunks of {CHUNK} tokens: a "
                "chunk attends to itself in full precision and to every earlier position through the "
                "quantized cache; multiple choice prefills the context but its last token, then continues "
                "each choice (that last token first) from a copy of the cache; reference text feeds each "
                f"window (the task's window and stride) in chunks of {CHUNK}, so its first {CHUNK} positions "
                "see no quantized K/V; generation runs one sequence at a time, the prompt in one pass. "
                f"Measured after a {self.measured_tokens}-token prefill: {self.bytes_per_token:,} bytes per "
                f"position ({self.full_bytes_per_token:,} in {compute}); {self.cache_bytes:,} bytes for "
                f"{self.context:,} positions")


def measure(model, dtype: str, compute_element_bytes: int, device: str, forward) -> QuantizedKV:
    """Prefill MEASURE_TOKENS positions (fixed ids, no user text) through the quantized cache in
    chunks and read the bytes its tensors hold."""
    import torch

    config = model.config
    c = text_config(config)
    limit = int(getattr(c, "max_position_embeddings", None) or CONTEXT)
    n = min(MEASURE_TOKENS, limit)
    vocab = int(c.vocab_size)
    cache = new_cache(config, dtype)
    ids = torch.arange(1, n + 1, dtype=torch.long, device=device) % vocab
    with torch.inference_mode():
        for s in range(0, n, CHUNK):
            forward(ids[None, s:s + CHUNK], cache, keep=1)
    total = stored_bytes(cache)
    if total % n:
        raise RuntimeError(f"quantized KV cache holds {total} bytes after {n} positions, not a whole "
                           "number per position")
    layers = sum(1 for layer in cache.layers if layer.stored_bytes())
    kv_heads = int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    full = 2 * layers * kv_heads * head_dim(config) * compute_element_bytes
    return QuantizedKV(dtype, config, total // n, full, n, min(CONTEXT, limit))
