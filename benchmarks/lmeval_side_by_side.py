"""lm-eval and qeval on the same model and the same local data, item by item.

lm-eval runs its own `hf` model class (HFLM, float32, CPU) on its registered task config with only
the dataset swapped to a temporary JSONL converted from the original benchmark file; qeval runs
its fp32 HF backend on its own task (tasks/open_medical, read by qeval/tasks/sources.py from the same
file). Items are paired by id (the converter gives each lm-eval document qeval's sample id).
Reported per task: items, prompts identical (lm-eval's request strings vs qeval's rendering),
token ids identical (lm-eval's `_encode_pair` vs qeval's split), chosen-answer agreement, the
largest |Δ log-prob| over every choice of every item, and both accuracies (lm-eval's own
aggregated `acc`). Goal: identical choices and |Δ| ≤ 1e-4 in float32.

No benchmark text is written into the project: the converted JSONL lives in a temporary
directory, and the results file holds numbers only.

    .venv/bin/python benchmarks/lmeval_side_by_side.py --tasks mmlu_anatomy,pubmedqa --limit 100
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # everything is local; never reach the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pydantic import BaseModel, ConfigDict  # noqa: E402

from qeval.settings import resource_dir  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
from qeval.errors import QevalInputError  # noqa: E402
from qeval.model_source import resolve_model  # noqa: E402
from qeval.kinds.choice import build_requests, render_prompt, score_items  # noqa: E402
from qeval.tasks.registry import TaskRegistry, first_n  # noqa: E402
from qeval.types import ItemRecord, Method, Task, VariantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("results_lmeval_side_by_side.md")
DEFAULT_TASKS = "mmlu_anatomy,mmlu_medical_genetics,pubmedqa,medmcqa"
MMLU_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                 "medical_genetics", "professional_medicine")
TOLERANCE = 1e-4

# qeval task id → lm-eval task name
LMEVAL_NAME = {**{f"mmlu_{s}": f"mmlu_{s}" for s in MMLU_SUBJECTS},
               "medmcqa": "medmcqa", "pubmedqa": "pubmedqa", "medqa": "medqa_4options"}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, ...]
    limit: int | None
    data_dir: Path
    batch_size: int
    model: str


# ---------------------------------------------------------------- original files → lm-eval's HF schemas
# Written from the files' published formats (not through qeval's readers), so a reader bug in
# qeval shows up as a prompt or answer mismatch here. Each yields (qeval sample id, document).

Docs = Iterator[tuple[str, dict]]


def mmlu_docs(data_dir: Path, subject: str) -> Docs:
    """cais/mmlu schema: question, subject, choices[4], answer (int)."""
    path = data_dir / "mmlu_medical" / f"{subject}_test.csv"
    rows = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines(keepends=True)) if r]
    for i, row in enumerate(rows):
        yield f"{subject}-{i:04d}", {"question": row[0], "subject": subject, "choices": row[1:5],
                                     "answer": "ABCD".index(row[5].strip())}


def medmcqa_docs(data_dir: Path) -> Docs:
    """openlifescienceai/medmcqa schema: cop is 0-based there (1-based in the original dev.json)."""
    for line in (data_dir / "medmcqa" / "dev.json").read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            yield f"medmcqa-{d['id']}", {"id": d["id"], "question": d["question"], "opa": d["opa"],
                                         "opb": d["opb"], "opc": d["opc"], "opd": d["opd"],
                                         "cop": d["cop"] - 1}


def pubmedqa_docs(data_dir: Path) -> Docs:
    """bigbio pubmed_qa_labeled_fold0_source schema (QUESTION, CONTEXTS, final_decision, ...);
    its test split is the 500 PMIDs of test_ground_truth.json."""
    folder = data_dir / "pubmedqa"
    data = json.loads((folder / "ori_pqal.json").read_text(encoding="utf-8"))
    test = json.loads((folder / "test_ground_truth.json").read_text(encoding="utf-8"))
    for pmid in test:
        d = data[pmid]
        yield f"pubmedqa-{pmid}", {"QUESTION": d["QUESTION"], "CONTEXTS": d["CONTEXTS"],
                                   "LABELS": d.get("LABELS", []), "MESHES": d.get("MESHES", []),
                                   "YEAR": d.get("YEAR", ""), "reasoning_required_pred": "",
                                   "reasoning_free_pred": "", "final_decision": d["final_decision"],
                                   "LONG_ANSWER": d.get("LONG_ANSWER", "")}


def medqa_docs(data_dir: Path) -> Docs:
    """GBaker/MedQA-USMLE-4-options-hf schema: sent1, ending0..3, label (int)."""
    path = data_dir / "medqa" / "questions" / "US" / "4_options" / "phrases_no_exclude_test.jsonl"
    n = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        n += 1
        if line.strip():
            d = json.loads(line)
            letters = sorted(d["options"])
            yield f"medqa-{n:05d}", {"sent1": d["question"], "sent2": "",
                                     **{f"ending{i}": d["options"][k] for i, k in enumerate(letters)},
                                     "label": letters.index(d["answer_idx"])}


def converter(task_id: str) -> Callable[[Path], Docs]:
    if task_id.startswith("mmlu_"):
        return lambda d: mmlu_docs(d, task_id.removeprefix("mmlu_"))
    return {"medmcqa": medmcqa_docs, "pubmedqa": pubmedqa_docs, "medqa": medqa_docs}[task_id]


# ---------------------------------------------------------------- lm-eval side


def lmeval_config(manager, name: str, data_file: Path, cache: Path) -> dict:
    """lm-eval's registered config for `name` with only its dataset swapped to a local JSONL
    (as the split it evaluates); doc_to_text, choices, target and metrics stay lm-eval's own."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(manager.task_index[name].yaml_path, resolve_func=True)
    split = cfg["test_split"]
    cfg.update(dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {split: str(data_file)}, "cache_dir": str(cache)},
               # the local file has only the evaluated split; zero-shot never reads the others
               training_split=None, fewshot_split=None,
               validation_split=split if cfg.get("validation_split") == split else None)
    cfg.pop("fewshot_config", None)
    return cfg


@dataclass
class LmEvalItem:
    lls: list[float]
    context: str
    continuations: list[str]


def run_lmeval(lm, manager, name: str, docs: list[tuple[str, dict]], tmp: Path
               ) -> tuple[dict[str, LmEvalItem], float]:
    import lm_eval

    data_file = tmp / f"{name}.jsonl"
    data_file.write_text("".join(json.dumps({**doc, "qeval_id": sid}, ensure_ascii=False) + "\n"
                                 for sid, doc in docs), encoding="utf-8")
    cfg = lmeval_config(manager, name, data_file, tmp / "hf-cache")
    out = lm_eval.simple_evaluate(model=lm, tasks=[cfg], task_manager=manager, log_samples=True,
                                  bootstrap_iters=0)
    items = {}
    for s in out["samples"][name]:
        items[s["doc"]["qeval_id"]] = LmEvalItem(
            lls=[float(r[0]) for r in s["filtered_resps"]], context=s["arguments"][0][0],
            continuations=[a[1] for a in s["arguments"]])
    return items, float(out["results"][name]["acc,none"])


# ---------------------------------------------------------------- qeval side


def qeval_task(task_id: str, data_dir: Path, limit: int | None) -> Task:
    return first_n(TaskRegistry([resource_dir("tasks")], data_dir=data_dir).load(task_id), limit)


# ---------------------------------------------------------------- comparison


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    lmeval_task: str
    items: int
    same_prompt: int
    same_tokens: int
    same_choice: int
    max_abs_delta: float
    acc_qeval: float
    acc_lmeval: float  # lm-eval's own aggregated acc
    seconds_qeval: float
    seconds_lmeval: float


def compare_task(task_id: str, opts: Options, backend, lm, manager, tmp: Path) -> Row:
    name = LMEVAL_NAME[task_id]
    task = qeval_task(task_id, opts.data_dir, opts.limit)
    by_id = dict(converter(task_id)(opts.data_dir))
    missing = [s.id for s in task.samples if s.id not in by_id]
    if missing:
        raise QevalInputError(f"{task_id}: qeval item {missing[0]} ({len(missing)} in all) has no "
                              "document in the converted file; the id schemes disagree")
    docs = [(s.id, by_id[s.id]) for s in task.samples]

    t0 = time.perf_counter()
    items = build_requests(task, backend.tokenize)
    records: list[ItemRecord] = score_items(task, items, backend)
    t_qeval = time.perf_counter() - t0

    t0 = time.perf_counter()
    theirs, acc_reported = run_lmeval(lm, manager, name, docs, tmp)
    t_lmeval = time.perf_counter() - t0

    same_prompt = same_tokens = same_choice = 0
    max_delta = 0.0
    for sample, it, rec in zip(task.samples, items, records):
        other = theirs[sample.id]
        context, conts = render_prompt(task.spec, sample)
        same_prompt += (context, conts) == (other.context, other.continuations)
        ids = [lm._encode_pair(other.context, c) for c in other.continuations]
        same_tokens += ids == [(list(r.context), list(r.continuation)) for r in it.requests]
        lm_pred = max(range(len(other.lls)), key=lambda i: (other.lls[i], -i))  # np.argmax's tie rule
        same_choice += lm_pred == rec.prediction
        for a, b in zip(other.lls, rec.choice_logprobs):
            max_delta = max(max_delta, abs(a - b) if math.isfinite(a) else math.inf)
    n = len(task.samples)
    return Row(task=task_id, lmeval_task=name, items=n, same_prompt=same_prompt,
               same_tokens=same_tokens, same_choice=same_choice, max_abs_delta=max_delta,
               acc_qeval=sum(r.correct for r in records) / n,
               acc_lmeval=acc_reported, seconds_qeval=t_qeval, seconds_lmeval=t_lmeval)


NOTES = """\
Columns: *same prompt* compares lm-eval's request strings (context, each continuation) with
qeval's rendering of its own task; *same token ids* compares lm-eval's `HFLM._encode_pair` with
qeval's context/continuation split; *same choice* is the argmax of summed log-probs on each side
(lm-eval's `acc`); *max |Δ log-prob|* is over every choice of every item; *acc lm-eval* is lm-eval's own
aggregated `acc`. Times are wall-clock seconds on a shared 2-core machine (other
jobs running), not a speed comparison.

Both sides tokenise identically (no BOS on either: lm-eval's `add_bos_token=None` keeps the
tokenizer's default, which adds no special tokens for SmolLM2; qeval uses
`add_special_tokens=False`) and nothing is truncated (contexts are far below the 8192-token
limit). What remains is float32 rounding from different batch shapes: lm-eval right-pads with
token 0 and no attention mask and projects every position onto the vocabulary; qeval right-pads
with an attention mask, sorts its batches by length and projects only the positions that
predict a continuation token (`logits_to_keep`). Different GEMM shapes sum in a different order,
which moves log-probs by ~1e-5."""


def markdown(rows: list[Row], opts: Options, header: dict[str, str]) -> str:
    lines = ["# lm-eval vs qeval, item by item (same model, same local data)", "",
             "Produced by `benchmarks/lmeval_side_by_side.py` "
             f"(`--tasks {','.join(opts.tasks)} --limit {opts.limit} --batch-size {opts.batch_size}`).", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| task (qeval / lm-eval) | items | same prompt | same token ids | same choice | "
              "max \\|Δ log-prob\\| | acc qeval | acc lm-eval | time qeval / lm-eval (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.task} / {r.lmeval_task} | {r.items} | {r.same_prompt}/{r.items} | "
            f"{r.same_tokens}/{r.items} | {r.same_choice}/{r.items} | {r.max_abs_delta:.2e} | "
            f"{r.acc_qeval:.3f} | {r.acc_lmeval:.3f} | {r.seconds_qeval:.0f} / {r.seconds_lmeval:.0f} |")
    ok = all(r.same_choice == r.items and r.max_abs_delta <= TOLERANCE for r in rows)
    verdict = "met on every task" if ok else "NOT met (see the rows above)"
    lines += ["", f"Goal (identical choices, max |Δ| ≤ {TOLERANCE:g}): {verdict}.", "", NOTES, ""]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"qeval task ids (default {DEFAULT_TASKS})")
    p.add_argument("--limit", type=int, default=100, help="first N items per task (0: all)")
    p.add_argument("--data-dir", type=Path, default=PROJECT_ROOT.parent / "shared" / "data")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", default="smollm2-135m")
    a = p.parse_args(argv)
    tasks = tuple(t.strip() for t in a.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in LMEVAL_NAME]
    if unknown:
        p.error(f"no lm-eval counterpart for {', '.join(unknown)}; choose from {', '.join(LMEVAL_NAME)}")
    return Options(tasks=tasks, limit=a.limit or None, data_dir=a.data_dir.resolve(),
                   batch_size=a.batch_size, model=a.model)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from qeval.engines.hf import HFFactory

    torch.manual_seed(0)
    model = resolve_model(opts.model)
    backend = HFFactory(model, device="cpu", batch_size=opts.batch_size).open(
        VariantSpec(name="fp32", method=Method.fp32), None)
    lm = HFLM(pretrained=str(model.path), dtype="float32", device="cpu", batch_size=opts.batch_size)
    manager = TaskManager()
    header = {
        "model": f"{opts.model} ({model.source}; fingerprint {model.fingerprint[:16]})",
        "device / dtype": f"cpu, float32 on both sides (qeval: {backend.info.compute_dtype})",
        "versions": f"lm_eval {lm_eval.__version__}, torch {torch.__version__}, "
                    f"transformers {transformers.__version__}",
        "threads": str(torch.get_num_threads()),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="qeval-lmeval-") as tmp:
        for task_id in opts.tasks:
            row = compare_task(task_id, opts, backend, lm, manager, Path(tmp))
            print(f"{task_id}: {row.same_choice}/{row.items} same choice, max |Δ| "
                  f"{row.max_abs_delta:.2e}", file=sys.stderr)
            rows.append(row)
    backend.close()
    text = markdown(rows, opts, header)
    print(text)
    RESULTS.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QevalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
