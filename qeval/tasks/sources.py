"""Readers for published benchmarks in their original file formats → Samples.

Each reader takes the file as its authors publish it (no conversion step, no copy into this
project) and fails on the first malformed record with one line naming the file, the line or key,
and what was expected. Pure: a path in, samples out; no model, no network.

| format          | file                                      | one item                                           |
|-----------------|-------------------------------------------|----------------------------------------------------|
| `mmlu_csv`      | MMLU `<subject>_test.csv`, no header      | row `question,A,B,C,D,answer` (answer a letter)    |
| `medqa_jsonl`   | MedQA (USMLE) JSON Lines                  | `question`, `options{A..D or A..E}`, `answer_idx`  |
| `medmcqa_jsonl` | MedMCQA JSON Lines (`dev.json`)           | `question`, `opa..opd`, `cop` 1-based, `id`        |
| `pubmedqa_json` | PubMedQA JSON keyed by PMID               | `QUESTION`, `CONTEXTS[]`, `final_decision`         |
| `headqa_json`   | HEAD-QA JSON (`exams` → `data[]`)         | `qtext`, `answers[{aid, atext}]`, `ra` (an aid)    |

Ids and answer keys are read as the releases write them, which is not always one JSON type: the
published HEAD-QA files have `qid` and `ra` as strings (`"ra": "2"`) and `aid` as an integer, its
hub copy integers throughout; MedMCQA's `cop` is an integer and its `id` a string. A key is
therefore compared by value (`2` and `"2"` are the same key), never by JSON type.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from qeval.errors import QevalInputError
from qeval.types import Sample

LETTERS = "ABCDEFGHIJ"
PUBMEDQA_CHOICES = ("yes", "no", "maybe")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QevalInputError(f"{path}: not UTF-8 text (byte {exc.start}); give the original file") from None
    except OSError as exc:
        raise QevalInputError(f"{path}: cannot read ({exc.strerror})") from None


def _json_lines(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QevalInputError(f"{path} line {n}: not valid JSON ({exc.msg}); expected one {what} "
                                  "object per line (JSON Lines)") from None
        if not isinstance(obj, dict):
            raise QevalInputError(f"{path} line {n}: expected a JSON object ({what}), got {type(obj).__name__}")
        yield n, obj


def _shown(value: object) -> str:
    """A value for an error line: a number or a short word as it is; longer text only by its
    length (it may be a question or an option: PHI)."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str) and len(value) <= 16 and not any(c.isspace() for c in value):
        return repr(value)
    if isinstance(value, str):
        return f"a text of {len(value)} characters (not shown)"
    return f"a {type(value).__name__}"


def _key(value: object) -> str | None:
    """An id or answer key as the releases write it, integer or string (`2`, `"2"`, `" 2 "`), in
    one canonical form; None for anything else (a bool, a float, a list, an empty string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return str(int(text)) if text.isdigit() else text
    return None


def _text_field(path: Path, where: str, obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        got = "nothing" if key not in obj else type(value).__name__
        raise QevalInputError(f"{path} {where}: field {key!r} must be a string, got {got}")
    return value


def read_mmlu_csv(path: Path, *, subject: str | None = None) -> list[Sample]:
    """MMLU: headerless CSV rows `question,A,B,C,D,answer`; the subject is the file name's stem
    without `_test`/`_dev`/`_val` unless given. The question is stripped, as lm-eval does."""
    subject = subject or path.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")
    samples = []
    rows = csv.reader(_read_text(path).splitlines(keepends=True))
    for n, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) != 6:
            raise QevalInputError(f"{path} line {n}: expected 6 columns (question,A,B,C,D,answer), "
                                  f"got {len(row)}; MMLU CSVs have no header row")
        answer = row[5].strip()
        if answer not in "ABCD" or len(answer) != 1:
            raise QevalInputError(f"{path} line {n}: answer {_shown(answer)} must be one of A, B, C, D")
        samples.append(Sample(id=f"{subject}-{len(samples):04d}", question=row[0].strip(),
                              choices=tuple(row[1:5]), target="ABCD".index(answer), category=subject))
    return samples


def read_medqa_jsonl(path: Path) -> list[Sample]:
    """MedQA (USMLE): `options` maps letters to texts, `answer_idx` is the key's letter;
    `meta_info` (step1, step2&3) is the category when present."""
    samples = []
    for n, obj in _json_lines(path, "MedQA question"):
        where = f"line {n}"
        question = _text_field(path, where, obj, "question")
        options = obj.get("options")
        if not isinstance(options, dict) or not 2 <= len(options) <= len(LETTERS):
            raise QevalInputError(f"{path} {where}: 'options' must map letters to answer texts, "
                                  'e.g. {"A": "...", "B": "...", "C": "...", "D": "..."}')
        letters = sorted(options)
        if letters != list(LETTERS[: len(letters)]) or not all(isinstance(v, str) for v in options.values()):
            raise QevalInputError(f"{path} {where}: 'options' keys must be A, B, C, ... in order with "
                                  f"string values, got keys {', '.join(_shown(k) for k in options)}")
        key = _key(obj.get("answer_idx"))
        if key not in options:
            raise QevalInputError(f"{path} {where}: 'answer_idx' {_shown(obj.get('answer_idx'))} is not one of the option "
                                  f"letters {', '.join(letters)}")
        category = obj.get("meta_info") if isinstance(obj.get("meta_info"), str) else "all"
        samples.append(Sample(id=f"medqa-{n:05d}", question=question,
                              choices=tuple(options[k] for k in letters), target=letters.index(key),
                              category=category))
    return samples


def read_medmcqa_jsonl(path: Path) -> list[Sample]:
    """MedMCQA (JSON Lines even when named .json): `opa..opd`, `cop` 1-based (1 = opa);
    the category is `subject_name`. The published test split has no answers: use dev."""
    samples = []
    seen: set[str] = set()
    for n, obj in _json_lines(path, "MedMCQA question"):
        where = f"line {n}"
        question = _text_field(path, where, obj, "question")
        choices = tuple(_text_field(path, where, obj, k) for k in ("opa", "opb", "opc", "opd"))
        cop = obj.get("cop")
        if _key(cop) not in ("1", "2", "3", "4"):
            hint = " (the test split has no answers; use dev.json)" if cop in (None, -1, "-1") else ""
            raise QevalInputError(f"{path} {where}: 'cop' must be 1, 2, 3 or 4 (1 = opa), "
                                  f"got {_shown(cop)}{hint}")
        item_id = _key(obj.get("id")) or f"line{n:05d}"
        if item_id in seen:
            raise QevalInputError(f"{path} {where}: id {_shown(item_id)} appears twice; ids must be unique")
        seen.add(item_id)
        subject = obj.get("subject_name") if isinstance(obj.get("subject_name"), str) else "all"
        samples.append(Sample(id=f"medmcqa-{item_id}", question=question, choices=choices,
                              target=int(_key(cop)) - 1, category=subject or "all"))
    return samples


def _json_file(path: Path, what: str) -> object:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise QevalInputError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}); expected {what}") from None


def read_pubmedqa_json(path: Path, *, ids_file: Path | None = None) -> list[Sample]:
    """PubMedQA PQA-L: a JSON object keyed by PMID with `QUESTION`, `CONTEXTS` (list of abstract
    sections) and `final_decision` (yes/no/maybe). `ids_file` (test_ground_truth.json: PMID →
    label) keeps the official split; its labels must agree with the main file's."""
    data = _json_file(path, "an object keyed by PMID")
    if not isinstance(data, dict) or not data:
        raise QevalInputError(f"{path}: expected a JSON object keyed by PMID "
                              '({"12345678": {"QUESTION": ..., "CONTEXTS": [...], "final_decision": "yes"}})')
    wanted: dict[str, object] | None = None
    if ids_file is not None:
        wanted = _json_file(ids_file, "an object PMID → yes/no/maybe")
        if not isinstance(wanted, dict) or not wanted:
            raise QevalInputError(f"{ids_file}: expected a JSON object PMID → yes/no/maybe (the split's ids)")
        missing = [k for k in wanted if k not in data]
        if missing:
            raise QevalInputError(f"{ids_file}: PMID {missing[0]} ({len(missing)} in all) is not in {path}; "
                                  "give the matching ori_pqal.json")
    samples = []
    for pmid, obj in data.items():
        if wanted is not None and pmid not in wanted:
            continue
        where = f"key {pmid}"
        if not isinstance(obj, dict):
            raise QevalInputError(f"{path} {where}: expected an object with QUESTION, CONTEXTS, final_decision")
        question = _text_field(path, where, obj, "QUESTION")
        contexts = obj.get("CONTEXTS")
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise QevalInputError(f"{path} {where}: 'CONTEXTS' must be a list of strings")
        decision = obj.get("final_decision")
        if decision not in PUBMEDQA_CHOICES:
            raise QevalInputError(f"{path} {where}: 'final_decision' must be yes, no or maybe, got {_shown(decision)}")
        if wanted is not None and wanted[pmid] != decision:
            raise QevalInputError(f"{ids_file} key {pmid}: label {_shown(wanted[pmid])} disagrees with "
                                  f"{path} ({decision!r}); give files from the same release")
        samples.append(Sample(id=f"pubmedqa-{pmid}", question=question, passage="\n".join(contexts),
                              choices=PUBMEDQA_CHOICES, target=PUBMEDQA_CHOICES.index(decision)))
    return samples


def read_headqa_json(path: Path) -> list[Sample]:
    """HEAD-QA: `exams` maps exam names to {category, data: [{qid, qtext, answers: [{aid,
    atext}], ra}]}; `ra` is the aid of the right answer, matched by value (the published files
    write `qid` and `ra` as strings and `aid` as an integer). The category is the exam's."""
    data = _json_file(path, "an object with 'exams'")
    exams = data.get("exams") if isinstance(data, dict) else None
    if not isinstance(exams, dict) or not exams:
        raise QevalInputError(f"{path}: expected a JSON object with 'exams' mapping exam names to "
                              "{category, data: [...]}, as HEAD-QA publishes it")
    samples = []
    for exam_name, exam in exams.items():
        if not isinstance(exam, dict) or not isinstance(exam.get("data"), list):
            raise QevalInputError(f"{path} key exams.{exam_name}: expected an object with a 'data' list")
        category = exam.get("category") if isinstance(exam.get("category"), str) else "all"
        for i, q in enumerate(exam["data"]):
            where = f"key exams.{exam_name}.data[{i}]"
            if not isinstance(q, dict):
                raise QevalInputError(f"{path} {where}: expected a question object")
            text = _text_field(path, where, q, "qtext")
            answers = q.get("answers")
            if (not isinstance(answers, list) or len(answers) < 2
                    or not all(isinstance(a, dict) and isinstance(a.get("atext"), str) for a in answers)):
                raise QevalInputError(f"{path} {where}: 'answers' must be a list of {{aid, atext}} objects")
            aids = [_key(a.get("aid")) for a in answers]
            if None in aids or len(set(aids)) != len(aids):
                raise QevalInputError(f"{path} {where}: every answer needs its own 'aid' (an integer or "
                                      f"a string), got {', '.join(_shown(a.get('aid')) for a in answers)}")
            ra = _key(q.get("ra"))
            if ra not in aids:
                raise QevalInputError(f"{path} {where}: 'ra' {_shown(q.get('ra'))} is not the aid of any answer "
                                      f"({', '.join(_shown(a.get('aid')) for a in answers)})")
            qid = _key(q.get("qid")) or str(i)
            samples.append(Sample(id=f"headqa-{exam_name}-{qid}", question=text,
                                  choices=tuple(a["atext"] for a in answers),
                                  target=aids.index(ra), category=category))
    return samples


READERS: dict[str, Callable[..., list[Sample]]] = {
    "mmlu_csv": read_mmlu_csv,
    "medqa_jsonl": read_medqa_jsonl,
    "medmcqa_jsonl": read_medmcqa_jsonl,
    "pubmedqa_json": read_pubmedqa_json,
    "headqa_json": read_headqa_json,
}


# ---------------------------------------------------------------- hub copies (opt-in, online)
#
# With `--from-hub`, a task whose file is missing is fetched from the hub copy named in its
# `source.hub`, converted back to the original published format and cached, then read by the same
# reader as a local file (so the same checks and the same sample ids apply). Each converter below
# is pure: hub rows in, the original file's text out.


def _mmlu_from_hub(rows: list[dict]) -> str:
    """cais/mmlu: question, choices[4], answer (0-based) → headerless CSV."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in rows:
        writer.writerow([r["question"], *r["choices"], "ABCD"[int(r["answer"])]])
    return buf.getvalue()


def _medqa_from_hub(rows: list[dict]) -> str:
    """GBaker/MedQA-USMLE-4-options keeps MedQA's own fields."""
    keep = ("question", "answer", "options", "meta_info", "answer_idx")
    return "".join(json.dumps({k: r[k] for k in keep if k in r}) + "\n" for r in rows)


def _medmcqa_from_hub(rows: list[dict]) -> str:
    """openlifescienceai/medmcqa: `cop` is 0-based there, 1-based in the published file."""
    return "".join(json.dumps({**r, "cop": int(r["cop"]) + 1}) + "\n" for r in rows)


def _pubmedqa_from_hub(rows: list[dict]) -> str:
    """qiaojin/PubMedQA pqa_labeled: pubid, question, context{contexts}, final_decision."""
    return json.dumps({str(r["pubid"]): {"QUESTION": r["question"], "CONTEXTS": list(r["context"]["contexts"]),
                                         "final_decision": r["final_decision"]} for r in rows})


def _headqa_from_hub(rows: list[dict]) -> str:
    """EleutherAI/headqa: one row per question, with its exam's name and category."""
    exams: dict[str, dict] = {}
    for r in rows:
        exam = exams.setdefault(r["name"], {"name": r["name"], "category": r["category"], "data": []})
        exam["data"].append({"qid": r["qid"], "qtext": r["qtext"], "ra": r["ra"],
                             "answers": [{"aid": a["aid"], "atext": a["atext"]} for a in r["answers"]]})
    return json.dumps({"exams": exams})


FROM_HUB: dict[str, Callable[[list[dict]], str]] = {
    "mmlu_csv": _mmlu_from_hub,
    "medqa_jsonl": _medqa_from_hub,
    "medmcqa_jsonl": _medmcqa_from_hub,
    "pubmedqa_json": _pubmedqa_from_hub,
    "headqa_json": _headqa_from_hub,
}


def fetch_from_hub(fmt: str, dataset: str, config: str | None, split: str, cache: Path) -> Path:
    """The hub copy as a file in the original format, cached under `cache` (fetched once)."""
    # <config>_<split>: MMLU's reader takes the subject from the file name, as for a local file.
    target = cache / dataset.replace("/", "__") / f"{config or 'default'}_{split}.{fmt.rsplit('_', 1)[1]}"
    if target.is_file():
        return target
    try:
        from datasets import load_dataset
    except ImportError:
        raise QevalInputError("--from-hub needs the `datasets` package (pip install datasets)") from None
    try:
        rows = [dict(r) for r in load_dataset(dataset, config, split=split)]
    except Exception as exc:  # network, auth, unknown dataset: one line, never a traceback
        raise QevalInputError(f"hub dataset {dataset} ({config or 'default'}, {split}) could not be "
                              f"loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                              "give the file with --data-dir instead") from None
    from qeval.util.fileio import atomic_write_text

    atomic_write_text(target, FROM_HUB[fmt](rows))
    return target
