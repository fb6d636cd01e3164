"""gguf: a GGUF file on llama.cpp's own kernels, exported from the baseline and quantized by
llama.cpp (`gguf:q4_k_m`), or a file the user brings (`gguf=path/to/model.gguf`)."""

from __future__ import annotations

from pathlib import Path

from qeval.errors import QevalInputError
from qeval.types import Artefact, VariantSpec
from qeval.variants.base import QuantMethod

ENGINE_PARAMS = ("threads", "n_ctx", "gpu_layers")  # how llama.cpp runs it, not what it is


class GGUF(QuantMethod):
    name = "gguf"
    engine = "llamacpp"
    params = frozenset({"type", "file", *ENGINE_PARAMS})
    positional = "type"
    brought = "file"

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
        for key in ENGINE_PARAMS:
            if key in p and (not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 0):
                raise QevalInputError(f"variant {variant.name!r}: {key} must be a non-negative integer")
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
        return ident

    def prepare(self, ctx, variant: VariantSpec) -> Artefact:
        if "file" in variant.params:
            path = Path(str(variant.params["file"])).expanduser()
            what = "GGUF file (brought)"
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

    def floor_variant(self, variant: VariantSpec) -> str | None:
        """The unquantized (F32) GGUF of the baseline, with this candidate's engine settings."""
        return "gguf:f32" + "".join(f",{k}={variant.params[k]}" for k in ENGINE_PARAMS if k in variant.params)


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
