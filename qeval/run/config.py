"""Run configuration: configs/*.yaml + flags → a frozen RunConfig stored with every run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qeval import settings
from qeval.errors import QevalInputError
from qeval.model_source import DEFAULT_MODEL
from qeval.types import EfficiencyProbe, VariantSpec
from qeval.variants import spec
from qeval.methods import METHODS, method
from qeval.util.yamlio import read_yaml


TASK_PATH_ENV = "QEVAL_TASK_PATH"


def include_dirs(flags: Sequence[str | Path] = ()) -> tuple[str, ...]:
    """Folders of your own tasks and suites: each `--include DIR`, then each entry of
    $QEVAL_TASK_PATH (separated by os.pathsep). Each holds `tasks/` (task files, laid out as the
    project's tasks/) and/or `suites/` (suite files), as `qeval init` writes them."""
    import os

    env = [p for p in os.environ.get(TASK_PATH_ENV, "").split(os.pathsep) if p]
    out: list[str] = []
    for source, value in [("--include", f) for f in flags] + [(TASK_PATH_ENV, e) for e in env]:
        path = Path(value).expanduser().resolve()
        if not (path / "tasks").is_dir() and not (path / "suites").is_dir():
            raise QevalInputError(f"{source} {value}: {path} holds neither tasks/ nor suites/; give a "
                                  "folder laid out as `qeval init` writes one")
        if str(path) not in out:
            out.append(str(path))
    return tuple(out)


def task_roots(include: Sequence[str] = ()) -> list[Path]:
    """Where task files are searched: the built-in tasks/, then each included folder's tasks/."""
    return [settings.resource_dir("tasks")] + [Path(d) / "tasks" for d in include if (Path(d) / "tasks").is_dir()]


def suite_dirs(include: Sequence[str] = ()) -> list[Path]:
    return [settings.resource_dir("configs") / "suites"] + [Path(d) / "suites" for d in include]


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = DEFAULT_MODEL
    baseline: VariantSpec
    candidates: tuple[VariantSpec, ...]

    @field_validator("baseline", "candidates", mode="before")
    @classmethod
    def _registered(cls, value):
        """Each variant's method and engine are registered ones (qeval.variants.spec.registered)."""
        def one(v):
            data = v.model_dump() if isinstance(v, VariantSpec) else v
            if isinstance(data, dict) and "method" in data:
                data = spec.registered(data)
            return data
        return tuple(one(v) for v in value) if isinstance(value, (list, tuple)) else one(value)
    tasks: tuple[str, ...]
    policy: str = "default"
    device: str = "auto"
    strict_dtype: bool = False
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1)
    reuse_records: bool = True
    log_text: bool = False
    # PHI opt-in: store the baseline's reference-text distributions (top-k token ids) in the
    # cache, so that adding a candidate later does not rerun the baseline.
    keep_distributions: bool = False
    seed: int = 20261122
    n_boot: int = Field(10_000, ge=100)
    # Score the baseline a second time along another numeric path and report/gate on that floor.
    noise_floor: Literal["batch1", "bf16"] | None = None
    # Where benchmark files in their original formats live (tasks/open_medical/README.md).
    data_dir: str | None = None
    # Drop (and report) tasks whose data file is missing instead of stopping.
    skip_missing_data: bool = False
    # Fetch a missing benchmark file from the hub copy its task names (online only; opt-in).
    from_hub: bool = False
    # Directory of extra lm-eval task YAMLs for `lm-eval:<task>` ids (lm-eval's --include_path).
    lm_eval_include: str | None = None
    # Folders of the user's own tasks and suites (--include, $QEVAL_TASK_PATH), resolved.
    include: tuple[str, ...] = ()
    # Measure each variant's load time, peak memory and speed in this run (None: skip; a variant
    # whose records are all reused is then not opened at all).
    efficiency: EfficiencyProbe | None = EfficiencyProbe()


def floor_replica(baseline: VariantSpec, path: str) -> VariantSpec:
    """The baseline recomputed along another numeric path: same weights, same prompts."""
    return baseline.model_copy(update={
        "name": f"{baseline.name}@{path}", "params": {**baseline.params, "numeric_path": path},
        "description": f"noise-floor replica of {baseline.name} ({path})",
    })


def _load_yaml_dir(directory: Path) -> dict[str, tuple[Path, dict]]:
    out: dict[str, tuple[Path, dict]] = {}
    for path in sorted(directory.glob("*.yaml")):
        out[path.stem] = (path, read_yaml(path, empty={}))
    return out


# Variant parsing lives in qeval/variants/spec.py; these thin wrappers supply the project's
# configs/variants/ (and keep `from qeval.run.config import parse_variant` working).


def known_variants() -> dict[str, VariantSpec]:
    files = _load_yaml_dir(settings.resource_dir("configs") / "variants")
    return spec.known_variants((name, path, data) for name, (path, data) in files.items())


def parse_variant(text: str, known: dict[str, VariantSpec] | None = None) -> VariantSpec:
    """`int8`, `nf4:double_quant=true`, `gguf:q4_k_m`, `gptq:bits=4,group=64,calib=clinical`,
    `gguf=path/to/model.gguf`, `gptq=path/to/checkpoint` or a name from configs/variants/*.yaml."""
    return spec.parse_variant(text, known_variants() if known is None else known)


split_variants = spec.split_variants
brought_name = spec.brought_name


def fit_contexts(cfg: RunConfig, tasks) -> RunConfig:
    """The run's variants, each with a context that holds the longest sequence its tasks put
    through an engine at once, where its method sizes one (llama.cpp's n_ctx; QuantMethod.fit_context)."""
    from qeval.kinds import kind_of

    needs = [kind_of(t.spec.kind).context_needed(t.spec) for t in tasks]
    longest = max((n[0] for n in needs if n is not None), default=0)
    fit = lambda v: method(v.method).fit_context(v, longest)  # noqa: E731
    return cfg.model_copy(update={"baseline": fit(cfg.baseline), "candidates": tuple(map(fit, cfg.candidates))})


def suite_tasks(suite: str, include: Sequence[str] = ()) -> tuple[str, ...]:
    suites: dict[str, tuple[Path, dict]] = {}
    for directory in suite_dirs(include):
        for name, found in _load_yaml_dir(directory).items():
            suites.setdefault(name, found)  # the project's own suites first, then included ones
    if suite not in suites:
        raise QevalInputError(f"unknown suite {suite!r}; choose from {', '.join(sorted(suites))}")
    path, data = suites[suite]
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise QevalInputError(f"{path}: a suite needs `tasks:` with a list of task ids")
    return tuple(tasks)


def policy_path(policy: str) -> Path:
    p = Path(policy)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise QevalInputError(f"gate policy file {p} does not exist")
        return p
    p = settings.resource_dir("configs") / "gates" / f"{policy}.yaml"
    if not p.is_file():
        raise QevalInputError(f"unknown gate policy {policy!r}; pass a YAML path or a name in configs/gates/")
    return p


def check_roles(cfg: RunConfig) -> None:
    if cfg.baseline.kv_cache is not None:
        raise QevalInputError(f"--base {cfg.baseline.name!r}: the baseline keeps its engine's full-precision "
                              "KV cache; put +kv= on a candidate instead")
    if not method(cfg.baseline.method).is_baseline(cfg.baseline):
        baselines = sorted(form for name in METHODS for form in method(name).baseline_forms())
        raise QevalInputError(
            f"--base {cfg.baseline.name!r} is a quantized variant; the baseline must be one of "
            f"{', '.join(baselines)}"
        )
    if not cfg.candidates:
        raise QevalInputError("no candidates; pass --candidates int8,nf4 (see `qeval variants`)")
    names = [c.name for c in cfg.candidates]
    if len(set(names)) != len(names) or cfg.baseline.name in names:
        twice = next((n for n in names if names.count(n) > 1 or n == cfg.baseline.name), "")
        hint = (f" (two files brought with the same name: tell them apart with ,name=..., e.g. "
                f"{twice.split('=', 1)[0]}=path,name=mine)" if "=" in twice else "")
        raise QevalInputError(f"variant {twice!r} appears twice{hint}; each variant may appear "
                              "once, and the baseline cannot also be a candidate")
