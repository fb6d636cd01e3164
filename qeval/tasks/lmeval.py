"""Run an lm-eval task through qeval's own backends, paired item by item.

lm-eval's registry finds the task (its built-in tasks plus any `include_path` directory of task
YAMLs), lm-eval's own code loads the dataset and builds the requests (description, few-shot
context, target delimiter, chat settings off), and each document becomes one qeval `Sample` whose
prompt is lm-eval's request text, verbatim. qeval then tokenises, scores, pairs and gates as for
any other task; nothing of lm-eval's model layer runs.

| lm-eval output_type     | qeval                                                                  |
|-------------------------|------------------------------------------------------------------------|
| `multiple_choice`       | kind `multiple_choice`: `prompt_text` = the request context,           |
|                         | `continuations` = the request continuations (target delimiter + choice),|
|                         | `choices` = doc_to_choice, `target` = the gold index; choice_score      |
|                         | `sum` = lm-eval's `acc`                                                 |
| `generate_until`        | kind `generate`: `prompt_text` = the context, `answers` = doc_to_target |
|                         | (as strings), GenerationSpec(max_tokens = max_gen_toks (lm-eval's        |
|                         | default 256), stop = until, answer_pattern = the regex of the task's    |
|                         | first regex filter, else "")                                            |
| `loglikelihood`         | refused (QevalInputError)                                              |
| `loglikelihood_rolling` | refused (QevalInputError)                                              |

Scores: the bridge uses `sum`, which is lm-eval's `acc` exactly (argmax of summed
log-likelihoods, ties to the first choice). lm-eval's `acc_norm` divides by the choice's length in
*characters, without the target delimiter*: that is qeval's `mean_per_char` (the bridged samples'
`choices` are lm-eval's choice strings), not `mean_per_byte`, which divides by the UTF-8 bytes of
the whole continuation, delimiter included, and can pick a different choice when lengths differ.

Also refused, each with one line: lm-eval groups and tags (give one task), multiple-input tasks
(one context per choice, e.g. winogrande), `acc_mutual_info` (extra unconditional requests),
several gold answers per multiple-choice item, and sampled generation (qeval decodes greedily).
generate tasks: lm-eval's regex filter picks the match `group_select` (default: the first);
qeval's answer_pattern takes the last match, and metrics such as exact_match's `ignore_case`
are not carried over.

lm-eval is imported inside the functions: qeval works without it, and asking for an lm-eval
task without it installed is one clear error.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qeval.errors import QevalInputError
from qeval.types import GenerationSpec, Sample, SourceSpec, Task, TaskSpec

ID_PREFIX = "lm-eval:"
SUPPORTED_OUTPUT_TYPES = ("multiple_choice", "generate_until")
INSTALL_HINT = "install the lmeval extra: pip install -e '.[lmeval]'"
OFFLINE_HINT = ("give a local dataset via --lm-eval-include DIR with a task YAML whose dataset_path "
                "is json/csv and whose dataset_kwargs.data_files names the file")


def load_lmeval_task(name: str, *, include_path: Path | None = None,
                     limit: int | None = None) -> Task:
    """lm-eval task `name` as a qeval Task whose samples carry lm-eval's rendered requests.

    `include_path`: a directory of extra lm-eval task YAMLs (searched after lm-eval's own).
    `limit`: only the first `limit` documents of the evaluation split (lm-eval's --limit).
    """
    lm_eval = _import_lm_eval()
    if limit is not None and limit < 1:
        raise QevalInputError(f"lm-eval task {name!r}: --limit must be at least 1, got {limit}")
    if include_path is not None and not Path(include_path).is_dir():
        raise QevalInputError(f"lm-eval include path {include_path} is not a directory; give the "
                              "directory that holds your lm-eval task YAMLs")
    with _quiet():
        manager = _task_manager(include_path)
        _refuse_unsupported_config(manager, name)
        lm_task = _build_task(manager, name)
        _refuse_unsupported_type(name, lm_task.OUTPUT_TYPE)
        try:
            lm_task.build_all_requests(limit=limit, rank=0, world_size=1)
        except Exception as exc:  # lm-eval's own templates and document functions
            raise QevalInputError(f"lm-eval task {name!r}: lm-eval could not build its requests "
                                  f"({_first_line(exc)}); check the task's doc_to_text / "
                                  "doc_to_choice / doc_to_target against the dataset's fields") from None
    task_name = lm_task.task_name
    if lm_task.OUTPUT_TYPE == "multiple_choice":
        samples = [_choice_sample(lm_task, task_name, doc_id, insts)
                   for doc_id, insts in _by_document(lm_task.instances)]
        spec = TaskSpec(
            id=f"{ID_PREFIX}{task_name}", kind="multiple_choice", choice_score="sum",
            description=_description(lm_eval.__version__, task_name, lm_task),
            source=SourceSpec(format="lm_eval", path=name),
        )
    else:
        generation = _generation_spec(lm_task, name)
        samples = [_generate_sample(lm_task, task_name, doc_id, insts)
                   for doc_id, insts in _by_document(lm_task.instances)]
        spec = TaskSpec(
            id=f"{ID_PREFIX}{task_name}", kind="generate",
            description=_description(lm_eval.__version__, task_name, lm_task),
            source=SourceSpec(format="lm_eval", path=name), generation=generation,
        )
    if not samples:
        raise QevalInputError(f"lm-eval task {name!r} has no documents in its evaluation split")
    return Task(spec=spec, samples=tuple(samples),
                content_hash=content_hash(spec, samples, lm_eval.__version__),
                path=_config_source(lm_task, name))


def content_hash(spec: TaskSpec, samples: list[Sample], lm_eval_version: str) -> str:
    """sha256 over everything that changes the numbers: the rendered prompts, continuations,
    targets and answers, the sample ids, how choices are scored, and lm-eval's version."""
    payload = json.dumps({
        "lm_eval": lm_eval_version,
        "id": spec.id,
        "kind": spec.kind,
        "choice_score": spec.choice_score,
        "generation": spec.generation.model_dump(mode="json") if spec.generation else None,
        "items": [[s.id, s.prompt_text, list(s.continuations or ()), list(s.choices), s.target,
                   list(s.answers)] for s in samples],
    }, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- lm-eval objects


def _import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise QevalInputError(f"lm-eval tasks need the lm_eval package; {INSTALL_HINT}") from None
    return lm_eval


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval and datasets draw progress bars and log warnings on stderr; qeval's console owns
    it. Failures still surface: they are raised, not logged."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _task_manager(include_path: Path | None) -> Any:
    return _cached_task_manager(str(Path(include_path).resolve()) if include_path is not None else None)


@functools.lru_cache(maxsize=4)
def _cached_task_manager(include_path: str | None) -> Any:
    """Indexing lm-eval's ~15k task YAMLs takes seconds; one index per include path serves every
    task of a run (the YAMLs themselves are re-read whenever a task is built)."""
    from lm_eval.tasks import TaskManager

    try:
        return TaskManager(include_path=include_path)
    except Exception as exc:  # a malformed YAML under include_path
        raise QevalInputError(f"lm-eval could not index the task YAMLs under {include_path} "
                              f"({_first_line(exc)}); fix or remove the offending file") from None


def _refuse_unsupported_config(manager: Any, name: str) -> None:
    """Refuse groups, tags and unsupported output types from the config alone, before lm-eval
    loads a dataset (which may be out of reach offline)."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None:
        return  # a path or an unknown name: _build_task says which
    if entry.kind in (Kind.GROUP, Kind.TAG):
        what = "group" if entry.kind == Kind.GROUP else "tag"
        raise QevalInputError(f"lm-eval name {name!r} is a {what}, not one task; give its tasks one by "
                              "one, each as lm-eval:<task> (e.g. mmlu_anatomy for the mmlu group)")
    if entry.kind != Kind.TASK or entry.yaml_path is None:
        return  # python-defined tasks: checked after building
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(entry.yaml_path, resolve_func=False)
    except Exception:
        return  # building the task reports the problem in lm-eval's words
    # lm-eval's TaskConfig default output_type is generate_until
    _refuse_unsupported_type(name, cfg.get("output_type", "generate_until"))


def _refuse_unsupported_type(name: str, output_type: str | None) -> None:
    if output_type not in SUPPORTED_OUTPUT_TYPES:
        raise QevalInputError(
            f"lm-eval task {name!r} has output_type {output_type!r}, which qeval does not support; "
            f"supported: {', '.join(SUPPORTED_OUTPUT_TYPES)}")


def _build_task(manager: Any, name: str) -> Any:
    if name not in manager.task_index and not Path(name).is_file():
        raise QevalInputError(
            f"unknown lm-eval task {name!r}; check the name (`lm_eval ls tasks` lists them) or give "
            "the directory of your task YAML via --lm-eval-include DIR")
    try:
        loaded = manager.load(name)
    except Exception as exc:  # the dataset cannot load (offline, missing split) or a broken config
        raise QevalInputError(
            f"lm-eval task {name!r}: its dataset{_dataset_of(manager, name)} could not be loaded "
            f"({_first_line(exc)}); {OFFLINE_HINT}") from None
    tasks = loaded["tasks"]
    if len(tasks) != 1:
        raise QevalInputError(f"lm-eval name {name!r} expands to {len(tasks)} tasks; give one task "
                              f"(e.g. {sorted(tasks)[0] if tasks else 'its subtasks'})")
    return next(iter(tasks.values()))


def _dataset_of(manager: Any, name: str) -> str:
    entry = manager.task_index.get(name)
    if entry is None or entry.yaml_path is None:
        return ""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(entry.yaml_path, resolve_func=False)
    except Exception:
        return ""
    path, sub = cfg.get("dataset_path"), cfg.get("dataset_name")
    return f" ({path}{'/' + sub if sub else ''})" if path else ""


def _config_source(lm_task: Any, name: str) -> str:
    meta = getattr(lm_task.config, "metadata", None) or {}
    source = meta.get("config_source") if isinstance(meta, dict) else None
    return str(source) if source and source != "inline" else name


def _description(version: str, task_name: str, lm_task: Any) -> str:
    meta = getattr(lm_task.config, "metadata", None) or {}
    task_version = meta.get("version") if isinstance(meta, dict) else None
    versioned = f", task version {task_version}" if task_version is not None else ""
    return (f"lm-eval {version} task {task_name} ({lm_task.OUTPUT_TYPE}{versioned}); "
            "prompts rendered by lm-eval")


def _by_document(instances: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """lm-eval's flat request list, grouped by document in document order, choices in order."""
    groups: dict[int, list[Any]] = {}
    for inst in instances:
        groups.setdefault(inst.doc_id, []).append(inst)
    for doc_id, insts in groups.items():
        yield doc_id, sorted(insts, key=lambda i: i.idx)


def _sample_id(task_name: str, doc_id: int) -> str:
    return f"{task_name}-{doc_id:06d}"


# ---------------------------------------------------------------- per document


def _choice_sample(lm_task: Any, task_name: str, doc_id: int, insts: list[Any]) -> Sample:
    sid = _sample_id(task_name, doc_id)
    if lm_task.multiple_input:
        raise QevalInputError(f"lm-eval task {task_name!r} puts each choice in its own context "
                              "(multiple inputs, e.g. winogrande); qeval scores one context per item")
    doc = insts[0].doc
    choices = [str(c) for c in lm_task.doc_to_choice(doc)]
    if len(insts) != len(choices):
        raise QevalInputError(f"lm-eval task {task_name!r}, document {doc_id}: {len(insts)} requests "
                              f"for {len(choices)} choices (acc_mutual_info?); qeval needs one "
                              "request per choice: drop acc_mutual_info from metric_list")
    contexts = {inst.arguments[0] for inst in insts}
    if len(contexts) != 1:
        raise QevalInputError(f"lm-eval task {task_name!r}, document {doc_id}: the choices have "
                              "different contexts; qeval scores one context per item")
    if len(choices) < 2:
        raise QevalInputError(f"lm-eval task {task_name!r}, document {doc_id}: "
                              f"{len(choices)} choice(s); a multiple-choice item needs at least two")
    target = _gold_index(lm_task.doc_to_target(doc), choices, task_name, doc_id)
    return Sample(id=sid, question="", choices=tuple(choices), target=target,
                  prompt_text=insts[0].arguments[0],
                  continuations=tuple(inst.arguments[1] for inst in insts))


def _gold_index(gold: Any, choices: list[str], task_name: str, doc_id: int) -> int:
    """lm-eval's rule: an int indexes the choices, a string is looked up among them."""
    if isinstance(gold, list):
        raise QevalInputError(f"lm-eval task {task_name!r}, document {doc_id}: several gold answers "
                              f"({gold}); qeval needs one gold choice per item")
    if isinstance(gold, str) and gold in choices:
        return choices.index(gold)
    if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(choices):
        return gold
    raise QevalInputError(f"lm-eval task {task_name!r}, document {doc_id}: gold {gold!r} is not "
                          f"one of its {len(choices)} choices; fix doc_to_target")


def _generation_spec(lm_task: Any, name: str) -> GenerationSpec:
    from lm_eval.models.utils import normalize_gen_kwargs

    kwargs = normalize_gen_kwargs(dict(lm_task.config.generation_kwargs or {}), 256)
    if kwargs.get("do_sample"):
        raise QevalInputError(f"lm-eval task {name!r} samples its generations (do_sample/temperature); "
                              "qeval decodes greedily: set do_sample: false in the task's generation_kwargs")
    max_tokens = int(kwargs["max_gen_toks"])
    limit = GenerationSpec.model_fields["max_tokens"].metadata
    upper = next((m.le for m in limit if getattr(m, "le", None) is not None), None)
    if upper is not None and max_tokens > upper:
        raise QevalInputError(f"lm-eval task {name!r} asks for max_gen_toks {max_tokens}; qeval "
                              f"generates at most {upper} tokens: lower it in generation_kwargs")
    return GenerationSpec(max_tokens=max_tokens, stop=tuple(str(s) for s in kwargs["until"]),
                          answer_pattern=_regex_filter_pattern(lm_task.config.filter_list))


def _regex_filter_pattern(filter_list: Any) -> str:
    """The pattern of the first `regex` filter in the task's first filter pipeline that has one."""
    from lm_eval.filters.extraction import RegexFilter

    for pipeline in filter_list or []:
        for step in pipeline.get("filter", []) if isinstance(pipeline, dict) else []:
            if isinstance(step, dict) and step.get("function") == "regex":
                default = RegexFilter.__init__.__defaults__[0]
                return str(step.get("regex_pattern", default))
    return ""


def _generate_sample(lm_task: Any, task_name: str, doc_id: int, insts: list[Any]) -> Sample:
    doc = insts[0].doc
    gold = lm_task.doc_to_target(doc)
    if isinstance(gold, int) and not isinstance(gold, bool) and lm_task.config.doc_to_choice is not None:
        gold = lm_task.doc_to_choice(doc)[gold]  # lm-eval's rule for an index into the choices
    answers = tuple(str(g) for g in gold) if isinstance(gold, list) else (str(gold),)
    return Sample(id=_sample_id(task_name, doc_id), question="", choices=(), target=-1,
                  prompt_text=insts[0].arguments[0], answers=answers)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
