"""What a quantization method is: the QuantMethod every module in qeval/variants/ defines.

A method knows its parameters and their checks, the engine that scores it, how its artefact is
made and opened, the layers a loaded model must show, and its planner format. The composition
root (qeval/run/factory.py) calls these hooks with itself as `ctx` (the model, the cache,
the engines, the calibration sets); it never branches on a method's or an engine's name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qeval.errors import QevalInputError
from qeval.types import Artefact, VariantSpec

if TYPE_CHECKING:
    from qeval.types import Task


def weights_on_disk(checkpoint: Path) -> int:
    """Bytes of a checkpoint directory's weight files (safetensors or PyTorch), or of a file."""
    if checkpoint.is_file():
        return checkpoint.stat().st_size
    files = [f for f in checkpoint.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".gguf")]
    return sum(f.stat().st_size for f in files)


class QuantMethod:
    """Defaults: the baseline's weights, quantized (or not) by the engine while loading."""

    name: str = ""
    engine: str = "hf"  # the engine that scores it, unless the variant names another
    baseline: bool = False  # may be the baseline (a full-precision method)
    listed: bool = True  # offered as a variant of its own name when configs/variants has none
    dtype: str | None = None  # full precision: the torch dtype it holds and computes in
    params: frozenset[str] = frozenset()  # parameters it takes
    positional: str | None = None  # `name:value` sets this parameter (gguf:q4_k_m → type)
    brought: str | None = None  # `name=PATH` brings an artefact: the parameter that holds PATH
    package: str | None = None  # the package that quantizes it while loading
    kernels: tuple[str, ...] = ()  # layer names one of which a loaded model must show
    # KV-cache dtypes its engine can hold (`+kv=DTYPE`, qeval/variants/spec.py); () takes none.
    kv_cache_dtypes: tuple[str, ...] = ()

    # ---- before any model: parsing (no model known yet) and preflight (the model known)

    def is_baseline(self, variant: VariantSpec) -> bool:
        """Whether this variant may be the baseline (a full-precision one)."""
        return self.baseline

    def baseline_forms(self) -> tuple[str, ...]:
        """How its baselines are written, for the message that lists them."""
        return (self.name,) if self.baseline else ()

    def check(self, variant: VariantSpec) -> VariantSpec:
        """Checks `parse_variant` runs on a variant of this method; returns it (maybe normalised)."""
        return variant

    def fit_context(self, variant: VariantSpec, longest: int) -> VariantSpec:
        """The variant with a context that holds `longest` tokens (the longest sequence the run's
        tasks put through an engine at once), for engines whose context is fixed when they load
        and that the variant leaves unset; others unchanged."""
        return variant

    def check_ready(self, variant: VariantSpec) -> None:
        """Parameters the engine takes and the package it needs, checked before any model loads."""

    def preflight(self, ctx: Any, variant: VariantSpec, tasks: list[Task], allow_contamination: bool) -> Any:
        """Checks that need the baseline model (its config, its vocabulary); returns the
        calibration set's overlaps with the tasks for a calibrated method, else None."""
        self.check_ready(variant)
        return None

    # ---- the artefact and the engine

    def identity(self, ctx: Any, variant: VariantSpec) -> dict:
        """What, besides the variant, changes its numbers (device, versions, artefact)."""
        return ctx.engine_for(variant).identity(variant)

    def made_artefact(self, ctx: Any, variant: VariantSpec) -> dict | None:
        """How its cached artefact was made (results.json's `artefacts`), read from the cache
        without building or opening anything: a rerun whose records are all cached reports what a
        first run does. None for methods that make no artefact, or when it is not made yet."""
        return None

    def prepare(self, ctx: Any, variant: VariantSpec) -> Artefact:
        """Make the artefact if it is not cached yet; say what is on disk."""
        engine = ctx.engine_for(variant)
        if hasattr(engine, "prepare"):
            return engine.prepare(variant)
        return Artefact(bytes=weights_on_disk(Path(ctx.model.path)), description=(
            "the baseline checkpoint (weight files)" if self.baseline
            else f"the baseline checkpoint, quantized to {self.name} while loading"))

    def open(self, ctx: Any, variant: VariantSpec, baseline_compute: str | None):
        return ctx.engine_for(variant).open(variant, baseline_compute)

    def loading_config(self, variant: VariantSpec, compute_dtype: Any) -> Any:
        """transformers' `quantization_config` for quantizing while loading (None: none)."""
        return None

    def after_load(self, model: Any, device: str) -> tuple[str, ...]:
        """Quantize the loaded transformers model in place (a method that quantizes after
        loading instead of through `loading_config`, e.g. fp8); returns notes for the record."""
        return ()

    def loaded(self, kernel: str, device: str) -> tuple[str, tuple[str, ...]]:
        """The kernel summary and notes, completed once the model is loaded."""
        return kernel, ()

    # ---- reporting

    def plan_format(self, variant: VariantSpec, compute_dtype: str = "") -> str | None:
        """The planner's (qeval/vram.py) weight format for the variant as it was held, or None
        when it cannot know (a brought file, the fake engine)."""
        return None

    def floor_variant(self, variant: VariantSpec) -> str | None:
        """The variant text of this candidate's engine floor (the unquantized model on the same
        engine, scored on reference text), or None when its engine needs none."""
        return None

    def gpus(self, variant: VariantSpec) -> int:
        """GPUs one copy of the variant holds when it runs on GPUs (what a Ray job asks for)."""
        return 1


def hf_kv_preflight(ctx: Any, variant: VariantSpec) -> None:
    """A transformers variant's `+kv=int8|int4`: the model can hold transformers' quantized cache
    (qeval/engines/hf_kv.py), checked on its config before any model loads."""
    if variant.kv_cache is None:
        return
    from transformers import AutoConfig

    from qeval.engines import hf_kv

    hf_kv.check_model(variant, AutoConfig.from_pretrained(ctx.model.path), str(ctx.model.spec))


class OnLoad(QuantMethod):
    """Quantized (or cast) by transformers while the baseline's weights load."""

    # transformers' quantized KV cache (QuantizedCache, HQQ backend: qeval/engines/hf_kv.py)
    kv_cache_dtypes = ("int8", "int4")

    def preflight(self, ctx: Any, variant: VariantSpec, tasks: list[Task], allow_contamination: bool) -> Any:
        self.check_ready(variant)
        hf_kv_preflight(ctx, variant)
        return None

    def check_ready(self, variant: VariantSpec) -> None:
        """A transformers variant's parameters are ones it takes, and the package that quantizes
        it is installed: checked before any model loads (not when this variant's turn comes,
        after the baseline and earlier candidates have been scored)."""
        import importlib.util

        from qeval.engines.hf import NUMERIC_PATHS

        p = variant.params
        if p.get("numeric_path") not in (None, *NUMERIC_PATHS):
            raise QevalInputError(
                f"variant {variant.name!r}: numeric_path must be one of {', '.join(NUMERIC_PATHS)}")
        unknown = set(p) - self.params
        if unknown:
            raise QevalInputError(
                f"variant {variant.name!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"{self.name} takes {', '.join(sorted(self.params)) or 'none'}")
        self.check_values(variant)
        from qeval.engines.hf_kv import check_ready

        check_ready(variant)  # +kv=: its backend package
        if self.package is not None and importlib.util.find_spec(self.package) is None:
            raise QevalInputError(f"variant {variant.name!r} needs {self.package}, which is not installed; "
                                  "pip install -e '.[int8]' (see README) or leave this candidate out")

    def check_values(self, variant: VariantSpec) -> None:
        """The parameters' values (their names are checked already)."""
