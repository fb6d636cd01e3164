"""One factory for every real engine: a variant's `backend` field picks transformers or llama.cpp
(a lookup by name, so a new engine is one entry, not another branch in the pipeline)."""

from __future__ import annotations

import functools
from pathlib import Path

from qeval.quantize.calibration_sets import CalibrationSet, Overlap, check_contamination, load_calibration
from qeval.errors import QevalInputError
from qeval.model_source import ResolvedModel, fingerprint_dir
from qeval.types import Artefact, Method, Task, VariantSpec
from qeval.engines.hf import HFFactory

CALIBRATED = (Method.gptq, Method.awq)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per (path, size, mtime) in a process: several GB take seconds."""
    from qeval.quantize.gguf import sha256_file

    return sha256_file(Path(path))


def file_sha256(path: Path) -> str:
    path = path.expanduser().resolve()
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def _weights_on_disk(checkpoint: Path) -> int:
    """Bytes of a checkpoint directory's weight files (safetensors or PyTorch), or of a file."""
    if checkpoint.is_file():
        return checkpoint.stat().st_size
    files = [f for f in checkpoint.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".gguf")]
    return sum(f.stat().st_size for f in files)


def check_context(variant: VariantSpec, tasks: list[Task]) -> None:
    """A llama.cpp variant's n_ctx holds one sequence of every task (a reference-text window, a
    prompt and its generation: what the task's kind says it needs)."""
    from qeval.engines.llamacpp import DEFAULT_N_CTX
    from qeval.kinds import kind_of

    n_ctx = int(variant.params.get("n_ctx", DEFAULT_N_CTX))
    for t in tasks:
        needed = kind_of(t.spec.kind).context_needed(t.spec)
        if needed is None or needed[0] <= n_ctx:
            continue
        need, what = needed
        raise QevalInputError(f"variant {variant.name!r}: n_ctx={n_ctx} cannot hold task {t.spec.id}'s "
                              f"{what}; pass n_ctx={need} or more, or leave the task out")


class EngineFactory:
    def __init__(self, model: ResolvedModel, *, device: str = "auto", strict_dtype: bool = False,
                 batch_size: int = 16, cache: Path, progress=None, calibration_root: Path | None = None,
                 bar=None):
        self.model = model
        self.bar = bar
        self.cache = cache
        self.progress = progress
        self.calibration_root = calibration_root
        self.hf = HFFactory(model, device=device, strict_dtype=strict_dtype, batch_size=batch_size)
        self._calibration: dict[str, CalibrationSet] = {}
        self.artefacts: dict[str, dict] = {}  # variant name → how its artefact was made

    def calibration(self, variant: VariantSpec) -> CalibrationSet:
        from qeval.quantize.gptq_awq import settings

        spec = str(settings(variant)["calib"])
        if spec not in self._calibration:
            if self.calibration_root is None:
                raise QevalInputError(f"variant {variant.name!r}: no calibration directory configured")
            self._calibration[spec] = load_calibration(spec, self.calibration_root)
        return self._calibration[spec]

    def preflight(self, variants, tasks: list[Task], *, allow_contamination: bool = False
                  ) -> dict[str, list[Overlap]]:
        """Before any model time: GPTQ/AWQ settings fit this model, brought checkpoints and GGUF
        files are what they claim (readable, the baseline's vocabulary and tokenizer), GPU-only
        options have a GPU, and no calibration set overlaps the evaluated tasks."""
        from qeval.quantize.gptq_awq import check_variant, checkpoint_format, read_config, require_gptqmodel
        from qeval.engines.hf import check_hf_variant

        config = read_config(self.model.path)
        overlaps = {}
        for v in variants:
            if v.backend == "llamacpp":
                self._check_gguf(v)
                check_context(v, tasks)
                continue
            if v.method not in CALIBRATED:
                if v.backend == "hf":
                    check_hf_variant(v)
                continue
            require_gptqmodel(v)
            if "path" in v.params:
                directory = Path(str(v.params["path"])).expanduser()
                checkpoint_format(directory, v)
                self._check_brought_checkpoint(v, directory)
                continue
            check_variant(v, config)
            overlaps[v.name] = check_contamination(self.calibration(v), tasks, allow=allow_contamination)
        return overlaps

    @functools.cached_property
    def _baseline_vocabulary(self) -> tuple[int, list[str | None], frozenset[int]]:
        """The baseline's embedding rows (config vocab_size), its tokenizer's token per id, and
        the ids of its added and special tokens."""
        from transformers import AutoTokenizer

        from qeval.quantize.gptq_awq import read_config

        config = read_config(self.model.path)
        text = config.get("text_config", config)
        tok = AutoTokenizer.from_pretrained(self.model.path)
        rows = int(text.get("vocab_size") or len(tok))
        special = frozenset(tok.all_special_ids) | frozenset(getattr(tok, "added_tokens_decoder", {}))
        return rows, list(tok.convert_ids_to_tokens(list(range(len(tok))))), special

    def _same_vocabulary(self, variant: VariantSpec, what: str, size: int,
                         tokens: list[str | None] | None, skip: frozenset[int] = frozenset()) -> None:
        """Refuse a candidate whose vocabulary or tokenizer is not the baseline's: its log-probs
        would be over other tokens (a prompt check sees only the ids a prompt happens to use)."""
        rows, base_tokens, special = self._baseline_vocabulary
        same_model = (f"a candidate must be a quantization of the baseline model {self.model.spec}: "
                      "pass the model it was made from as --model, or a candidate made from this one")
        if size != rows:
            raise QevalInputError(f"variant {variant.name!r}: {what} has a vocabulary of {size} tokens, "
                                  f"the baseline {rows}; {same_model}")
        if tokens is None:
            return
        shared = min(len(tokens), len(base_tokens))
        differ = [i for i in range(shared) if i not in skip and i not in special
                  and base_tokens[i] is not None and tokens[i] is not None and tokens[i] != base_tokens[i]]
        if differ:
            raise QevalInputError(
                f"variant {variant.name!r}: the tokenizer of {what} differs from the baseline's "
                f"({len(differ)} of {shared} token ids stand for other tokens, the first id "
                f"{differ[0]}); {same_model}")

    def _check_gguf(self, variant: VariantSpec) -> None:
        from qeval.engines.llamacpp import check_gpu_layers, read_gguf_vocabulary, require_llama_cpp

        require_llama_cpp()
        check_gpu_layers(variant)
        if "file" not in variant.params:
            # Made here from the baseline's own checkpoint by llama.cpp's converter: it must be
            # installed and know the architecture, or the run would stop at export time.
            from qeval.quantize.converter import check_exportable

            check_exportable(self.model.path, variant.name)
            return
        path = Path(str(variant.params["file"])).expanduser()
        tokens, types = read_gguf_vocabulary(path, variant.name)
        # Control, user-defined and unused entries (special tokens, padding) may be named
        # differently by a converter; normal and byte tokens must be the baseline's.
        skip = frozenset(i for i, t in enumerate(types) if t in (3, 4, 5))
        self._same_vocabulary(variant, f"the GGUF {path}", len(tokens), tokens, skip)

    def _check_brought_checkpoint(self, variant: VariantSpec, directory: Path) -> None:
        """A GPTQ/AWQ checkpoint is scored with the baseline's tokenizer: its vocabulary must be
        the baseline's, and so must its own tokenizer when it ships one."""
        from qeval.quantize.gptq_awq import read_config

        config = read_config(directory)
        text = config.get("text_config", config)
        if "vocab_size" not in text:
            return
        tokens = None
        if (directory / "tokenizer.json").is_file() or (directory / "tokenizer.model").is_file():
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(directory)
            except Exception:  # an unreadable tokenizer is not used: the baseline's scores it
                tok = None
            if tok is not None:
                tokens = list(tok.convert_ids_to_tokens(list(range(len(tok)))))
        self._same_vocabulary(variant, f"the checkpoint {directory}", int(text["vocab_size"]), tokens)

    def checkpoint(self, variant: VariantSpec) -> tuple[Path, tuple[str, ...]]:
        from qeval.quantize.gptq_awq import ensure_artefact

        if "path" in variant.params:
            return Path(str(variant.params["path"])).expanduser().resolve(), ()
        calib = self.calibration(variant)
        variant = self._resolved(variant)
        art = ensure_artefact(self.model.path, self.model.fingerprint, variant, calib, self.cache,
                              self.progress, self.bar)
        self.artefacts[variant.name] = art.manifest
        m = art.manifest
        clip = f", clip search {'on' if m['params'].get('clip') else 'off'}" if m["method"] == "awq" else ""
        return art.path, (f"{m['method']} made by gptqmodel {m['versions'].get('gptqmodel')} on "
                          f"{m['quantize_device']} in {m['quantize_seconds']} s from calibration set "
                          f"{calib.name} (sha256 {calib.sha256[:12]}, {m['params']['samples']} x "
                          f"{m['params']['seqlen']} tokens, seed {m['params']['seed']}{clip})",)

    def _resolved(self, variant: VariantSpec) -> VariantSpec:
        if variant.method == Method.awq and "clip" not in variant.params:
            # AWQ's clip search is seconds on a GPU and ~10 minutes on 2 CPU cores: on by default
            # where it is cheap, off elsewhere, and stated in the artefact either way.
            return variant.model_copy(update={"params": {**variant.params,
                                                         "clip": self.hf.device.startswith("cuda")}})
        return variant

    def identity(self, variant: VariantSpec) -> dict:
        if variant.backend == "llamacpp":
            from qeval.engines.llamacpp import llamacpp_versions

            ident = {"device": "cpu" if not variant.params.get("gpu_layers") else "cuda",
                     "versions": llamacpp_versions()}
            if "file" in variant.params:
                # A file the user brings is known by its content, not its path.
                ident["versions"] = {**ident["versions"],
                                     "gguf_sha256": file_sha256(Path(str(variant.params["file"])))}
            return ident
        ident = self.hf.identity(variant)
        if variant.method in CALIBRATED:
            from qeval.quantize.gptq_awq import artefact_key, library_versions, scoring_kernel

            # The artefact decides the numbers: a brought checkpoint by its weights' hash, a made
            # one by its key (weights, parameters, calibration texts, versions, recipe), so
            # records of an artefact made another way are never reused.
            if "path" in variant.params:
                extra = {"checkpoint": fingerprint_dir(Path(str(variant.params["path"])).expanduser())}
            else:
                calib = self.calibration(variant)
                extra = {"calib_sha256": calib.sha256,
                         "artefact": artefact_key(self.model.fingerprint, self._resolved(variant), calib)}
            extra["kernel"] = scoring_kernel(variant, self.hf.device) or "auto"
            ident = {**ident, "versions": {**ident["versions"], **library_versions(), **extra}}
        return ident

    def prepare(self, variant: VariantSpec) -> Artefact:
        """Make the variant's artefact if it is not cached yet (a GGUF file, a GPTQ/AWQ checkpoint),
        so that opening it afterwards times loading alone; say what is on disk."""
        if variant.backend == "llamacpp":
            if "file" in variant.params:
                path = Path(str(variant.params["file"])).expanduser()
                what = "GGUF file (brought)"
            else:
                from qeval.quantize.gguf import gguf_artefact

                qtype = str(variant.params.get("type", "q4_k_m")).lower()
                path = gguf_artefact(self.model.path, self.model.fingerprint, qtype, self.cache, self.progress)
                what = f"GGUF {qtype} file"
            return Artefact(bytes=path.stat().st_size, description=what)
        if variant.method in CALIBRATED:
            path, _ = self.checkpoint(variant)
            return Artefact(bytes=_weights_on_disk(path),
                            description=f"{variant.method.value.upper()} checkpoint (weight files)")
        return Artefact(bytes=_weights_on_disk(Path(self.model.path)), description=(
            "the baseline checkpoint (weight files)" if variant.method.value in ("fp32", "fp16", "bf16")
            else f"the baseline checkpoint, quantized to {variant.method.value} while loading"))

    def open(self, variant: VariantSpec, baseline_compute: str | None):
        if variant.backend == "llamacpp":
            from qeval.engines.llamacpp import LlamaCppBackend

            return LlamaCppBackend(self.model, variant, cache=self.cache, progress=self.progress)
        if variant.method in CALIBRATED:
            from qeval.quantize.gptq_awq import loading_config

            path, notes = self.checkpoint(variant)
            return self.hf.open(variant, baseline_compute, checkpoint=path, notes=notes,
                                loading_config=loading_config(variant, path, self.hf.device))
        return self.hf.open(variant, baseline_compute)
