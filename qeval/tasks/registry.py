"""Task registry: every `tasks/**/*.yaml` file defines one task. No model knowledge here.

Files inside a directory named `items/`, `passages/` or `data/`, and files whose name starts with `_`, hold
sample data or notes, not task definitions. The registry is built on demand from directories the
caller names (no global registry filled on import).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qeval.errors import MissingData, QevalInputError
from qeval.kinds import all_kinds, check_spec, kind_of
from qeval.util.yamlio import read_yaml
from qeval.types import BENCHMARK_FORMATS, NumericAnswer, Passage, Risk, Sample, Task, TaskSpec

DATA_DIRS = frozenset({"items", "passages", "data"})
PROVENANCE = ("source", "region", "reviewed")


class _ItemFields(BaseModel):
    """What every item form has (see tasks/clinical_core/items/_SCHEMA.md). `source`, `region`
    and `reviewed` are required when the task sets `require_provenance: true`."""

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    rationale: str
    risk: Risk
    # Items testing one fact in different settings share a cluster name; without one an item is
    # its own cluster (with `cluster_by: cluster`).
    cluster: str | None = Field(None, min_length=1)
    source: str | None = None  # the guideline, label or standard followed, with its year
    region: Literal["intl", "uk", "us", "eu"] | None = None  # where the keyed fact holds
    reviewed: _dt.date | None = None  # ISO date (YYYY-MM-DD) of the last clinical review

    @field_validator("source")
    @classmethod
    def _named(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("is empty; name the guideline, label or standard followed, with its year")
        return v

    @field_validator("reviewed", mode="before")
    @classmethod
    def _iso_date(cls, v: object) -> object:
        if isinstance(v, _dt.date) or v is None:
            return v
        if not isinstance(v, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError("must be an ISO date, e.g. \"2026-12-03\"")
        return v


class ItemFileEntry(_ItemFields):
    """A multiple-choice item."""

    choices: list[str]
    answer: str

    @field_validator("choices")
    @classmethod
    def _four_or_five(cls, v: list[str]) -> list[str]:
        if not 2 <= len(v) <= 10:
            raise ValueError(f"needs 2 to 10 choices, has {len(v)}")
        if len(set(v)) != len(v):
            raise ValueError("two choices have the same text")
        return v


class ItemFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    area: str
    items: list[ItemFileEntry]


class NumericItemEntry(_ItemFields, NumericAnswer):
    """An item whose answer is a number in a unit (tasks with `generation.answer: numeric`; see
    tasks/clinical_dose_calc/README.md): value, unit and exactly one of tolerance_abs and
    tolerance_rel, as NumericAnswer checks them."""


class NumericItemFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    area: str
    items: list[NumericItemEntry]


def _model_at(model: type[BaseModel], loc: Sequence) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` (list indices skipped), or None."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _inner_model(field.annotation)
    return current


def _inner_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):  # list[X], tuple[X, ...], X | None
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _short(err: ValidationError, raw: object = None, model: type[BaseModel] | None = None,
           entries: str | None = None, label: str = "item") -> str:
    """One validation problem in words: which item (by its id, when `entries` names the list of
    items in `raw`), which field, what is wrong; never the value given (it may be item text)."""
    errors = err.errors()
    e = errors[0]
    loc = list(e["loc"])
    who = ""
    if entries and len(loc) >= 2 and loc[0] == entries and isinstance(loc[1], int):
        entry = raw.get(entries)[loc[1]] if isinstance(raw, dict) and isinstance(raw.get(entries), list) else None
        ident = entry.get("id") if isinstance(entry, dict) else None
        known = isinstance(ident, (str, int)) and not isinstance(ident, bool)
        who = f"{label} {ident!r}: " if known else f"{label} #{loc[1] + 1}: "
        loc = loc[2:]
        model = _model_at(model, [entries, 0]) if model is not None else None
    name = ".".join(str(x) for x in loc)
    if e["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1]) if model is not None else None
        allowed = f" (allowed: {', '.join(owner.model_fields)})" if owner is not None else ""
        text = f"unknown field {name!r}{allowed}"
    elif e["type"] == "missing":
        text = f"missing required field {name!r}"
    else:
        msg = str(e["msg"]).removeprefix("Value error, ")
        text = f"{name}: {msg}" if name else msg
    more = f" ({len(errors)} problems in all)" if len(errors) > 1 else ""
    return f"{who}{text}{more}"


def _mapping(path: Path, raw: object, what: str) -> dict:
    if raw is None:
        raise QevalInputError(f"{path}: the file is empty; {what}")
    if not isinstance(raw, dict):
        raise QevalInputError(f"{path}: expected a YAML mapping, found a {type(raw).__name__}; {what}")
    return raw


ITEM_SCHEMA = "tasks/clinical_core/items/_SCHEMA.md"


def _item_line(path: Path, index: int | None) -> str:
    """" line N" where item number `index` of the file's `items:` list starts ("" if unknown)."""
    if index is None:
        return ""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
        node = next(v for k, v in root.value if getattr(k, "value", None) == "items")
        return f" line {node.value[index].start_mark.line + 1}"
    except Exception:  # any shape the validator already named: the line is a courtesy
        return ""


def _error_index(exc: ValidationError) -> int | None:
    loc = exc.errors()[0]["loc"]
    return loc[1] if len(loc) >= 2 and loc[0] == "items" and isinstance(loc[1], int) else None


def load_item_file(path: Path, letters: str, *, numeric: bool = False,
                   provenance: bool = False) -> list[Sample]:
    """`numeric`: items in the numeric-answer form (value, unit, tolerance); `provenance`: every
    item needs source, region and reviewed."""
    raw = _mapping(path, read_yaml(path), f"give `area:` and a list of `items:` (see {ITEM_SCHEMA})")
    model = NumericItemFile if numeric else ItemFile
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        raise QevalInputError(f"{path}{_item_line(path, _error_index(exc))}: "
                              f"{_short(exc, raw, model, 'items')}; see {ITEM_SCHEMA}") from None
    samples = []
    for n, item in enumerate(parsed.items):
        where = f"{path}{_item_line(path, n)}: item {item.id!r}"
        lacking = [f for f in PROVENANCE if getattr(item, f) is None] if provenance else []
        if lacking:
            raise QevalInputError(
                f"{where}: missing required field {lacking[0]!r} (this task sets require_provenance: "
                f"true, so every item needs {', '.join(PROVENANCE)}); see {ITEM_SCHEMA}")
        common = dict(id=item.id, question=item.question, category=parsed.area, risk=item.risk,
                      cluster=item.cluster, rationale=item.rationale)
        if numeric:
            key = item.model_dump(include=set(NumericAnswer.model_fields))
            samples.append(Sample(**common, choices=(), target=-1, numeric=NumericAnswer(**key)))
            continue
        valid = letters[: len(item.choices)]
        if len(item.answer) != 1 or item.answer not in valid:
            # A one-letter answer is shown; anything longer may be the option's text (PHI).
            given = f"answer {item.answer!r}" if len(item.answer) == 1 else "an answer that is not a letter"
            raise QevalInputError(
                f"{where} has {given}, which is not among its "
                f"choices ({', '.join(valid)}); give the letter of the correct choice"
            )
        samples.append(Sample(**common, choices=tuple(item.choices), target=valid.index(item.answer)))
    return samples


DATA_DIR_HINT = "give it with --data-dir DIR, the QEVAL_DATA_DIR environment variable or data_dir in configs/data.yaml"


def _benchmark_file(spec: TaskSpec, rel: str, data_dir: Path | None, from_hub: bool = False) -> Path:
    local = (data_dir / rel).expanduser() if data_dir is not None else None
    if local is not None and local.is_file():
        return local
    offers_hub = spec.source.hub is not None and rel == spec.source.path
    if from_hub and offers_hub:
        from qeval.settings import cache_dir
        from qeval.tasks.sources import fetch_from_hub

        h = spec.source.hub
        return fetch_from_hub(spec.source.format, h.dataset, h.config, h.split, cache_dir() / "hub")
    hub = f" (or --from-hub, online, to fetch {spec.source.hub.dataset})" if offers_hub else ""
    if local is None:
        raise MissingData(f"task {spec.id!r} reads {rel} from a data directory, and none is set; "
                          f"{DATA_DIR_HINT}{hub}")
    raise MissingData(f"task {spec.id!r}: {local} does not exist; put the benchmark's original "
                      f"{spec.source.format} file there (layout: tasks/open_medical/README.md) "
                      f"or point --data-dir at the directory that holds it{hub}")


def _benchmark_task(path: Path, spec: TaskSpec, data_dir: Path | None, from_hub: bool) -> list[Sample]:
    from qeval.tasks.sources import READERS

    f = _benchmark_file(spec, spec.source.path, data_dir, from_hub)
    if spec.source.ids_path is not None:
        if spec.source.format != "pubmedqa_json":
            raise QevalInputError(f"{path}: source.ids_path only applies to pubmedqa_json")
        ids = _benchmark_file(spec, spec.source.ids_path, data_dir)
        return READERS[spec.source.format](f, ids_file=ids)
    return READERS[spec.source.format](f)


def load_task(path: Path, data_dir: Path | None = None, from_hub: bool = False) -> Task:
    """`data_dir`: where benchmark-format sources live (their `path` is relative to it);
    `from_hub`: fetch a missing one from the hub copy its task names (online, opt-in)."""
    raw = _mapping(path, read_yaml(path), "a task file is a mapping with id, kind and source "
                   "(e.g. tasks/clinical_core/clinical_core.yaml)")
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise QevalInputError(f"{path}: {_short(exc, raw, TaskSpec)}; compare with "
                              "tasks/clinical_core/clinical_core.yaml") from None
    kind = check_spec(spec, path)
    check_template(path, spec)
    kind.check_spec(path, spec)
    if spec.generation is not None and spec.generation.answer_pattern:
        import re

        try:
            re.compile(spec.generation.answer_pattern)
        except re.error as exc:
            raise QevalInputError(f"{path}: generation.answer_pattern is not a valid regex ({exc}); "
                                  "fix it, e.g. 'answer is \\(?([A-E])'") from None
    if spec.source.format in BENCHMARK_FORMATS:
        if kind.source_format != "qeval_items":
            questions = " or ".join(k.name for k in all_kinds() if k.source_format == "qeval_items")
            raise QevalInputError(f"{path}: {spec.source.format} holds questions; use kind {questions}")
        return _finish_items(path, spec, _benchmark_task(path, spec, data_dir, from_hub), f"data file {spec.source.path}")
    src = (path.parent / spec.source.path).resolve()
    if not src.exists():
        raise QevalInputError(f"{path}: source path {spec.source.path!r} does not exist ({src})")
    files = sorted(p for p in src.glob("*.yaml") if not p.name.startswith("_")) if src.is_dir() else [src]
    wants = kind.source_format
    if spec.source.format != wants:
        raise QevalInputError(f"{path}: a {spec.kind} task reads source format {wants!r}, "
                              f"not {spec.source.format!r}")
    if wants == "qeval_passages":
        return _passage_task(path, spec, files, src)
    samples: list[Sample] = []
    origin: list[Path] = []
    numeric = spec.generation is not None and spec.generation.answer == "numeric"
    if numeric and not kind.generates:
        generating = " or ".join(k.name for k in all_kinds() if k.generates)
        raise QevalInputError(f"{path}: generation.answer: numeric needs kind: {generating}")
    for f in files:
        found = load_item_file(f, spec.prompt.letters, numeric=numeric,
                               provenance=spec.require_provenance)
        samples.extend(found)
        origin.extend([f] * len(found))
    if not files:
        where = f"{src} (no item files there)"
    else:
        where = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        where = f"{where} in {src}" if src.is_dir() else str(src)
    return _finish_items(path, spec, samples, where, origin)


TEMPLATE_FIELDS = ("question", "choices", "passage")


def check_template(path: Path, spec: TaskSpec) -> None:
    """The prompt template's fields are ones render_prompt fills, and its braces balance: found
    when the task loads, not when the first item is rendered after a model has loaded."""
    import string

    template = spec.prompt.template
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise QevalInputError(f"{path}: prompt.template is not a valid template ({exc}); write a "
                              "literal brace as {{ or }}") from None
    for f in fields:
        name = f.split(".", 1)[0].split("[", 1)[0]
        if name not in TEMPLATE_FIELDS:
            shown = f"{{{f}}}" if f else "{}"
            raise QevalInputError(
                f"{path}: prompt.template uses unknown field {shown}; use "
                f"{', '.join('{' + n + '}' for n in TEMPLATE_FIELDS)} (a literal brace is {{{{ or }}}})")


def check_item_content(spec: TaskSpec, samples: Sequence[Sample], where: Sequence[str]) -> None:
    """Every item can be rendered and scored: a question, no empty option, no more options than
    the prompt has letters, and no two options with the same text where that would make the
    item unscoreable. `where[n]`: the file that holds item n. A published benchmark file asked
    for letters may repeat an option's text (MedMCQA's dev split does, 21 times): the letters
    still tell the options apart, so it is read as released; qeval's own item files never may."""
    letters = spec.prompt.letters
    cloze = spec.prompt.continuation == "choice_text"
    own = spec.source.format not in BENCHMARK_FORMATS
    for s, file in zip(samples, where):
        if s.prompt_text is not None:
            continue  # rendered by its own code (lm-eval bridge)
        item = f"{file}: item {s.id!r}"
        if not s.question.strip():
            raise QevalInputError(f"{item} has an empty question; give it its question or remove the item")
        if len(s.choices) > len(letters):
            raise QevalInputError(f"{item} has {len(s.choices)} options but prompt.letters has "
                                  f"{len(letters)} letters; add letters to the task's prompt.letters")
        for i, c in enumerate(s.choices):
            if not c.strip():
                raise QevalInputError(f"{item}: option {letters[i]} is empty; give it its text or "
                                      "remove the option")
        seen: dict[str, int] = {}
        for i, c in enumerate(s.choices):
            first = seen.setdefault(c.strip(), i)
            if first != i and (cloze or own):
                why = ("cloze answers score each option's text, so the two would always tie"
                       if cloze else "options must differ")
                raise QevalInputError(f"{item}: options {letters[first]} and {letters[i]} have the same "
                                      f"text ({why}); make them differ or remove the item")


def _finish_items(path: Path, spec: TaskSpec, samples: list[Sample], where: str,
                  origin: Sequence[Path] | None = None) -> Task:
    if not samples:
        raise QevalInputError(f"{path}: task {spec.id!r} has no items ({where}); add items "
                              f"(see {ITEM_SCHEMA}) or leave the task out of --tasks/--suite")
    check_item_content(spec, samples, [str(f) for f in origin] if origin is not None else [where] * len(samples))
    seen: dict[str, int] = {}
    for n, s in enumerate(samples):
        if s.id in seen:
            first = seen[s.id]
            if origin is not None:
                a, b = origin[first], origin[n]
                places = f"in {a}" if a == b else f"in {a} and {b}"
            else:
                places = f"in {where}"
            raise QevalInputError(f"{path}: duplicate sample id {s.id!r} {places}; ids must be unique "
                                  "in a task: rename one (records are paired on it)")
        seen[s.id] = n
    payload = json.dumps(
        {"spec": _hashable(spec), "samples": [_hashable(s) for s in samples]}, sort_keys=True,
    )
    return Task(spec=spec, samples=tuple(samples),
                content_hash=hashlib.sha256(payload.encode()).hexdigest(), path=str(path))


# Fields added after the first release: left out of the content hash while at their default, so
# tasks that do not use them keep their hash (and their stored records stay reusable).
_ADDED_DEFAULTS = {"cluster": None, "cluster_by": None, "passage": "", "prompt_text": None,
                   "continuations": None, "answers": [], "generation": None, "numeric": None,
                   "require_provenance": False, "rotations": "none", "position_buckets": None}


def _hashable(model: BaseModel) -> dict:
    data = model.model_dump(mode="json")
    if isinstance(data.get("source"), dict) and data["source"].get("ids_path") is None:
        data["source"].pop("ids_path", None)  # added later: absent keeps older tasks' hashes
    if isinstance(data.get("generation"), dict) and data["generation"].get("answer") == "text":
        data["generation"].pop("answer")  # added later: the default keeps older tasks' hashes
    # Fields a kind never reads, left out of its hash (the kind says which: qeval/kinds/).
    drop = kind_of(data["kind"]).hash_drops if "kind" in data else frozenset()
    return {k: v for k, v in data.items()
            if k not in drop and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])}


class PassageFileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    specialty: str
    text: str
    cluster: str | None = None


class PassageFile(BaseModel):
    """A file of reference passages (see tasks/clinical_reference/README.md)."""

    model_config = ConfigDict(extra="forbid")

    style: str
    passages: list[PassageFileEntry]


def _passage_task(path: Path, spec: TaskSpec, files: list[Path], src: Path) -> Task:
    passages: list[Passage] = []
    where: dict[str, Path] = {}
    for f in files:
        raw = _mapping(f, read_yaml(f), "give `style:` and a list of `passages:` "
                       "(see tasks/clinical_reference/README.md)")
        try:
            parsed = PassageFile.model_validate(raw)
        except ValidationError as exc:
            raise QevalInputError(f"{f}: {_short(exc, raw, PassageFile, 'passages', 'passage')}; "
                                  "see tasks/clinical_reference/README.md") from None
        for e in parsed.passages:
            if not e.text.strip():
                raise QevalInputError(f"{f}: passage {e.id!r} has no text; give it text or remove it")
            if e.id in where:
                places = f"in {f}" if where[e.id] == f else f"in {where[e.id]} and {f}"
                raise QevalInputError(f"{path}: duplicate passage id {e.id!r} {places}; ids must be "
                                      "unique in a task: rename one")
            where[e.id] = f
            passages.append(Passage(id=e.id, text=e.text.strip(), category=parsed.style, cluster=e.cluster))
    if not passages:
        raise QevalInputError(f"{path}: task {spec.id!r} has no passages under {src}; add passage "
                              "files (see tasks/clinical_reference/README.md) or leave the task out")
    payload = json.dumps({"spec": _hashable(spec), "passages": [p.model_dump(mode="json") for p in passages]},
                         sort_keys=True)
    return Task(spec=spec, samples=(), passages=tuple(passages),
                content_hash=hashlib.sha256(payload.encode()).hexdigest(), path=str(path))


def task_files(root: Path) -> list[Path]:
    """The task definition files under a folder: every `*.yaml` except those inside `items/`,
    `passages/` or `data/` and those whose name starts with `_`."""
    return [p for p in sorted(root.rglob("*.yaml"))
            if not p.name.startswith("_") and not DATA_DIRS.intersection(p.relative_to(root).parts[:-1])]


TASK_FILE_SUFFIXES = (".yaml", ".yml")


def is_task_path(entry: str) -> bool:
    """A --tasks entry that names a task file or a folder of them rather than a task id: it ends in
    .yaml/.yml, holds a path separator or starts with `.` or `~`. (A bare name is always an id,
    even where a folder of that name exists.)"""
    from qeval.tasks.lmeval import ID_PREFIX

    if entry.startswith(ID_PREFIX):
        return False
    return entry.endswith(TASK_FILE_SUFFIXES) or "/" in entry or "\\" in entry or entry.startswith((".", "~"))


def expand_task_refs(entries: Sequence[str]) -> tuple[str, ...]:
    """--tasks entries as the run records them: an id stays an id; a task file becomes its
    absolute path; a folder becomes the absolute paths of the task files under it. Your own tasks
    can live anywhere (they often hold patient-derived text): they need not be copied into qeval."""
    out: list[str] = []
    for entry in entries:
        if not is_task_path(entry):
            out.append(entry)
            continue
        path = Path(entry).expanduser().resolve()
        if path.is_file():
            if path.suffix not in TASK_FILE_SUFFIXES:
                raise QevalInputError(f"--tasks {entry}: {path} is not a .yaml task file; give a task "
                                      "file (e.g. tasks/my_task/my_task.yaml as `qeval init` writes it)")
            out.append(str(path))
        elif path.is_dir():
            found = task_files(path)
            if not found:
                raise QevalInputError(f"--tasks {entry}: {path} holds no task files (*.yaml outside "
                                      "items/, passages/ and data/); give a folder of task files")
            out.extend(str(p) for p in found)
        else:
            raise QevalInputError(f"--tasks {entry}: no such file or folder ({path}); give a task id "
                                  "(`qeval tasks` lists them), a task YAML file or a folder of them")
    return tuple(out)


class TaskRegistry:
    """The tasks defined under some directories, loaded lazily by id."""

    def __init__(self, roots: list[Path], data_dir: Path | None = None, from_hub: bool = False):
        self.roots = [Path(r) for r in roots]
        self.data_dir = data_dir
        self.from_hub = from_hub

    @cached_property
    def _paths(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for root in self.roots:
            for path in task_files(root):
                raw = read_yaml(path)
                task_id = raw.get("id") if isinstance(raw, dict) else None
                if not isinstance(task_id, str):
                    raise QevalInputError(f"{path}: task file has no string 'id'; add `id: my_task`")
                if task_id in found:
                    raise QevalInputError(f"{path}: task id {task_id!r} is also defined in {found[task_id]}")
                found[task_id] = path
        return found

    def ids(self) -> list[str]:
        return sorted(self._paths)

    def load(self, task_id: str) -> Task:
        if task_id not in self._paths:
            raise QevalInputError(
                f"unknown task {task_id!r}; known tasks: {', '.join(self.ids()) or 'none'} "
                "(`qeval tasks` lists them)"
            )
        return load_task(self._paths[task_id], self.data_dir, self.from_hub)


def first_n(task: Task, limit: int | None) -> Task:
    """The task cut to its first `limit` samples or passages (for quick runs); its hash changes."""
    if limit is None or limit >= task.size():
        return task
    samples, passages = task.samples[:limit], task.passages[:limit]
    payload = json.dumps([task.content_hash, [s.id for s in samples] + [p.id for p in passages]])
    return task.model_copy(update={
        "samples": samples, "passages": passages,
        "content_hash": hashlib.sha256(payload.encode()).hexdigest(),
    })


def load_tasks(task_ids: Sequence[str], *, roots: list[Path], data_dir: Path | None,
               lm_eval_include: Path | None = None, limit: int | None = None,
               skip_missing_data: bool = False, from_hub: bool = False) -> tuple[list[Task], list[str]]:
    """The run's tasks, in order, and (with skip_missing_data) one line per task dropped because
    its data file is missing. `lm-eval:<name>` ids come from lm-eval's registry (qeval/tasks/lmeval.py)."""
    from qeval.tasks.lmeval import ID_PREFIX, load_lmeval_task

    registry = TaskRegistry(roots, data_dir, from_hub)
    loaded: list[Task] = []
    skipped: list[str] = []
    for tid in task_ids:
        try:
            if tid.startswith(ID_PREFIX):
                task = load_lmeval_task(tid[len(ID_PREFIX):], include_path=lm_eval_include)
            elif is_task_path(tid):
                task = load_task(Path(tid), data_dir, from_hub)
            else:
                task = registry.load(tid)
        except MissingData as exc:
            if not skip_missing_data:
                raise MissingData(f"{exc}; or pass --skip-missing-data to run the other tasks") from None
            skipped.append(str(exc))
            continue
        twin = next((t for t in loaded if t.spec.id == task.spec.id), None)
        if twin is not None:
            raise QevalInputError(f"task id {task.spec.id!r} is given twice ({twin.path} and {task.path}); "
                                  "each task may run once: drop one, or give one of them another id")
        loaded.append(first_n(task, limit))
    if not loaded:
        raise QevalInputError("no task left to run: every task's data file is missing"
                              + (f" ({skipped[0]})" if skipped else ""))
    return loaded, skipped
