"""The lm-eval bridge: lm-eval's own registry and request builder, qeval's samples and scoring.

Offline: the tasks are custom lm-eval YAMLs over a JSONL file of invented clinical questions,
written into a temporary directory; nothing comes from the Hugging Face hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before lm_eval imports datasets (it reads them once)
os.environ["HF_HUB_OFFLINE"] = "1"
lm_eval = pytest.importorskip("lm_eval")
yaml = pytest.importorskip("yaml")

from qeval.engines.fake import FakeBackend  # noqa: E402
from qeval.errors import QevalInputError  # noqa: E402
from qeval.tasks.lmeval import _task_manager, load_lmeval_task  # noqa: E402
from qeval.kinds.choice import build_requests, score_items  # noqa: E402
from qeval.types import Method, VariantSpec  # noqa: E402

ITEMS = [
    {"q": "Which electrolyte disturbance classically causes peaked T waves on an ECG?",
     "opts": ["Hyponatraemia", "Hyperkalaemia", "Hypocalcaemia", "Hypermagnesaemia"], "gold": 1},
    {"q": "What is the first-line drug for anaphylaxis in adults?",
     "opts": ["Intramuscular adrenaline", "Oral cetirizine", "IV hydrocortisone", "Inhaled salbutamol"],
     "gold": 0},
    {"q": "Which vitamin deficiency causes Wernicke encephalopathy?",
     "opts": ["Vitamin B12", "Folate", "Thiamine", "Vitamin D"], "gold": 2},
    {"q": "Which antibiotic class is associated with tendon rupture?",
     "opts": ["Macrolides", "Penicillins", "Tetracyclines", "Fluoroquinolones"], "gold": 3},
    {"q": "A fasting plasma glucose at or above which value (mmol/L) suggests diabetes?",
     "opts": ["5.6", "6.1", "7.0", "11.1"], "gold": 2},
    {"q": "Which organism most often causes community-acquired pneumonia?",
     "opts": ["Streptococcus pneumoniae", "Pseudomonas aeruginosa", "Legionella pneumophila",
              "Staphylococcus aureus"], "gold": 0},
]
DESCRIPTION = "The following are clinical questions.\n\n"
MC_TASK = "qeval_test_clin_mcq"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")


def _task_yaml(directory: Path, name: str, data: Path, **fields) -> None:
    config = {
        "task": name,
        "dataset_path": "json",
        # force_redownload: the 6-line file is rebuilt on every load, so an edited item is seen
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(directory / "hf-cache"),
                           "download_mode": "force_redownload"},
        "test_split": "test",
        **fields,
    }
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory) -> Path:
    """One directory of task YAMLs for the whole module: lm-eval indexes it once."""
    root = tmp_path_factory.mktemp("lmeval_tasks")
    data = root / "clinical_mcq.jsonl"
    _write_jsonl(data, ITEMS)
    _task_yaml(root, MC_TASK, data, output_type="multiple_choice", description=DESCRIPTION,
               doc_to_text="Question: {{q}}\nA. {{opts[0]}}\nB. {{opts[1]}}\nC. {{opts[2]}}\n"
                           "D. {{opts[3]}}\nAnswer:",
               doc_to_choice=["A", "B", "C", "D"], doc_to_target="gold",
               metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    _task_yaml(root, "qeval_test_clin_loglik", data, output_type="loglikelihood",
               doc_to_text="Question: {{q}}\nAnswer:", doc_to_target=" {{opts[gold]}}")
    _task_yaml(root, "qeval_test_clin_gen", data, output_type="generate_until",
               doc_to_text="Question: {{q}}\nAnswer:", doc_to_target="{{opts[gold]}}",
               generation_kwargs={"until": ["\n\n", "Question:"], "max_gen_toks": 24, "do_sample": False},
               filter_list=[{"name": "strict", "filter": [
                   {"function": "regex", "regex_pattern": r"answer is (\w+)"},
                   {"function": "take_first"}]}],
               metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}])
    _task_yaml(root, "qeval_test_clin_sampled", data, output_type="generate_until",
               doc_to_text="Question: {{q}}\nAnswer:", doc_to_target="{{opts[gold]}}",
               generation_kwargs={"until": ["\n"], "do_sample": True, "temperature": 0.7})
    return root


def _lm_eval_requests(include_dir: Path, name: str) -> list:
    """lm-eval's own requests for the task, built straight from its task object."""
    lm_task = _task_manager(include_dir).load(name)["tasks"][name]
    lm_task.build_all_requests()
    return lm_task.instances


def test_samples_carry_lm_evals_requests_verbatim(include_dir):
    task = load_lmeval_task(MC_TASK, include_path=include_dir)
    assert task.spec.id == f"lm-eval:{MC_TASK}"
    assert task.spec.kind == "multiple_choice" and task.spec.choice_score == "sum"
    assert task.spec.source.format == "lm_eval" and task.spec.source.path == MC_TASK
    assert len(task.samples) == len(ITEMS)

    instances = _lm_eval_requests(include_dir, MC_TASK)
    for doc_id, sample in enumerate(task.samples):
        mine = sorted((i for i in instances if i.doc_id == doc_id), key=lambda i: i.idx)
        assert [i.arguments for i in mine] == [(sample.prompt_text, c) for c in sample.continuations]
        assert sample.target == ITEMS[doc_id]["gold"]
        assert sample.choices == ("A", "B", "C", "D") and sample.question == ""
        assert sample.id == f"{MC_TASK}-{doc_id:06d}"

    first = task.samples[0]  # lm-eval's assembly, spelled out: description + doc_to_text, " " + choice
    item = ITEMS[0]
    assert first.prompt_text == (DESCRIPTION + f"Question: {item['q']}\n" + "".join(
        f"{letter}. {opt}\n" for letter, opt in zip("ABCD", item["opts"])) + "Answer:")
    assert first.continuations == (" A", " B", " C", " D")


def test_limit_takes_the_first_documents(include_dir):
    full = load_lmeval_task(MC_TASK, include_path=include_dir)
    cut = load_lmeval_task(MC_TASK, include_path=include_dir, limit=2)
    assert cut.samples == full.samples[:2]
    assert cut.content_hash != full.content_hash


def test_content_hash_is_stable_and_follows_the_items(include_dir):
    first = load_lmeval_task(MC_TASK, include_path=include_dir)
    again = load_lmeval_task(MC_TASK, include_path=include_dir)
    assert first.content_hash == again.content_hash
    assert [s.id for s in first.samples] == [s.id for s in again.samples]

    data = include_dir / "clinical_mcq.jsonl"
    edited = [dict(i) for i in ITEMS]
    edited[3] = {**edited[3], "opts": ["Macrolides", "Penicillins", "Tetracyclines", "Quinolones"]}
    try:
        _write_jsonl(data, edited)
        changed = load_lmeval_task(MC_TASK, include_path=include_dir)
    finally:
        _write_jsonl(data, ITEMS)
    assert changed.content_hash != first.content_hash
    assert changed.samples[3].prompt_text != first.samples[3].prompt_text
    assert changed.samples[:3] == first.samples[:3]


def test_bridged_task_scores_end_to_end_on_the_fake_backend(include_dir):
    task = load_lmeval_task(MC_TASK, include_path=include_dir)
    backend = FakeBackend(VariantSpec(name="fake", method=Method.fake, backend="fake",
                                      params={"skill": 1.0}),
                          answer_key={s.id: s.target for s in task.samples},
                          n_choices={s.id: len(s.choices) for s in task.samples})
    items = build_requests(task, backend.tokenize)
    # qeval tokenises exactly lm-eval's text (the fake tokenizer's ids are the UTF-8 bytes)
    assert bytes(items[0].requests[0].context) == task.samples[0].prompt_text.encode()
    assert bytes(items[0].requests[1].continuation) == b" B"
    records = score_items(task, items, backend)
    assert [r.sample_id for r in records] == [s.id for s in task.samples]
    assert [r.target for r in records] == [i["gold"] for i in ITEMS]
    assert all(r.correct for r in records)  # skill 1: the fake model always prefers the key
    assert all(len(r.choice_logprobs) == 4 for r in records)


def test_generate_until_maps_to_a_generate_task(include_dir):
    task = load_lmeval_task("qeval_test_clin_gen", include_path=include_dir)
    assert task.spec.kind == "generate"
    assert task.spec.generation.stop == ("\n\n", "Question:")
    assert task.spec.generation.max_tokens == 24
    assert task.spec.generation.answer_pattern == r"answer is (\w+)"
    sample = task.samples[2]
    assert sample.prompt_text == f"Question: {ITEMS[2]['q']}\nAnswer:"
    assert sample.answers == ("Thiamine",) and sample.target == -1 and sample.choices == ()


def test_sampled_generation_is_refused(include_dir):
    with pytest.raises(QevalInputError, match="greedily"):
        load_lmeval_task("qeval_test_clin_sampled", include_path=include_dir)


def test_unsupported_output_type_is_one_clear_error(include_dir):
    with pytest.raises(QevalInputError, match="output_type 'loglikelihood'.*supported: multiple_choice"):
        load_lmeval_task("qeval_test_clin_loglik", include_path=include_dir)


def test_unknown_task_is_one_clear_error(include_dir):
    with pytest.raises(QevalInputError, match="unknown lm-eval task 'no_such_task_qeval'"):
        load_lmeval_task("no_such_task_qeval", include_path=include_dir)


def test_a_hub_dataset_offline_names_the_local_fix(include_dir):
    # medmcqa's dataset lives on the hub; offline it cannot load, and the message says what to do
    with pytest.raises(QevalInputError, match="medmcqa.*--lm-eval-include DIR"):
        load_lmeval_task("medmcqa", include_path=include_dir)


@pytest.mark.model
def test_compare_runs_an_lm_eval_task_on_a_quantized_candidate(include_dir, tmp_path):
    """`--tasks lm-eval:<task>` through the CLI: lm-eval renders, qeval's own backends score the
    baseline and an int8 weight-only candidate, pairs per document and gates."""
    import subprocess
    import sys

    pytest.importorskip("torchao")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "qeval.cli", "compare", "--tasks", f"lm-eval:{MC_TASK}",
                           "--lm-eval-include", str(include_dir), "--base", "fp32", "--candidates", "int8wo",
                           "--n-boot", "500", "--no-efficiency", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode in (1, 3), proc.stdout + proc.stderr  # 6 items: never GO
    results = json.loads((out / "results.json").read_text())
    (comp,) = results["comparisons"]
    assert comp["task"] == f"lm-eval:{MC_TASK}" and comp["n"] == len(ITEMS)
    assert 0 <= comp["flips_correct_to_wrong"] + comp["flips_wrong_to_correct"] <= len(ITEMS)
    assert comp["verdict"] != "GO"
    blob = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert all(i["q"] not in blob for i in ITEMS)  # hashes and scores only
