"""gguf: a GGUF file on llama.cpp's own kernels, exported from the baseline and quantized by
llama.cpp (`gguf:q4_k_m`), calibrated with an importance matrix computed on a calibration set
(`gguf:q4_k_m,imatrix=clinical[,samples=64,seqlen=256,seed=0]`: qeval/quantize/imatrix.py), or a
file the user brings (`gguf=path/to/model.gguf`)."""

from __future__ import annotations

from pathlib import Path

from qeval.errors import QevalInputError
from qeval.types import Artefact, VariantSpec
from qeval.variants.base import QuantMethod

ENGINE_PARAMS = ("threads", "n_ctx", "gpu_layers")  # how llama.cpp runs it, not what it is
IMATRIX_PARAMS = ("samples", "seqlen", "seed")  # how the importance matrix's windows are drawn


def imatrix_settings(variant: VariantSpec) -> dict:
    from qeval.quantize.imatrix import DEFAULTS

    return {**DEFAULTS, **{k: variant.params[k] for k in IMATRIX_PARAMS if k in variant.params}}


# flash_attn=true|false: llama.cpp's flash attention (default: on for a quantized V cache, which
# needs it; else off, llama-cpp-python's default). It changes numbers, so it is in the key.
SWITCHES = ("flash_attn",)


class GGUF(QuantMethod):
    name = "gguf"
    engine = "llamacpp"
    params = frozenset({"type", "file", "imatrix", *IMATRIX_PARAMS, *ENGINE_PARAMS, *SWITCHES})
    positional = "type"
    brought = "file"
    # llama.cpp's --cache-type-k/-v (both set); f16 is its default cache.
    kv_cache_dtypes = ("f16", "q8_0", "q4_0")

    def check(self, variant: VariantSpec) -> VariantSpec:
        """Catch a wrong GGUF type, parameter or file before any model is loaded."""
        from qeval.quantize.gguf import QUANT_TYPES

        p = variant.params
        unknown = sorted(set(p) - self.params)
        if unknown:
            raise QevalInputError(f"variant {variant.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                                  f"gguf takes {', '.join(sorted(self.params))}")
        if "file" in p:
            path = Path(str(p["file"])).expanduser()
            if path.is_dir():
                from qeval.model_source import gguf_files_inside

                raise QevalInputError(f"variant {variant.name!r}: {path} is a directory, not a GGUF "
                                      f"file{gguf_files_inside(path)}; give the path of the .gguf file itself")
            if not path.is_file():
                raise QevalInputError(f"variant {variant.name!r}: GGUF file {path} does not exist; "
                                      "give the path of a .gguf file")
        elif str(p.get("type", "")).lower() not in QUANT_TYPES:
            raise QevalInputError(f"variant {variant.name!r}: unknown GGUF type {p.get('type')!r}; "
                                  f"choose from {', '.join(QUANT_TYPES)}")
        for key in (*ENGINE_PARAMS, *IMATRIX_PARAMS):
            if key in p and (not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 0):
                raise QevalInputError(f"variant {variant.name!r}: {key} must be a non-negative integer")
        drawn = [k for k in IMATRIX_PARAMS if k in p]
        if drawn and "imatrix" not in p:
            raise QevalInputError(f"variant {variant.name!r}: {', '.join(drawn)} set how the importance "
                                  "matrix is computed; add imatrix=<calibration set>, e.g. imatrix=clinical")
        if "imatrix" in p:
            where = ("a GGUF file you bring is quantized already" if "file" in p else
                     f"GGUF {p.get('type')} is not quantized" if str(p.get("type")) in ("f32", "f16") else None)
            if where:
                raise QevalInputError(f"variant {variant.name!r}: imatrix= calibrates llama.cpp's quantizer, "
                                      f"but {where}; drop imatrix= or choose a quantized type such as q4_k_m")
            if not str(p["imatrix"]).strip() or isinstance(p["imatrix"], bool):
                raise QevalInputError(f"variant {variant.name!r}: imatrix= needs a calibration set: a built-in "
                                      "name (generic, clinical) or a .jsonl/.txt file")
            s = imatrix_settings(variant)
            if s["samples"] < 1 or s["seqlen"] < 16:
                raise QevalInputError(f"variant {variant.name!r}: samples must be >= 1 and seqlen >= 16")
        for key in SWITCHES:
            if key in p and not isinstance(p[key], bool):
                raise QevalInputError(f"variant {variant.name!r}: {key} must be true or false")
        if p.get("flash_attn") is False and variant.kv_cache not in (None, "f16"):
            raise QevalInputError(f"variant {variant.name!r}: llama.cpp needs flash attention for a quantized "
                                  "V cache; drop flash_attn=false or use +kv=f16")
        return variant

    def preflight(self, ctx, variant: VariantSpec, tasks, allow_contamination: bool):
        from qeval.engines.llamacpp import check_gpu_layers, read_gguf_vocabulary, require_llama_cpp

        require_llama_cpp()
        check_gpu_layers(variant)
        if "file" not in variant.params:
            # Made here from the baseline's own checkpoint by llama.cpp's converter: it must be
            # installed and know the architecture, or the run would stop at export time.
            from qeval.quantize.converter import check_exportable

            check_exportable(ctx.model.path, variant.name)
            if "imatrix" in variant.params:
                from qeval.quantize.calibration_sets import check_contamination

                check_context(variant, ctx.context_needs(tasks))
                # The calibration text must not be the exam (the GPTQ/AWQ guard).
                return check_contamination(ctx.calibration(variant, str(variant.params["imatrix"])), tasks,
                                           allow=allow_contamination)
        else:
            path = Path(str(variant.params["file"])).expanduser()
            tokens, types = read_gguf_vocabulary(path, variant.name)
            # Control, user-defined and unused entries (special tokens, padding) may be named
            # differently by a converter; normal and byte tokens must be the baseline's.
            skip = frozenset(i for i, t in enumerate(types) if t in (3, 4, 5))
            ctx.same_vocabulary(variant, f"the GGUF {path}", len(tokens), tokens, skip)
        check_context(variant, ctx.context_needs(tasks))
        return None

    def identity(self, ctx, variant: VariantSpec) -> dict:
        ident = ctx.engine_for(variant).identity(variant)
        if "file" in variant.params:
            from qeval.util.digest import file_sha256

            # A file the user brings is known by its content, not its path.
            ident["versions"] = {**ident["versions"], "gguf_sha256": file_sha256(Path(str(variant.params["file"])))}
        if "imatrix" in variant.params:
            from qeval.quantize.imatrix import LIBRARIES, imatrix_key
            from qeval.util.versions import installed_versions

            # What makes the importance matrix (weights, calibration texts, windows, versions);
            # its file's sha256 joins the record once it is made (open).
            calib = ctx.calibration(variant, str(variant.params["imatrix"]))
            ident["versions"] = {**ident["versions"], **installed_versions(LIBRARIES),
                                 "imatrix_calib_sha256": calib.sha256,
                                 "imatrix_key": imatrix_key(ctx.model.fingerprint, calib, imatrix_settings(variant))}
        return ident

    def made_artefact(self, ctx, variant: VariantSpec) -> dict | None:
        from qeval.quantize.imatrix import cached_imatrix_manifest

        if "imatrix" not in variant.params:
            return None
        calib = ctx.calibration(variant, str(variant.params["imatrix"]))
        made = cached_imatrix_manifest(ctx.model.fingerprint, calib, imatrix_settings(variant), ctx.cache)
        return None if made is None else _imatrix_summary(str(variant.params.get("type", "q4_k_m")).lower(), made)

    def calibrated(self, ctx, variant: VariantSpec) -> tuple[Path, tuple[str, ...], dict[str, str]]:
        """The imatrix-calibrated GGUF (made once: F32 export, importance matrix, quantization),
        with the note and versions its record carries."""
        from qeval.quantize.gguf import gguf_artefact
        from qeval.quantize.imatrix import imatrix_artefact

        qtype = str(variant.params.get("type", "q4_k_m")).lower()
        calib = ctx.calibration(variant, str(variant.params["imatrix"]))
        s = imatrix_settings(variant)
        f32 = gguf_artefact(ctx.model.path, ctx.model.fingerprint, "f32", ctx.cache, ctx.progress)
        ipath, made = imatrix_artefact(ctx.model.path, ctx.model.fingerprint, f32, calib, s, ctx.cache, ctx.progress)
        path = gguf_artefact(ctx.model.path, ctx.model.fingerprint, qtype, ctx.cache, ctx.progress,
                             imatrix=(ipath, made["sha256"]))
        ctx.artefacts[variant.name] = _imatrix_summary(qtype, made)
        note = (f"{qtype} quantized by llama.cpp with an importance matrix computed by qeval in transformers "
                f"(float32 on {made.get('device', 'cpu')}) from calibration set {calib.name} (sha256 {calib.sha256[:12]}, {s['samples']} x "
                f"{s['seqlen']} tokens, seed {s['seed']}; {made['tensors']} tensors; imatrix sha256 "
                f"{made['sha256'][:12]}, llama.cpp imatrix GGUF {ipath.name} in the qeval cache)")
        return path, (note,), {"imatrix_sha256": made["sha256"], "imatrix_calib": calib.name}

    def open(self, ctx, variant: VariantSpec, baseline_compute: str | None):
        engine = ctx.engine_for(variant)
        if "imatrix" not in variant.params:
            return engine.open(variant, baseline_compute)
        path, notes, versions = self.calibrated(ctx, variant)
        return engine.open(variant, baseline_compute, gguf=path, notes=notes, versions=versions)

    def prepare(self, ctx, variant: VariantSpec) -> Artefact:
        if "file" in variant.params:
            path = Path(str(variant.params["file"])).expanduser()
            what = "GGUF file (brought)"
        elif "imatrix" in variant.params:
            path, _, _ = self.calibrated(ctx, variant)
            what = f"GGUF {str(variant.params.get('type', 'q4_k_m')).lower()} file (imatrix {variant.params['imatrix']})"
        else:
            from qeval.quantize.gguf import gguf_artefact

            qtype = str(variant.params.get("type", "q4_k_m")).lower()
            path = gguf_artefact(ctx.model.path, ctx.model.fingerprint, qtype, ctx.cache, ctx.progress)
            what = f"GGUF {qtype} file"
        return Artefact(bytes=path.stat().st_size, description=what)

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        if "file" in variant.params:
            return None
        return f"gguf:{str(variant.params.get('type', 'q4_k_m')).lower()}"

    def fit_context(self, variant: VariantSpec, longest: int) -> VariantSpec:
        """llama.cpp allocates its KV cache for n_ctx positions when the model loads: without an
        n_ctx= of the user's, a run whose tasks need more than the default 2048 gets n_ctx of the
        longest sequence rounded up to 256 (a long-context task: its window), which the record
        then shows. An n_ctx= given stays, and check_context refuses it when too small."""
        from qeval.engines.llamacpp import DEFAULT_N_CTX

        if "n_ctx" in variant.params or longest <= DEFAULT_N_CTX:
            return variant
        n_ctx = -(-longest // 256) * 256
        return variant.model_copy(update={"params": {**variant.params, "n_ctx": n_ctx}})

    def floor_variant(self, variant: VariantSpec) -> str | None:
        """The unquantized (F32) GGUF of the baseline, with this candidate's engine settings."""
        return "gguf:f32" + "".join(f",{k}={str(variant.params[k]).lower()}" for k in (*ENGINE_PARAMS, *SWITCHES)
                                    if k in variant.params)


METHOD = GGUF()


def check_context(variant: VariantSpec, needs) -> None:
    """A llama.cpp variant's n_ctx holds one sequence of every task: `needs` are (task id,
    tokens, what) from the composition root, which asks each task's kind."""
    from qeval.engines.llamacpp import DEFAULT_N_CTX

    n_ctx = int(variant.params.get("n_ctx", DEFAULT_N_CTX))
    for task_id, need, what in needs:
        if need > n_ctx:
            raise QevalInputError(f"variant {variant.name!r}: n_ctx={n_ctx} cannot hold task {task_id}'s "
                                  f"{what}; pass n_ctx={need} or more, or leave the task out")


def _imatrix_summary(qtype: str, made: dict) -> dict:
    """results.json's `artefacts` entry of an imatrix-calibrated GGUF."""
    return {"method": "gguf", "type": qtype, "imatrix": made, "quantize_seconds": made.get("seconds", 0.0)}
