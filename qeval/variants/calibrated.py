"""What GPTQ and AWQ share: quantized by gptqmodel on a calibration set in a child process
(qeval/quantize/gptq_awq.py), cached and fingerprinted, or a checkpoint the user brings
(`gptq=PATH`, `awq=PATH`, compressed-tensors too); scored by transformers with gptqmodel's kernels."""

from __future__ import annotations

from pathlib import Path

from qeval.types import Artefact, VariantSpec
from qeval.variants.base import QuantMethod, hf_kv_preflight, weights_on_disk

COMMON = frozenset({"bits", "group", "sym", "calib", "samples", "seqlen", "seed", "kernel"})


def brought_identity(variant: VariantSpec) -> dict[str, str]:
    """A checkpoint the user brings (`path`), known by its weights' hash; {} for none."""
    if "path" not in variant.params:
        return {}
    from qeval.model_source import fingerprint_dir

    return {"checkpoint": fingerprint_dir(Path(str(variant.params["path"])).expanduser())}


def made_identity(ctx, resolved: VariantSpec) -> dict[str, str]:
    """An artefact qeval makes: its calibration set's hash and its cache key."""
    from qeval.quantize.gptq_awq import artefact_key

    calib = ctx.calibration(resolved)
    return {"calib_sha256": calib.sha256, "artefact": artefact_key(ctx.model.fingerprint, resolved, calib)}


class Calibrated(QuantMethod):
    brought = "path"
    package = "gptqmodel"
    # GPTQ/AWQ load gptqmodel's kernels; an llm-compressor checkpoint loads compressed-tensors'.
    kernels = ("gptqmodel.", "compressed_tensors.")
    bits: tuple[int, ...] = ()
    cpu_kernel: str | None = None  # gptqmodel kernel that scores it on a CPU (None: gptqmodel's choice)
    cpu_quantize_dtype = "float32"  # the dtype the quantizer works in on a CPU
    kv_cache_dtypes = ("int8", "int4")  # scored by transformers: its quantized KV cache (engines/hf_kv.py)

    def check(self, variant: VariantSpec) -> VariantSpec:
        from qeval.quantize.gptq_awq import check_variant

        check_variant(variant, None)  # the group-size fit is checked once the model is known
        return variant

    def preflight(self, ctx, variant: VariantSpec, tasks, allow_contamination: bool):
        from qeval.quantize.calibration_sets import check_contamination
        from qeval.quantize.gptq_awq import check_variant, checkpoint_format, read_config, require_gptqmodel

        require_gptqmodel(variant)
        hf_kv_preflight(ctx, variant)
        if "path" in variant.params:
            directory = Path(str(variant.params["path"])).expanduser()
            checkpoint_format(directory, variant)
            ctx.check_brought_checkpoint(variant, directory)
            return None
        check_variant(variant, read_config(ctx.model.path))
        return check_contamination(ctx.calibration(variant), tasks, allow=allow_contamination)

    def resolved(self, ctx, variant: VariantSpec) -> VariantSpec:
        """The variant with the defaults that depend on where it runs filled in."""
        return variant

    def made_artefact(self, ctx, variant: VariantSpec) -> dict | None:
        from qeval.quantize.gptq_awq import cached_manifest

        if "path" in variant.params:
            return None
        return cached_manifest(ctx.model.fingerprint, self.resolved(ctx, variant), ctx.calibration(variant), ctx.cache)

    def checkpoint(self, ctx, variant: VariantSpec) -> tuple[Path, tuple[str, ...]]:
        from qeval.quantize.gptq_awq import ensure_artefact

        if "path" in variant.params:
            return Path(str(variant.params["path"])).expanduser().resolve(), ()
        calib = ctx.calibration(variant)
        variant = self.resolved(ctx, variant)
        art = ensure_artefact(ctx.model.path, ctx.model.fingerprint, variant, calib, ctx.cache,
                              ctx.progress, ctx.bar)
        ctx.artefacts[variant.name] = art.manifest
        m = art.manifest
        clip = f", clip search {'on' if m['params'].get('clip') else 'off'}" if "clip" in self.params else ""
        return art.path, (f"{m['method']} made by gptqmodel {m['versions'].get('gptqmodel')} on "
                          f"{m['quantize_device']} in {m['quantize_seconds']} s from calibration set "
                          f"{calib.name} (sha256 {calib.sha256[:12]}, {m['params']['samples']} x "
                          f"{m['params']['seqlen']} tokens, seed {m['params']['seed']}{clip})",)

    def artefact_identity(self, ctx, variant: VariantSpec) -> dict[str, str]:
        """The artefact decides the numbers: a brought checkpoint by its weights' hash, a made
        one by its key (weights, parameters as resolved where it runs, calibration texts,
        versions, recipe), so records of an artefact made another way are never reused."""
        return brought_identity(variant) or made_identity(ctx, self.resolved(ctx, variant))

    def identity(self, ctx, variant: VariantSpec) -> dict:
        from qeval.quantize.gptq_awq import library_versions, scoring_kernel

        engine = ctx.engine_for(variant)
        ident = engine.identity(variant)
        extra = self.artefact_identity(ctx, variant)
        extra["kernel"] = scoring_kernel(variant, engine.device) or "auto"
        return {**ident, "versions": {**ident["versions"], **library_versions(), **extra}}

    def prepare(self, ctx, variant: VariantSpec) -> Artefact:
        path, _ = self.checkpoint(ctx, variant)
        return Artefact(bytes=weights_on_disk(path), description=f"{self.name.upper()} checkpoint (weight files)")

    def open(self, ctx, variant: VariantSpec, baseline_compute: str | None):
        from qeval.quantize.gptq_awq import loading_config

        engine = ctx.engine_for(variant)
        path, notes = self.checkpoint(ctx, variant)
        return engine.open(variant, baseline_compute, checkpoint=path, notes=notes,
                           loading_config=loading_config(variant, path, engine.device))

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        if "path" in variant.params:
            return None
        from qeval.quantize.gptq_awq import settings

        s = settings(variant)
        return f"{self.name}:bits={s['bits']},group={s['group']}"
