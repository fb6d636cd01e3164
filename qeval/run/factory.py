"""The composition root: one factory for every variant. A variant's method (qeval/variants/)
says how its artefact is made and opened; its `backend` names the engine that scores it
(qeval/engines/registry.py). Both are lookups by name, so a new engine or method is one module
and one registry line, not another branch here or in the pipeline."""

from __future__ import annotations

import functools
from pathlib import Path

from qeval.engines.registry import EngineSettings, engine
from qeval.errors import QevalInputError
from qeval.model_source import ResolvedModel
from qeval.quantize.calibration_sets import CalibrationSet, Overlap, load_calibration
from qeval.types import Artefact, Task, VariantSpec
from qeval.util.digest import file_sha256  # noqa: F401  (kept importable from here)
from qeval.methods import method


class EngineFactory:
    def __init__(self, model: ResolvedModel, *, device: str = "auto", strict_dtype: bool = False,
                 batch_size: int = 16, cache: Path, progress=None, calibration_root: Path | None = None,
                 bar=None, tasks=()):
        self.model = model
        self.bar = bar
        self.cache = cache
        self.progress = progress
        self.calibration_root = calibration_root
        self.settings = EngineSettings(model=model, device=device, strict_dtype=strict_dtype,
                                       batch_size=batch_size, cache=cache, progress=progress,
                                       tasks=tuple(tasks))
        self._engines: dict[str, object] = {}
        self._calibration: dict[str, CalibrationSet] = {}
        self.artefacts: dict[str, dict] = {}  # variant name → how its artefact was made

    def detached(self) -> EngineFactory:
        """The same factory without this process's terminal (progress callbacks) or opened
        engines: what a Ray worker rebuilds and opens variants with."""
        return EngineFactory(self.model, device=self.settings.device, strict_dtype=self.settings.strict_dtype,
                             batch_size=self.settings.batch_size, cache=self.cache,
                             calibration_root=self.calibration_root, tasks=self.settings.tasks)

    def engine_for(self, variant: VariantSpec):
        """The factory of the engine that scores `variant`, made on first use."""
        name = variant.backend
        if name not in self._engines:
            self._engines[name] = engine(name).make_factory(self.settings)
        return self._engines[name]

    def calibration(self, variant: VariantSpec, spec: str | None = None) -> CalibrationSet:
        """The calibration set `spec` names (default: GPTQ/AWQ's `calib=`), loaded once."""
        from qeval.quantize.gptq_awq import settings

        spec = str(settings(variant)["calib"]) if spec is None else spec
        if spec not in self._calibration:
            if self.calibration_root is None:
                raise QevalInputError(f"variant {variant.name!r}: no calibration directory configured")
            self._calibration[spec] = load_calibration(spec, self.calibration_root)
        return self._calibration[spec]

    def preflight(self, variants, tasks: list[Task], *, allow_contamination: bool = False
                  ) -> dict[str, list[Overlap]]:
        """Before any model time: each variant's method checks its settings against this model
        (GPTQ/AWQ group sizes, brought checkpoints and GGUF files readable and of the baseline's
        vocabulary and tokenizer, GPU-only options on a GPU, packages installed), and no
        calibration set overlaps the evaluated tasks."""
        overlaps = {}
        for v in variants:
            self.engine_for(v)  # an engine's own settings (a --device without a GPU) fail here
        for v in variants:
            found = method(v.method).preflight(self, v, tasks, allow_contamination)
            if found is not None:
                overlaps[v.name] = found
        return overlaps

    @staticmethod
    def context_needs(tasks) -> list[tuple[str, int, str]]:
        """(task id, tokens, what) of the longest sequence each task puts through an engine at
        once (a reference-text window; a prompt and its generation), as its kind says."""
        from qeval.kinds import kind_of

        needs = []
        for t in tasks:
            needed = kind_of(t.spec.kind).context_needed(t.spec)
            if needed is not None:
                needs.append((t.spec.id, *needed))
        return needs

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

    def same_vocabulary(self, variant: VariantSpec, what: str, size: int,
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

    def check_brought_checkpoint(self, variant: VariantSpec, directory: Path) -> None:
        """A checkpoint brought (GPTQ/AWQ) is scored with the baseline's tokenizer: its vocabulary
        must be the baseline's, and so must its own tokenizer when it ships one."""
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
        self.same_vocabulary(variant, f"the checkpoint {directory}", int(text["vocab_size"]), tokens)

    def checkpoint(self, variant: VariantSpec) -> tuple[Path, tuple[str, ...]]:
        """A calibrated variant's checkpoint directory (made once, or brought) and its notes."""
        return method(variant.method).checkpoint(self, variant)

    def identity(self, variant: VariantSpec) -> dict:
        return method(variant.method).identity(self, variant)

    def made_artefact(self, variant: VariantSpec) -> dict | None:
        """How the variant's artefact was made: as made or opened in this run, else read from the
        cache (every record reused, nothing opened); None where it makes none."""
        return self.artefacts.get(variant.name) or method(variant.method).made_artefact(self, variant)

    def prepare(self, variant: VariantSpec) -> Artefact:
        """Make the variant's artefact if it is not cached yet (a GGUF file, a GPTQ/AWQ checkpoint),
        so that opening it afterwards times loading alone; say what is on disk."""
        return method(variant.method).prepare(self, variant)

    def open(self, variant: VariantSpec, baseline_compute: str | None):
        return method(variant.method).open(self, variant, baseline_compute)
