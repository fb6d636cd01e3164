"""vllm: a variant scored by vLLM, the engine that serves it (qeval/engines/vllm/).

`vllm:fp32|fp16|bf16` the baseline's weights (a baseline on vLLM); `vllm:fp8` vLLM's dynamic
FP8 of the baseline's weights (per-channel FP8 on a CPU, where vLLM has
no per-tensor dynamic path; the record says which); `vllm:gptq=DIR`, `vllm:awq=DIR`, `vllm:ct=DIR` a checkpoint
brought (compressed-tensors for ct); `vllm:gptq` / `vllm:awq` the checkpoint qeval's own
gptq / awq method makes (same parameters, same cache key), so a model made by qeval and served
by vLLM is one candidate. Engine settings ride along: tensor_parallel_size,
pipeline_parallel_size, gpu_memory_utilization (0.85), max_model_len, kv_cache_dtype,
enable_prefix_caching (on), enforce_eager, dtype (a quantized format's activations: bf16, the
default, or fp16; vLLM's quantized kernels refuse float32)."""

from __future__ import annotations

from pathlib import Path

from qeval.errors import QevalInputError
from qeval.types import Artefact, VariantSpec
from qeval.variants.base import QuantMethod, weights_on_disk
from qeval.variants.calibrated import brought_identity
from qeval.variants.full_precision import BF16, FP16, FP32

FULL = {m.name: m.dtype for m in (FP32, FP16, BF16)}  # vllm:fp32 → float32, …
BROUGHT = ("gptq", "awq", "ct")  # vllm:<format>=DIR
MADE = ("gptq", "awq")  # vllm:<format> made by qeval's own method of that name
FORMATS = (*FULL, "fp8", *BROUGHT)
ENGINE_PARAMS = {
    "tensor_parallel_size": int, "pipeline_parallel_size": int, "gpu_memory_utilization": float,
    "max_model_len": int, "kv_cache_dtype": str, "enable_prefix_caching": bool, "enforce_eager": bool,
}
GPU_MEMORY_UTILIZATION = 0.85
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16")


def made_method(fmt: str):
    from qeval.methods import method

    return method(fmt)


class VLLM(QuantMethod):
    """Scored by vLLM (own environment): vllm:fp32|bf16|fp16|fp8|gptq|awq, vllm:gptq=DIR, awq=DIR, ct=DIR"""

    name = "vllm"
    engine = "vllm"
    baseline = True  # vllm:fp32|fp16|bf16 (is_baseline refuses the quantized formats)
    positional = "format"
    params = frozenset({"format", "path", "dtype", *ENGINE_PARAMS})
    # `+kv=fp8`: vLLM's kv_cache_dtype (the same as the kv_cache_dtype= parameter, which the
    # engine floor shares; +kv= leaves the floor on the model's own cache dtype).
    kv_cache_dtypes = ("fp8", "fp8_e4m3", "fp8_e5m2")

    # ---- parsing

    def is_baseline(self, variant: VariantSpec) -> bool:
        return variant.params.get("format") in FULL

    def baseline_forms(self) -> tuple[str, ...]:
        return (f"vllm:{'|'.join(FULL)}",)

    def check(self, variant: VariantSpec) -> VariantSpec:
        p = dict(variant.params)
        for fmt in BROUGHT:  # vllm:gptq=DIR → format gptq, path DIR
            if fmt in p:
                if "format" in p or "path" in p:
                    raise QevalInputError(f"variant {variant.name!r}: give one format, e.g. vllm:gptq=DIR")
                p["format"], p["path"] = fmt, str(p.pop(fmt))
        fmt = str(p.get("format", "")).lower()
        if fmt not in FORMATS:
            raise QevalInputError(f"variant {variant.name!r}: unknown vLLM format {p.get('format')!r}; "
                                  f"choose from {', '.join(FORMATS)} (e.g. vllm:fp32, vllm:gptq=DIR)")
        p["format"] = fmt
        calibration = made_method(fmt).params - {"kernel"} if fmt in MADE and "path" not in p else frozenset()
        unknown = sorted(set(p) - self.params - calibration)
        if unknown:
            raise QevalInputError(f"variant {variant.name!r}: unknown parameter(s) {', '.join(unknown)}; vllm:{fmt} "
                                  f"takes {', '.join(sorted((self.params | calibration) - {'format', 'path'}))}")
        if fmt == "ct" and "path" not in p:
            raise QevalInputError(f"variant {variant.name!r}: vllm:ct needs a compressed-tensors checkpoint: vllm:ct=DIR")
        if "path" in p:
            directory = Path(str(p["path"])).expanduser()
            if not (directory / "config.json").is_file():
                raise QevalInputError(f"variant {variant.name!r}: {directory} is not a checkpoint directory "
                                      "(no config.json); give the folder of a quantized HF checkpoint")
        for key, kind in ENGINE_PARAMS.items():
            if key in p and not _valid(kind, p[key]):
                expect = {bool: "true or false", int: "a positive integer", float: "a number in (0, 1]",
                          str: f"one of {', '.join(KV_CACHE_DTYPES)}"}[kind]
                raise QevalInputError(f"variant {variant.name!r}: {key} must be {expect}")
        if "dtype" in p and p["dtype"] not in FULL:
            raise QevalInputError(f"variant {variant.name!r}: dtype must be one of {', '.join(FULL)}")
        if fmt in FULL and "dtype" in p:
            raise QevalInputError(f"variant {variant.name!r}: vllm:{fmt} is its dtype; leave dtype out")
        if variant.kv_cache is not None and "kv_cache_dtype" in p:
            raise QevalInputError(f"variant {variant.name!r}: +kv= and kv_cache_dtype= both set the KV cache; "
                                  "give one")
        return variant.model_copy(update={"params": p})

    # ---- before model time

    def _made(self, variant: VariantSpec) -> VariantSpec | None:
        """The variant of qeval's own gptq/awq method whose checkpoint this one serves."""
        p = variant.params
        if p["format"] not in MADE or "path" in p:
            return None
        calib = {k: v for k, v in p.items() if k in made_method(p["format"]).params}
        return VariantSpec(name=f"{p['format']}" + "".join(f",{k}={v}" for k, v in sorted(calib.items())),
                           method=p["format"], params=calib)

    def preflight(self, ctx, variant: VariantSpec, tasks, allow_contamination: bool):
        engine = ctx.engine_for(variant)
        engine.environment()  # its Python exists and has vLLM (one line, exit 2, otherwise)
        p = variant.params
        if "path" in p:
            directory = Path(str(p["path"])).expanduser()
            if p["format"] in ("gptq", "awq"):
                from qeval.quantize.gptq_awq import checkpoint_format

                checkpoint_format(directory, variant.model_copy(update={"method": p["format"]}))
            ctx.check_brought_checkpoint(variant, directory)
        if "max_model_len" in p:
            for task_id, need, what in ctx.context_needs(tasks):
                if need > int(p["max_model_len"]):
                    raise QevalInputError(f"variant {variant.name!r}: max_model_len={p['max_model_len']} cannot "
                                          f"hold task {task_id}'s {what}; pass max_model_len={need} or more")
        made = self._made(variant)
        if made is not None:
            return made_method(made.method).preflight(ctx, made, tasks, allow_contamination)
        return None

    # ---- the artefact and the engine

    def checkpoint(self, ctx, variant: VariantSpec) -> tuple[Path, tuple[str, ...]]:
        p = variant.params
        if "path" in p:
            return Path(str(p["path"])).expanduser().resolve(), ()
        made = self._made(variant)
        if made is not None:
            return made_method(made.method).checkpoint(ctx, made)
        return Path(ctx.model.path), ()

    def identity(self, ctx, variant: VariantSpec) -> dict:
        ident = ctx.engine_for(variant).identity(variant)
        made = self._made(variant)
        # The artefact as its own method knows it (a made one's key resolved as that method
        # makes it, so it names the checkpoint `checkpoint` below loads).
        extra = made_method(made.method).artefact_identity(ctx, made) if made is not None else brought_identity(variant)
        return {**ident, "versions": {**ident["versions"], **extra}}

    def prepare(self, ctx, variant: VariantSpec) -> Artefact:
        path, _ = self.checkpoint(ctx, variant)
        fmt = variant.params["format"]
        if fmt == "fp8":
            what = "the baseline checkpoint, quantized to FP8 by vLLM while loading"
        elif fmt in BROUGHT:
            kind = "compressed-tensors" if fmt == "ct" else fmt.upper()
            what = f"{kind} checkpoint" + (" (brought)" if "path" in variant.params else "")
        else:
            what = "the baseline checkpoint (weight files)"
        return Artefact(bytes=weights_on_disk(path), description=what)

    def engine_settings(self, variant: VariantSpec, device: str, compute: str) -> dict:
        p = variant.params
        fmt = p["format"]
        s: dict = {k: p[k] for k in ENGINE_PARAMS if k in p}
        s["dtype"] = FULL[fmt] if fmt in FULL else compute
        if variant.kv_cache is not None:
            s["kv_cache_dtype"] = variant.kv_cache
        if fmt == "fp8":
            # vLLM's dynamic FP8 (per-tensor scales) has no CPU path; its per-channel variant has.
            s["quantization"] = "fp8" if device != "cpu" else "fp8_per_channel"
            if device == "cpu":
                s["emulate_fp8_matmul"] = True  # see worker.emulate_scaled_mm
        if device != "cpu":
            s.setdefault("gpu_memory_utilization", GPU_MEMORY_UTILIZATION)
        else:
            # On a CPU, vLLM's torch.compile builds C++ kernels for minutes per engine on a new
            # cache; eager mode runs the same kernels unfused (enforce_eager=false compiles).
            s.setdefault("enforce_eager", True)
        return s

    def open(self, ctx, variant: VariantSpec, baseline_compute: str | None):
        engine = ctx.engine_for(variant)
        device = engine.identity(variant)["device"]
        fmt = variant.params["format"]
        compute = variant.params.get("dtype")
        # vLLM's quantized linear kernels take 16-bit activations (float32 is refused for FP8,
        # GPTQ and AWQ): bfloat16 unless the variant says dtype=fp16.
        compute = FULL[compute] if compute else "bfloat16"
        path, notes = self.checkpoint(ctx, variant)
        settings = self.engine_settings(variant, device, compute)
        if fmt == "fp8" and device == "cpu":
            notes = (*notes, "FP8 on a CPU: vLLM's fp8_per_channel (per-channel weight scales, dynamic "
                             "per-token activations), not the per-tensor dynamic FP8 it runs on a GPU; "
                             "the FP8 matmul emulated (torch._scaled_mm's CPU reference kernel replaced by "
                             "the same product in float32: same FP8 operands, float32 accumulation)")
        return engine.open(variant, baseline_compute, settings=settings, checkpoint=path,
                           requested_dtype=fmt if fmt in FULL else f"{fmt} ({compute} activations)",
                           notes=notes)

    # ---- reporting

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        fmt = variant.params.get("format")
        if fmt in FULL:
            return fmt
        if fmt == "fp8":
            return "fp8"
        made = self._made(variant)
        if made is not None:
            return made_method(made.method).plan_format(made)
        return None

    def gpus(self, variant: VariantSpec) -> int:
        return (int(variant.params.get("tensor_parallel_size", 1))
                * int(variant.params.get("pipeline_parallel_size", 1)))

    def floor_variant(self, variant: VariantSpec) -> str | None:
        """The baseline's weights on vLLM in the dtype this candidate computes in, with its
        engine settings: what vLLM itself changes, apart from the quantization."""
        p = variant.params
        if p.get("format") in FULL:
            return None
        dtype = str(p.get("dtype") or "bf16")  # a quantized format computes in bfloat16 unless told
        return f"vllm:{dtype}" + "".join(f",{k}={str(p[k]).lower() if isinstance(p[k], bool) else p[k]}"
                                         for k in ENGINE_PARAMS if k in p)


def _valid(kind: type, value) -> bool:
    """An engine parameter's value: a bool, a positive int, a fraction in (0, 1], a cache dtype."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return str(value) in KV_CACHE_DTYPES
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        return False
    return 0 < value <= 1 if kind is float else value > 0


METHOD = VLLM()
