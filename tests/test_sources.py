"""Benchmark readers on files in the published formats (tests/fixtures/benchmarks: small items of
our own), the open-medical suite, the data directory, and one-line errors for bad files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qeval.cli import app
from qeval.run.config import suite_tasks
from qeval.settings import data_dir_from, resource_dir
from qeval.errors import QevalInputError
from qeval.kinds.choice import render_prompt
from qeval.tasks.sources import (
    read_headqa_json, read_medmcqa_jsonl, read_medqa_jsonl, read_mmlu_csv, read_pubmedqa_json,
)
from qeval.tasks.registry import MissingData, TaskRegistry, load_tasks

DATA = Path(__file__).parent / "fixtures" / "benchmarks"
runner = CliRunner()


def _registry(data_dir: Path | None = DATA) -> TaskRegistry:
    return TaskRegistry([resource_dir("tasks")], data_dir)


def test_mmlu_csv_keys_point_at_the_answer_column():
    path = DATA / "mmlu_medical" / "anatomy_test.csv"
    samples = read_mmlu_csv(path)
    rows = list(csv.reader(path.open()))
    assert len(samples) == len(rows)
    for s, row in zip(samples, rows):
        assert s.choices[s.target] == row[1 + "ABCD".index(row[5])]
        assert s.category == "anatomy" and s.id.startswith("anatomy-")
    assert len({s.id for s in samples}) == len(samples)


def test_medqa_answer_idx_matches_the_answer_text():
    path = DATA / "medqa" / "questions" / "US" / "4_options" / "phrases_no_exclude_test.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    samples = read_medqa_jsonl(path)
    assert [s.choices[s.target] for s in samples] == [o["answer"] for o in raw]
    assert {s.category for s in samples} == {o["meta_info"] for o in raw}


def test_medmcqa_cop_is_one_based(tmp_path):
    path = DATA / "medmcqa" / "dev.json"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    samples = read_medmcqa_jsonl(path)
    for s, o in zip(samples, raw):
        assert s.choices[s.target] == o["op" + "abcd"[o["cop"] - 1]]
        assert s.id == f"medmcqa-{o['id']}" and s.category == o["subject_name"]
    # A copy that writes cop and id as other JSON types reads to the same items.
    retyped = tmp_path / "dev.json"
    retyped.write_text("".join(json.dumps({**o, "cop": str(o["cop"])}) + "\n" for o in raw))
    _same_items(read_medmcqa_jsonl(retyped), samples)
    retyped.write_text("".join(json.dumps({**o, "id": 7000 + i}) + "\n" for i, o in enumerate(raw)))
    assert [s.id for s in read_medmcqa_jsonl(retyped)] == [f"medmcqa-{7000 + i}" for i in range(len(raw))]


def test_pubmedqa_keeps_the_official_split_and_joins_the_abstract():
    full = read_pubmedqa_json(DATA / "pubmedqa" / "ori_pqal.json")
    test = read_pubmedqa_json(DATA / "pubmedqa" / "ori_pqal.json",
                              ids_file=DATA / "pubmedqa" / "test_ground_truth.json")
    gold = json.loads((DATA / "pubmedqa" / "test_ground_truth.json").read_text())
    assert len(full) == 6 and [s.id for s in test] == [f"pubmedqa-{k}" for k in gold]
    raw = json.loads((DATA / "pubmedqa" / "ori_pqal.json").read_text())
    for s in test:
        pmid = s.id.removeprefix("pubmedqa-")
        assert s.choices[s.target] == gold[pmid]
        assert s.passage == "\n".join(raw[pmid]["CONTEXTS"])


def test_headqa_ra_is_an_answer_id():
    samples = read_headqa_json(DATA / "headqa" / "HEAD_EN.json")
    raw = json.loads((DATA / "headqa" / "HEAD_EN.json").read_text())
    by_id = {f"headqa-{e}-{q['qid']}": q for e, ex in raw["exams"].items() for q in ex["data"]}
    assert len(samples) == len(by_id)
    for s in samples:
        q = by_id[s.id]  # as released: "ra": "3" names the answer whose "aid" is 3
        assert s.choices[s.target] == next(a["atext"] for a in q["answers"] if str(a["aid"]) == q["ra"])


def test_headqa_keys_are_read_by_value_whatever_their_json_type(tmp_path):
    """The release writes qid/ra as strings and aid as an integer, the hub copy integers
    throughout, a hand-made file may write strings everywhere: the same items either way."""
    raw = json.loads((DATA / "headqa" / "HEAD_EN.json").read_text())
    released = read_headqa_json(DATA / "headqa" / "HEAD_EN.json")
    for cast_q, cast_a in ((int, int), (str, str), (lambda v: f" {v} ", int)):
        for exam in raw["exams"].values():
            for q in exam["data"]:
                q["qid"], q["ra"] = cast_q(int(q["qid"])), cast_q(int(q["ra"]))
                for a in q["answers"]:
                    a["aid"] = cast_a(int(a["aid"]))
        (tmp_path / "h.json").write_text(json.dumps(raw))
        _same_items(read_headqa_json(tmp_path / "h.json"), released)


# The JSON types of each published file, measured on the releases (MMLU, MedMCQA dev, PubMedQA
# PQA-L from their published files; MedQA US 4_options and HEAD-QA EN as their releases write
# them). The fixtures must keep them, so the readers are tested on what users bring.
def _types(obj: dict) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in obj.items()}


def test_fixtures_copy_the_published_json_types():
    rows = list(csv.reader((DATA / "mmlu_medical" / "college_medicine_test.csv").open(newline="")))
    assert any("\n" in r[0] for r in rows) and any("," in c for r in rows for c in r[1:5])  # quoted fields

    for line in (DATA / "medqa" / "questions" / "US" / "4_options" / "phrases_no_exclude_test.jsonl").read_text().splitlines():
        o = json.loads(line)
        assert _types(o) == {"question": "str", "answer": "str", "options": "dict", "meta_info": "str",
                             "answer_idx": "str", "metamap_phrases": "list"}
        assert all(isinstance(v, str) for v in [*o["options"].values(), *o["metamap_phrases"]])

    seen: dict[str, set[str]] = {}
    for line in (DATA / "medmcqa" / "dev.json").read_text().splitlines():
        for k, t in _types(json.loads(line)).items():
            seen.setdefault(k, set()).add(t)
    assert seen == {"question": {"str"}, "exp": {"NoneType", "str"}, "cop": {"int"}, "opa": {"str"},
                    "opb": {"str"}, "opc": {"str"}, "opd": {"str"}, "subject_name": {"str"},
                    "topic_name": {"NoneType", "str"}, "id": {"str"}, "choice_type": {"str"}}

    pqal = json.loads((DATA / "pubmedqa" / "ori_pqal.json").read_text())
    assert all(k.isdigit() for k in pqal)
    years = {type(v["YEAR"]).__name__ for v in pqal.values()}
    assert years == {"str", "NoneType"}
    assert {k: t for k, t in _types(next(iter(pqal.values()))).items() if k != "YEAR"} == {
        "QUESTION": "str", "CONTEXTS": "list", "LABELS": "list", "MESHES": "list",
        "reasoning_required_pred": "str", "reasoning_free_pred": "str", "final_decision": "str",
        "LONG_ANSWER": "str"}
    gold = json.loads((DATA / "pubmedqa" / "test_ground_truth.json").read_text())
    assert all(isinstance(v, str) for v in gold.values())

    headqa = json.loads((DATA / "headqa" / "HEAD_EN.json").read_text())
    for exam in headqa["exams"].values():
        assert isinstance(exam["year"], str)
        for q in exam["data"]:
            assert isinstance(q["qid"], str) and isinstance(q["ra"], str)  # "ra": "2" as released
            assert all(isinstance(a["aid"], int) for a in q["answers"])


def test_mmlu_reads_quoted_fields_across_lines():
    samples = read_mmlu_csv(DATA / "mmlu_medical" / "college_medicine_test.csv")
    assert len(samples) == 4
    multi = next(s for s in samples if "\n" in s.question)
    assert multi.choices[multi.target] == "Nephron" and multi.choices[3] == "Sarcomere, a muscle unit"


def test_open_medical_suite_loads_every_task_with_lm_eval_prompts():
    ids = suite_tasks("open-medical")
    assert len(ids) == 9 and {"medqa", "medmcqa", "pubmedqa"} <= set(ids)
    reg = _registry()
    for tid in ids:
        task = reg.load(tid)
        ctx, conts = render_prompt(task.spec, task.samples[0])
        assert ctx.endswith("\nAnswer:")
        if tid.startswith("mmlu_"):
            subject = tid.removeprefix("mmlu_").replace("_", " ")
            assert ctx.startswith(f"The following are multiple choice questions (with answers) about {subject}.\n\n")
            assert conts == [" A", " B", " C", " D"]
        if tid == "medmcqa":
            assert ctx.startswith("Question: ") and "\nChoices:\nA. " in ctx
        if tid == "pubmedqa":
            assert ctx == f"Abstract: {task.samples[0].passage}\nQuestion: {task.samples[0].question}\nAnswer:"
            assert conts == [" yes", " no", " maybe"]


def test_content_hash_follows_the_data(tmp_path):
    shutil.copytree(DATA, tmp_path / "d")
    before = _registry(tmp_path / "d").load("mmlu_anatomy").content_hash
    assert _registry(tmp_path / "d").load("mmlu_anatomy").content_hash == before
    f = tmp_path / "d" / "mmlu_medical" / "anatomy_test.csv"
    f.write_text(f.read_text().replace("Fibula", "Fibula bone", 1))
    assert _registry(tmp_path / "d").load("mmlu_anatomy").content_hash != before


def test_missing_data_dir_and_file_name_the_fix(tmp_path):
    with pytest.raises(MissingData, match="--data-dir DIR"):
        _registry(None).load("medqa")
    with pytest.raises(MissingData, match=r"phrases_no_exclude_test.jsonl does not exist"):
        _registry(tmp_path).load("medqa")
    loaded, skipped = load_tasks(["medqa", "mmlu_anatomy"], roots=[resource_dir("tasks")],
                                 data_dir=_only(tmp_path, "mmlu_medical"), skip_missing_data=True)
    assert [t.spec.id for t in loaded] == ["mmlu_anatomy"] and "medqa" in skipped[0]
    with pytest.raises(MissingData, match="--skip-missing-data"):
        load_tasks(["medqa"], roots=[resource_dir("tasks")], data_dir=tmp_path)


def _only(tmp_path: Path, folder: str) -> Path:
    shutil.copytree(DATA / folder, tmp_path / "only" / folder)
    return tmp_path / "only"


def _broken(tmp_path: Path, rel: str, text: str) -> Path:
    shutil.copytree(DATA, tmp_path / "d")
    (tmp_path / "d" / rel).write_text(text)
    if rel == "pubmedqa/ori_pqal.json" and text.startswith("{"):  # keep the split consistent
        (tmp_path / "d" / "pubmedqa" / "test_ground_truth.json").write_text(
            json.dumps({k: "yes" for k in json.loads(text)}))
    return tmp_path / "d"


@pytest.mark.parametrize("task,rel,text,match", [
    ("mmlu_anatomy", "mmlu_medical/anatomy_test.csv", "q,a,b,c,d,A\nq2,a,b,c,d\n", r"anatomy_test.csv line 2: expected 6 columns"),
    ("mmlu_anatomy", "mmlu_medical/anatomy_test.csv", "q,a,b,c,d,E\n", r"line 1: answer 'E' must be one of A, B, C, D"),
    ("medqa", "medqa/questions/US/4_options/phrases_no_exclude_test.jsonl",
     '{"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}\n{"question": "q"\n', r"line 2: not valid JSON"),
    ("medqa", "medqa/questions/US/4_options/phrases_no_exclude_test.jsonl",
     '{"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "C"}\n', r"line 1: 'answer_idx' 'C' is not one of the option letters A, B"),
    ("medqa", "medqa/questions/US/4_options/phrases_no_exclude_test.jsonl",
     '{"question": "q", "options": ["a", "b"], "answer_idx": "A"}\n', r"line 1: 'options' must map letters"),
    ("medmcqa", "medmcqa/dev.json",
     '{"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": -1}\n', r"line 1: 'cop' must be 1, 2, 3 or 4.*use dev.json"),
    ("medmcqa", "medmcqa/dev.json", '{"question": "q", "opa": "a", "opb": "b", "opc": "c", "cop": 1}\n', r"line 1: field 'opd' must be a string, got nothing"),
    ("pubmedqa", "pubmedqa/ori_pqal.json", '{"90000002": {"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "perhaps"}}',
     r"ori_pqal.json key 90000002: 'final_decision' must be yes, no or maybe"),
    ("pubmedqa", "pubmedqa/ori_pqal.json", '[1, 2]', r"expected a JSON object keyed by PMID"),
    ("pubmedqa", "pubmedqa/test_ground_truth.json", '{"12345": "yes"}', r"PMID 12345 \(1 in all\) is not in"),
    ("headqa_en", "headqa/HEAD_EN.json", '{"exams": {"X": {"data": [{"qtext": "q", "ra": 9, "answers": [{"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}]}]}}}',
     r"key exams.X.data\[0\]: 'ra' 9 is not the aid of any answer"),
    ("headqa_en", "headqa/HEAD_EN.json", '{"exams": {"X": {"data": [{"qtext": "q", "ra": "9", "answers": [{"aid": 1, "atext": "a"}, {"aid": 2, "atext": "b"}]}]}}}',
     r"key exams.X.data\[0\]: 'ra' '9' is not the aid of any answer \(1, 2\)"),
    ("headqa_en", "headqa/HEAD_EN.json", '{"exams": {"X": {"data": [{"qtext": "q", "ra": "1", "answers": [{"aid": 1, "atext": "a"}, {"aid": "1", "atext": "b"}]}]}}}',
     r"key exams.X.data\[0\]: every answer needs its own 'aid'"),
    ("medmcqa", "medmcqa/dev.json",
     '{"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": "5"}\n', r"line 1: 'cop' must be 1, 2, 3 or 4 \(1 = opa\), got '5'"),
    ("medqa", "medqa/questions/US/4_options/phrases_no_exclude_test.jsonl",
     '{"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": ["A"]}\n', r"line 1: 'answer_idx' a list is not one of the option letters A, B"),
])
def test_malformed_files_fail_with_file_and_place(tmp_path, task, rel, text, match):
    data = _broken(tmp_path, rel, text)
    with pytest.raises(QevalInputError, match=match) as err:
        _registry(data).load(task)
    assert str(data / rel) in str(err.value) and "\n" not in str(err.value)


def test_data_dir_from_flag_env_and_config(tmp_path, monkeypatch):
    monkeypatch.delenv("QEVAL_DATA_DIR", raising=False)
    assert data_dir_from(None) is None  # configs/data.yaml ships with data_dir: null
    assert data_dir_from(DATA) == DATA.resolve()
    monkeypatch.setenv("QEVAL_DATA_DIR", str(tmp_path))
    assert data_dir_from(None) == tmp_path.resolve()
    assert data_dir_from(DATA) == DATA.resolve()  # the flag wins
    monkeypatch.setenv("QEVAL_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(QevalInputError, match="from QEVAL_DATA_DIR"):
        data_dir_from(None)


@pytest.mark.parametrize("args,match", [
    (["--suite", "open-medical"], "none is set"),
    (["--suite", "open-medical", "--data-dir", "/no/such/dir"], "data directory /no/such/dir (from --data-dir) does not exist"),
])
def test_cli_without_data_is_one_line_exit_2(tmp_path, monkeypatch, args, match):
    monkeypatch.delenv("QEVAL_DATA_DIR", raising=False)
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", "--out", str(out), *args])
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and match in lines[0], res.output
    assert not out.exists()


def test_tasks_lists_benchmark_item_counts():
    res = runner.invoke(app, ["tasks", "--data-dir", str(DATA)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("medmcqa "))
    assert f" {len((DATA / 'medmcqa' / 'dev.json').read_text().splitlines())} items" in line
    assert "suite open-medical" in res.output


@pytest.mark.model
def test_open_medical_suite_runs_offline_on_the_default_model(tmp_path):
    """The done-when of the benchmark adapters: the whole suite from files in the original formats,
    on the embedded model, with a real candidate; no benchmark text in the run directory."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torchao")
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("QEVAL_DATA_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "qeval.cli", "compare", "--suite", "open-medical",
                           "--data-dir", str(DATA), "--base", "fp32", "--candidates", "int8wo",
                           "--n-boot", "500", "--no-efficiency", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    reg = _registry()
    expected = {tid: reg.load(tid) for tid in suite_tasks("open-medical")}
    got = {c["task"]: c for c in results["comparisons"]}
    assert set(got) == set(expected)
    for tid, c in got.items():
        assert c["n"] == len(expected[tid].samples)
        assert c["flips_correct_to_wrong"] + c["flips_wrong_to_correct"] <= c["n"]
    # A handful of items per task cannot support a verdict: never a silent GO.
    assert results["verdict"] != "GO" and results["skipped_tasks"] == []
    blob = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    for task in expected.values():
        for s in task.samples:
            assert s.question not in blob and (not s.passage or s.passage not in blob)


def _same_items(a, b):
    assert [(s.id, s.question, s.choices, s.target, s.passage) for s in a] == \
           [(s.id, s.question, s.choices, s.target, s.passage) for s in b]


def test_hub_copies_convert_back_to_the_original_formats(tmp_path):
    """--from-hub rows (in each hub copy's own schema, built here from the fixtures) become the
    published format again and read to the same samples as the local file."""
    from qeval.tasks.sources import FROM_HUB

    def roundtrip(fmt, rows, name, reader, **kw):
        f = tmp_path / name
        f.write_text(FROM_HUB[fmt](rows))
        return reader(f, **kw)

    local = read_mmlu_csv(DATA / "mmlu_medical" / "anatomy_test.csv")
    rows = [{"question": s.question, "subject": "anatomy", "choices": list(s.choices), "answer": s.target}
            for s in local]
    _same_items(roundtrip("mmlu_csv", rows, "anatomy_test.csv", read_mmlu_csv), local)

    path = DATA / "medmcqa" / "dev.json"
    rows = [{**json.loads(l), "cop": json.loads(l)["cop"] - 1} for l in path.read_text().splitlines()]
    _same_items(roundtrip("medmcqa_jsonl", rows, "m.jsonl", read_medmcqa_jsonl), read_medmcqa_jsonl(path))

    raw = json.loads((DATA / "pubmedqa" / "ori_pqal.json").read_text())
    rows = [{"pubid": int(k), "question": v["QUESTION"], "context": {"contexts": v["CONTEXTS"]},
             "final_decision": v["final_decision"]} for k, v in raw.items()]
    _same_items(roundtrip("pubmedqa_json", rows, "p.json", read_pubmedqa_json),
                read_pubmedqa_json(DATA / "pubmedqa" / "ori_pqal.json"))

    raw = json.loads((DATA / "headqa" / "HEAD_EN.json").read_text())
    rows = [{"name": name, "category": e["category"], **q} for name, e in raw["exams"].items() for q in e["data"]]
    _same_items(roundtrip("headqa_json", rows, "h.json", read_headqa_json),
                read_headqa_json(DATA / "headqa" / "HEAD_EN.json"))


def test_without_from_hub_nothing_is_fetched(tmp_path, monkeypatch):
    import qeval.tasks.sources as sources

    def no_network(*a, **k):
        raise AssertionError("fetched from the hub without --from-hub")

    monkeypatch.setattr(sources, "fetch_from_hub", no_network)
    with pytest.raises(MissingData, match="--from-hub"):
        _registry(tmp_path).load("medmcqa")
    # With it, a missing local file would be fetched; a present one is read locally.
    assert len(TaskRegistry([resource_dir("tasks")], DATA, from_hub=True).load("medmcqa").samples) == 6
