"""One factory for every real engine: a variant's `backend` field picks transformers or llama.cpp
(a lookup by name, so a new engine is one entry, not another branch in the pipeline)."""

from __future__ import annotations

import functools
from pathlib import Path

from ..calibration import CalibrationSet, Overlap, check_contamination, load_calibration
from ..errors import QevalInputError
from ..models import ResolvedModel, fingerprint_dir
from ..types import Artefact, Method, Task, VariantSpec
from .hf import HFFactory

CALIBRATED = (Method.gptq, Method.awq)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per (path, size, mtime) in a process: several GB take seconds."""
    from ..gguf_export import sha256_file

    return sha256_file(Path(path))


def _weights_on_disk(checkpoint: Path) -> int:
    """Bytes of a checkpoint directory's weight files (safetensors or PyTorch), or of a file."""
    if checkpoint.is_file():
        return checkpoint.stat().st_size
    files = [f for f in checkpoint.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".gguf")]
    return sum(f.stat().st_size for f in files)


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
        from ..calibrated import settings

        spec = str(settings(variant)["calib"])
        if spec not in self._calibration:
            if self.calibration_root is None:
                raise QevalInputError(f"variant {variant.name!r}: no calibration directory configured")
            self._calibration[spec] = load_calibration(spec, self.calibration_root)
        return self._calibration[spec]

    def preflight(self, variants, tasks: list[Task], *, allow_contamination: bool = False
                  ) -> dict[str, list[Overlap]]:
        """Before any model time: GPTQ/AWQ settings fit this model, brought checkpoints are what
        they claim, and no calibration set overlaps the evaluated tasks."""
        from ..calibrated import check_variant, checkpoint_format, read_config, require_gptqmodel

        config = read_config(self.model.path)
        overlaps = {}
        for v in variants:
            if v.method not in CALIBRATED:
                continue
            require_gptqmodel(v)
            if "path" in v.params:
                checkpoint_format(Path(str(v.params["path"])).expanduser(), v)
                continue
            check_variant(v, config)
            overlaps[v.name] = check_contamination(self.calibration(v), tasks, allow=allow_contamination)
        return overlaps

    def checkpoint(self, variant: VariantSpec) -> tuple[Path, tuple[str, ...]]:
        from ..calibrated import ensure_artefact

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
            from .llamacpp import llamacpp_versions

            ident = {"device": "cpu" if not variant.params.get("gpu_layers") else "cuda",
                     "versions": llamacpp_versions()}
            if "file" in variant.params:
                # A file the user brings is known by its content, not its path.
                path = Path(str(variant.params["file"])).expanduser().resolve()
                st = path.stat()
                ident["versions"] = {**ident["versions"],
                                     "gguf_sha256": _digest(str(path), st.st_size, st.st_mtime_ns)}
            return ident
        ident = self.hf.identity(variant)
        if variant.method in CALIBRATED:
            from ..calibrated import artefact_key, library_versions, scoring_kernel

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
                from ..gguf_export import gguf_artefact

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
            from .llamacpp import LlamaCppBackend

            return LlamaCppBackend(self.model, variant, cache=self.cache, progress=self.progress)
        if variant.method in CALIBRATED:
            from ..calibrated import loading_config

            path, notes = self.checkpoint(variant)
            return self.hf.open(variant, baseline_compute, checkpoint=path, notes=notes,
                                loading_config=loading_config(variant, path, self.hf.device))
        return self.hf.open(variant, baseline_compute)
