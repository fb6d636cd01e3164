"""Run configuration: configs/*.yaml + flags → a frozen RunConfig stored with every run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qeval import settings
from qeval.errors import QevalInputError
from qeval.model_source import DEFAULT_MODEL
from qeval.types import BASELINE_METHODS, EfficiencyProbe, Method, VariantSpec
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


def known_variants() -> dict[str, VariantSpec]:
    specs = {}
    for name, (path, data) in _load_yaml_dir(settings.resource_dir("configs") / "variants").items():
        try:
            specs[name] = VariantSpec.model_validate({"name": name, **data})
        except ValidationError as exc:
            e = exc.errors()[0]
            raise QevalInputError(f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    return specs


def _coerce(value: str) -> str | int | float | bool:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def split_variants(text: str) -> list[str]:
    """`--candidates` text → one string per variant. A `key=value` piece with no variant name
    before it continues the previous variant's parameters: `gguf:q4_k_m,threads=8,int8` is two
    variants (`gguf=path`, `gptq=path`, `awq=path` are variants of their own)."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        name = piece.split(":", 1)[0]
        if out and "=" in name and not name.startswith(BROUGHT):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


# Artefacts a user brings instead of having qeval make them: `<method>=<path>`.
BROUGHT = ("gguf=", "gptq=", "awq=")


def brought_name(text: str, method: str, path: str, given: object) -> str:
    """How a brought file is named in tables and records: `name=` when the user gave one, else
    `<method>=<file or folder name>` (the full path stays in the run's config, the file's hash in
    its record)."""
    if given is None:
        return f"{method}={Path(path.rstrip('/')).name or path}"
    name = str(given).strip()
    if not name or any(c in name for c in ",/\\") or name != name.strip():
        raise QevalInputError(f"variant {text!r}: name={given!r} must be a non-empty name without "
                              "commas or slashes, e.g. name=mine-q4")
    return name


def parse_variant(text: str, known: dict[str, VariantSpec] | None = None) -> VariantSpec:
    """`int8`, `nf4:double_quant=true`, `gguf:q4_k_m`, `gptq:bits=4,group=64,calib=clinical`,
    `gguf=path/to/model.gguf`, `gptq=path/to/checkpoint` or a name from configs/variants/*.yaml."""
    known = known_variants() if known is None else known
    text = text.strip()
    method, eq, path = text.partition("=")
    if eq and text.startswith(BROUGHT) and method in known:
        if not path:
            example = "model.gguf" if method == "gguf" else "checkpoint_dir"
            raise QevalInputError(f"{method}= needs a path: {method}=path/to/{example}")
        path, *rest = path.split(",")  # gptq=DIR,kernel=auto · gguf=FILE,threads=8,name=mine
        params: dict = {"file" if method == "gguf" else "path": path}
        for part in rest:
            key, eq2, value = part.partition("=")
            if not eq2:
                raise QevalInputError(f"variant {text!r}: parameter {part!r} must look like key=value")
            params[key.strip()] = _coerce(value.strip())
        name = brought_name(text, method, path, params.pop("name", None))
        variant = known[method].model_copy(update={"name": name, "params": params})
        if method == "gguf":
            return _checked_gguf(variant)
        from qeval.quantize.gptq_awq import check_variant

        check_variant(variant, None)
        return variant
    name, _, params_text = text.partition(":")
    if name not in known:
        raise QevalInputError(
            f"unknown variant {name!r}; choose from {', '.join(sorted(known))} "
            "(or add configs/variants/<name>.yaml)"
        )
    base = known[name]
    params = dict(base.params)
    for n, part in enumerate(filter(None, params_text.split(","))):
        key, eq, value = part.partition("=")
        if not eq and n == 0 and base.method == Method.gguf:
            params["type"] = part.strip().lower()  # gguf:q4_k_m
            continue
        if not eq:
            raise QevalInputError(f"variant {text!r}: parameter {part!r} must look like key=value")
        params[key.strip()] = _coerce(value.strip())
    variant = base.model_copy(update={"name": text.strip(), "params": params})
    if base.method in (Method.gptq, Method.awq):
        from qeval.quantize.gptq_awq import check_variant

        check_variant(variant, None)  # the group-size fit is checked once the model is known
    return _checked_gguf(variant) if base.method == Method.gguf else variant


def _checked_gguf(variant: VariantSpec) -> VariantSpec:
    """Catch a wrong GGUF type, parameter or file before any model is loaded."""
    from qeval.quantize.gguf import QUANT_TYPES
    from qeval.engines.llamacpp import PARAMS

    p = variant.params
    unknown = sorted(set(p) - PARAMS)
    if unknown:
        raise QevalInputError(f"variant {variant.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                              f"gguf takes {', '.join(sorted(PARAMS))}")
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
    for key in ("threads", "n_ctx", "gpu_layers"):
        if key in p and (not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 0):
            raise QevalInputError(f"variant {variant.name!r}: {key} must be a non-negative integer")
    return variant


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
    if cfg.baseline.method not in BASELINE_METHODS and cfg.baseline.backend != "fake":
        raise QevalInputError(
            f"--base {cfg.baseline.name!r} is a quantized variant; the baseline must be one of "
            f"{', '.join(sorted(m.value for m in BASELINE_METHODS))}"
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
