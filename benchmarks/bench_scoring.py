"""Scoring speed: qeval against lm-eval's `hf` backend, same run, same model, dtype and data.

Both sides load the default model (SmolLM2-135M-Instruct, materialised as an HF checkpoint by
`qeval.model_source.resolve_model`) in the same dtype and batch size, in this one process (so with the
same torch threads), and score the same items of the original benchmark files in two prompt
formats:

- **letter**: the options listed A./B./..., " A", " B", ... scored (one token each). MMLU: lm-eval's
  `mmlu_<subject>`. PubMedQA: lm-eval has no letter version, so one is built here from lm-eval's
  own `pubmedqa` config: its doc_to_text with "A. yes\\nB. no\\nC. maybe" inserted before
  "Answer:" (MMLU's layout), choices A/B/C, gold the index of final_decision.
- **cloze**: each choice's own text scored as a (multi-token) continuation. MMLU: lm-eval's
  `mmlu_<subject>_continuation`; PubMedQA: lm-eval's `pubmedqa` (" yes" / " no" / " maybe").

lm-eval reads a temporary JSONL converted from the original file (lmeval_side_by_side.py's
converters and config swap: only the dataset changes); qeval reads the file through its task
(tasks/open_medical, qeval/tasks/sources.py) with `prompt.template` / `prompt.continuation` changed in
memory to the format. Prompts (context and continuation strings) and token ids are checked to be
identical item by item.

Timed (scoring only; model loading excluded on both sides; the first items scored once
beforehand as a warm-up; best of --repeats):
- lm-eval: `HFLM.loglikelihood(instances)` on the Instances its task builds
  (`Task.build_all_requests`), i.e. its tokenisation, batching and forward passes, nothing of the
  evaluator around it. Its accuracy is its own `Task.process_results` `acc` on those results.
- qeval: `score_items(task, build_requests(task, backend.tokenize), backend)`, the backend opened
  by qeval's HFFactory.

Forward ceiling: tokens/s of a plain `model(input_ids, logits_to_keep=1)` under
`torch.inference_mode()` on qeval's model object, full batches (batch-size rows of real token ids
of the task's prompts, each row as long as the task's median scoring sequence, since tokens/s falls
as sequences grow; no padding, no mask), best of a few passes. Scoring also projects every scored
position onto the vocabulary (a quarter of a token's compute on this model), which the ceiling
does not. qeval's scoring tokens/s counts the
distinct tokens scoring needs (per item: the context once + each choice's continuation minus its
last token) over its scoring seconds; lm-eval's is the same count over its seconds.

No benchmark text is written into the project: the converted JSONL lives in a temporary
directory, and the results file holds numbers (and item ids) only.

    .venv/bin/python benchmarks/bench_scoring.py --tasks mmlu_clinical_knowledge,pubmedqa \\
        --formats letter,cloze --dtype bf16 --batch-size 8 --repeats 1

`--large-vocab` runs the large-vocabulary case instead (benchmarks/large_vocab.py): reference
text on a tiny random Llama with Gemma-3's vocabulary (262,144) and hidden size (640), on
transformers and on llama.cpp (F32 GGUF), each engine in its own process: tokens/s against the
forward ceiling and peak resident memory, written to results_bench_scoring_large_vocab.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # everything is local; never reach the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The side-by-side script is a sibling module, not part of the qeval package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmeval_side_by_side import MMLU_SUBJECTS, converter, lmeval_config, qeval_task  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from qeval.run.config import PROJECT_ROOT, data_dir_from  # noqa: E402
from qeval.errors import QevalInputError  # noqa: E402
from qeval.model_source import DEFAULT_MODEL, resolve_model  # noqa: E402
from qeval.kinds.choice import ItemRequests, build_requests, render_prompt, score_items  # noqa: E402
from qeval.tasks.registry import first_n  # noqa: E402
from qeval.types import ItemRecord, Method, Task, VariantSpec  # noqa: E402

Format = Literal["letter", "cloze"]
FORMATS: tuple[Format, ...] = ("letter", "cloze")
SUPPORTED_TASKS = (*(f"mmlu_{s}" for s in MMLU_SUBJECTS), "pubmedqa")
DEFAULT_TASKS = "mmlu_clinical_knowledge,pubmedqa"
DEFAULT_OUT = Path(__file__).with_name("results_bench_scoring.md")
DTYPES = {"bf16": ("bfloat16", Method.bf16), "fp32": ("float32", Method.fp32)}

WARMUP_ITEMS = 2  # scored once on each side before timing, to page in weights and kernels
CEILING_REPEATS = 5
PUBMEDQA_CHOICES = ("yes", "no", "maybe")

# Goals (issue 9): qeval items/s over lm-eval's, per format; qeval's share of the forward ceiling.
SPEEDUP_GOAL: dict[Format, float] = {"letter": 1.3, "cloze": 2.5}
CEILING_GOAL = 0.8


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, ...]
    formats: tuple[Format, ...]
    limit: int | None = Field(None, ge=1)
    dtype: Literal["bf16", "fp32"]
    batch_size: int = Field(ge=1)
    repeats: int = Field(ge=1)
    data_dir: Path
    out: Path
    argv: tuple[str, ...]  # as given, for the results file's command line


# ---------------------------------------------------------------- the two prompt formats


def lmeval_name(task_id: str, fmt: Format) -> str:
    """lm-eval's task for this format (pubmedqa's letter version is built here, not registered)."""
    if task_id == "pubmedqa":
        return "pubmedqa" if fmt == "cloze" else "pubmedqa_letter (built from pubmedqa)"
    return task_id if fmt == "letter" else f"{task_id}_continuation"


def pubmedqa_letter(cfg: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's pubmedqa config turned into a letter task: its own doc_to_text with the lettered
    options inserted before "Answer:" the way MMLU lays them out."""
    base_text: Callable[[dict], str] = cfg["doc_to_text"]
    block = "\n".join(f"{'ABC'[i]}. {c}" for i, c in enumerate(PUBMEDQA_CHOICES))

    def doc_to_text(doc: dict) -> str:
        return base_text(doc).removesuffix("Answer:") + block + "\nAnswer:"

    def doc_to_target(doc: dict) -> int:
        return PUBMEDQA_CHOICES.index(doc["final_decision"])

    return {**cfg, "task": "pubmedqa_letter", "doc_to_text": doc_to_text,
            "doc_to_choice": list("ABC"), "doc_to_target": doc_to_target}


def lmeval_format_config(manager, task_id: str, fmt: Format, data_file: Path, cache: Path
                         ) -> dict[str, Any]:
    if task_id == "pubmedqa":
        cfg = lmeval_config(manager, "pubmedqa", data_file, cache)
        return pubmedqa_letter(cfg) if fmt == "letter" else cfg
    return lmeval_config(manager, lmeval_name(task_id, fmt), data_file, cache)


def qeval_format_task(task: Task, fmt: Format) -> Task:
    """The task with its prompt switched to `fmt`, written to render lm-eval's request strings
    (checked item by item, not assumed)."""
    prompt = task.spec.prompt
    if task.spec.id.startswith("mmlu_") and fmt == "cloze":
        subject = task.spec.id.removeprefix("mmlu_").replace("_", " ")
        prompt = prompt.model_copy(update={
            "template": f"The following are questions (with answers) about {subject}.\n\n"
                        "Question: {question}\nAnswer:",
            "continuation": "choice_text"})
    elif task.spec.id == "pubmedqa" and fmt == "letter":
        prompt = prompt.model_copy(update={
            "template": "Abstract: {passage}\nQuestion: {question}\n{choices}\nAnswer:",
            "continuation": "letter"})
    wanted = "letter" if fmt == "letter" else "choice_text"
    if prompt.continuation != wanted:
        raise QevalInputError(f"{task.spec.id}: no {fmt} format defined for this task")
    return task.model_copy(update={"spec": task.spec.model_copy(update={"prompt": prompt})})


# ---------------------------------------------------------------- lm-eval side


@dataclass
class LmEvalTask:
    task: Any  # lm_eval.api.task.Task with its instances built
    instances: list[Any]  # every Instance, in build order
    by_id: dict[str, list[Any]]  # qeval sample id -> that document's Instances, by choice


def build_lmeval(manager, cfg: dict[str, Any]) -> LmEvalTask:
    (task,) = manager.load(cfg)["tasks"].values()
    task.build_all_requests(limit=None, rank=0, world_size=1)
    instances = list(task.instances)
    by_id: dict[str, list[Any]] = {}
    for inst in sorted(instances, key=lambda i: (i.doc_id, i.idx)):
        by_id.setdefault(inst.doc["qeval_id"], []).append(inst)
    return LmEvalTask(task, instances, by_id)


def time_lmeval(lm, instances: Sequence[Any]) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    out = lm.loglikelihood(list(instances), disable_tqdm=True)
    return time.perf_counter() - t0, [float(ll) for ll, _ in out]


# ---------------------------------------------------------------- qeval side


def time_qeval(task: Task, backend) -> tuple[float, list[ItemRequests], list[ItemRecord]]:
    t0 = time.perf_counter()
    items = build_requests(task, backend.tokenize)
    records = score_items(task, items, backend)
    return time.perf_counter() - t0, items, records


def useful_tokens(items: Sequence[ItemRequests]) -> int:
    """Tokens scoring must run through the model: per item each distinct context once, plus each
    choice's continuation but its last token (predicted, never input)."""
    total = 0
    for it in items:
        total += sum(len(c) for c in {r.context for r in it.requests})
        total += sum(len(r.continuation) - 1 for r in it.requests)
    return total


def ceiling_length(items: Sequence[ItemRequests]) -> int:
    """The median length of the sequences scoring runs per item (context + every choice's
    continuation but its last token): the forward ceiling is measured at this length, since
    tokens/s falls as sequences grow (attention)."""
    lengths = sorted(len(it.requests[0].context) + sum(len(r.continuation) - 1 for r in it.requests)
                     for it in items)
    return lengths[len(lengths) // 2]


def forward_ceiling(model, items: Sequence[ItemRequests], batch: int) -> float:
    """Tokens/s of bare full-batch forwards on real ids (no padding, no mask, one projected
    position per row, as a server's prefill), `batch` rows of the task's median scoring length."""
    import torch

    seq = ceiling_length(items)
    rows = batch  # the batch shape qeval's scoring uses
    stream = [t for it in items for t in it.requests[0].context]
    need = rows * seq
    ids = (stream * (need // len(stream) + 1))[:need]  # cycled when the prompts are fewer
    input_ids = torch.tensor(ids, dtype=torch.long).view(rows, seq)
    best = math.inf
    with torch.inference_mode():
        model(input_ids=input_ids, logits_to_keep=1)  # warm-up
        for _ in range(CEILING_REPEATS):
            t0 = time.perf_counter()
            model(input_ids=input_ids, logits_to_keep=1)
            best = min(best, time.perf_counter() - t0)
    return need / best


# ---------------------------------------------------------------- one task in one format


class Disagreement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_id: str
    lmeval_choice: int
    qeval_choice: int
    lmeval_margin: float  # lm-eval's best minus its second-best log-prob
    qeval_margin: float
    lmeval_tie: bool  # lm-eval's best log-prob equals another choice's exactly


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    fmt: Format
    lmeval_task: str
    items: int
    same_prompt: int
    same_tokens: int
    same_choice: int
    max_abs_delta: float
    acc_qeval: float
    acc_lmeval: float  # lm-eval's own process_results `acc`
    seconds_qeval: float
    seconds_lmeval: float
    tokens: int  # useful tokens (see useful_tokens)
    ceiling_tok_s: float
    disagreements: list[Disagreement]

    @property
    def speedup(self) -> float:
        return self.seconds_lmeval / self.seconds_qeval

    @property
    def ceiling_share(self) -> float:
        return self.tokens / self.seconds_qeval / self.ceiling_tok_s


def argmax_first(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # np.argmax: first of ties


def margin(values: Sequence[float]) -> float:
    top = sorted(values, reverse=True)
    return top[0] - top[1]


def compare(task: Task, items: Sequence[ItemRequests], records: Sequence[ItemRecord],
            ours: LmEvalTask, lls: Sequence[float], lm) -> dict[str, Any]:
    """Prompt, token and answer agreement between qeval's records and lm-eval's results."""
    ll_of = {id(inst): ll for inst, ll in zip(ours.instances, lls)}
    same_prompt = same_tokens = same_choice = 0
    acc_lm = 0.0
    max_delta = 0.0
    disagreements = []
    for sample, it, rec in zip(task.samples, items, records):
        insts = ours.by_id[sample.id]
        their = [ll_of[id(i)] for i in insts]
        context, conts = render_prompt(task.spec, sample)
        same_prompt += [i.args for i in insts] == [(context, c) for c in conts]
        same_tokens += [lm._encode_pair(*i.args) for i in insts] == [
            (list(r.context), list(r.continuation)) for r in it.requests]
        acc_lm += ours.task.process_results(insts[0].doc, [(ll, False) for ll in their])["acc"]
        pred = argmax_first(their)
        same_choice += pred == rec.prediction
        if pred != rec.prediction:
            disagreements.append(Disagreement(
                sample_id=sample.id, lmeval_choice=pred, qeval_choice=rec.prediction,
                lmeval_margin=margin(their), qeval_margin=margin(rec.choice_logprobs),
                lmeval_tie=their.count(max(their)) > 1))
        for a, b in zip(their, rec.choice_logprobs):
            max_delta = max(max_delta, abs(a - b))
    n = len(task.samples)
    return dict(same_prompt=same_prompt, same_tokens=same_tokens, same_choice=same_choice,
                max_abs_delta=max_delta, acc_qeval=sum(r.correct for r in records) / n,
                acc_lmeval=acc_lm / n, disagreements=disagreements)


def bench(task_id: str, fmt: Format, opts: Options, backend, lm, manager, tmp: Path) -> Row:
    task = qeval_format_task(qeval_task(task_id, opts.data_dir, opts.limit), fmt)
    by_id = dict(converter(task_id)(opts.data_dir))
    missing = [s.id for s in task.samples if s.id not in by_id]
    if missing:
        raise QevalInputError(f"{task_id}: qeval item {missing[0]} ({len(missing)} in all) has no "
                              "document in the converted file; the id schemes disagree")
    data_file = tmp / f"{task_id}.jsonl"
    data_file.write_text("".join(json.dumps({**by_id[s.id], "qeval_id": s.id}, ensure_ascii=False)
                                 + "\n" for s in task.samples), encoding="utf-8")
    ours = build_lmeval(manager, lmeval_format_config(manager, task_id, fmt, data_file,
                                                      tmp / "hf-cache"))

    progress(f"{task_id} {fmt}: warm-up")
    time_lmeval(lm, [i for s in task.samples[:WARMUP_ITEMS] for i in ours.by_id[s.id]])
    time_qeval(first_n(task, WARMUP_ITEMS), backend)

    t_lm = t_q = math.inf
    ceiling = 0.0
    for r in range(opts.repeats):
        progress(f"{task_id} {fmt}: repeat {r + 1}/{opts.repeats}, lm-eval")
        s, lls = time_lmeval(lm, ours.instances)
        t_lm = min(t_lm, s)
        progress(f"{task_id} {fmt}: repeat {r + 1}/{opts.repeats}, qeval")
        s, items, records = time_qeval(task, backend)
        t_q = min(t_q, s)
        # Measured right after qeval's scoring in every repeat, the best kept: the machine's
        # speed drifts, and the highest ceiling is the strictest reference.
        progress(f"{task_id} {fmt}: repeat {r + 1}/{opts.repeats}, forward ceiling")
        ceiling = max(ceiling, forward_ceiling(backend.model, items, opts.batch_size))
    return Row(task=task_id, fmt=fmt, lmeval_task=lmeval_name(task_id, fmt),
               items=len(task.samples), seconds_qeval=t_q, seconds_lmeval=t_lm,
               tokens=useful_tokens(items), ceiling_tok_s=ceiling,
               **compare(task, items, records, ours, lls, lm))


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summary_line(r: Row) -> str:
    return (f"{r.task} {r.fmt}: {r.items} items, prompts identical {r.same_prompt}/{r.items}, "
            f"same choice {r.same_choice}/{r.items}, max |Δ| {r.max_abs_delta:.2e}, "
            f"lm-eval {r.items / r.seconds_lmeval:.2f} items/s, qeval "
            f"{r.items / r.seconds_qeval:.2f} items/s ({r.speedup:.2f}x), qeval at "
            f"{r.ceiling_share:.0%} of the forward ceiling")


NOTES = """\
How each side spends its forward passes (lm-eval 0.4.13 `HFLM._loglikelihood_tokens`):
lm-eval sorts requests by length and, with `logits_cache` (default on), groups requests whose
context + continuation[:-1] is the same, which shares one pass among the one-token letter
answers of an item; each cloze choice gets its own pass over context + continuation, so the
context is recomputed once per choice. It right-pads with no attention mask, computes logits and
a full-vocabulary `log_softmax` (in the model dtype: bfloat16 under `--dtype bf16`, as
`softmax_dtype` is unset) at every position. qeval projects only the positions that predict a
continuation token and takes the log-softmax in float32. lm-eval's `pubmedqa` choices " yes",
" no", " maybe" are one token each for SmolLM2, so its cloze rows are letter-like: lm-eval already
runs one pass per item there, and no context is left to share.

*max |Δ log-prob|* in bfloat16 is rounding that depends on each batch's padded shape, not a
scoring difference: lm-eval against itself at batch size 1 instead of 8 moves summed cloze
log-probs by as much (up to 0.5 on the first 16 clinical-knowledge items when this script was
written), and float32 runs of the two sides agree to ~4e-5. Near-tied choices can then flip:
the disagreement table, when present, gives both sides' margins.

*useful tokens*: per item, each distinct context once plus every choice's continuation but its
last token: what scoring must run through the model at the least. *ceiling*: a bare
`model(input_ids, logits_to_keep=1)` on full batches of that many rows of real token ids, each
as long as the task's median scoring sequence (context + choices' tokens), no padding, on qeval's
model object, batch-size rows, best of 5 (measured after qeval's
scoring in each repeat, the highest kept). Timings on a shared machine vary; compare numbers
of one run only."""


def markdown(rows: Sequence[Row], opts: Options, header: dict[str, str]) -> str:
    lines = ["# Scoring speed: qeval vs lm-eval `hf` (same run, model, dtype, data)", "",
             f"Command: `{shlex.join(['.venv/bin/python', 'benchmarks/bench_scoring.py', *opts.argv])}`",
             ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "## Agreement", "",
              "| task | format | lm-eval task | items | prompts identical | token ids identical | "
              "same choice | max \\|Δ log-prob\\| | acc qeval | acc lm-eval |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.fmt} | {r.lmeval_task} | {r.items} | {r.same_prompt}/{r.items} "
                     f"| {r.same_tokens}/{r.items} | {r.same_choice}/{r.items} | "
                     f"{r.max_abs_delta:.2e} | {r.acc_qeval:.3f} | {r.acc_lmeval:.3f} |")
    lines += ["", "## Speed (scoring only, best of repeats)", "",
              "| task | format | lm-eval s | qeval s | lm-eval items/s | qeval items/s | "
              "qeval / lm-eval | useful tokens | lm-eval tok/s | qeval tok/s | ceiling tok/s | "
              "qeval / ceiling |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.fmt} | {r.seconds_lmeval:.2f} | {r.seconds_qeval:.2f} | "
            f"{r.items / r.seconds_lmeval:.2f} | {r.items / r.seconds_qeval:.2f} | "
            f"{r.speedup:.2f}x | {r.tokens} | {r.tokens / r.seconds_lmeval:.0f} | "
            f"{r.tokens / r.seconds_qeval:.0f} | {r.ceiling_tok_s:.0f} | {r.ceiling_share:.0%} |")
    lines += ["", "## Goals", "",
              "| task | format | items/s ratio (goal) | qeval / ceiling (goal ≥ "
              f"{CEILING_GOAL:.0%}) | identical chosen answers |", "|---|---|---|---|---|"]
    for r in rows:
        goal = SPEEDUP_GOAL[r.fmt]
        lines.append(
            # one more digit than the tables above, so a MISS never reads as the goal's value
            f"| {r.task} | {r.fmt} | {r.speedup:.3f}x (≥ {goal}x) {verdict(r.speedup >= goal)} | "
            f"{r.ceiling_share:.1%} {verdict(r.ceiling_share >= CEILING_GOAL)} | "
            f"{r.same_choice}/{r.items} {verdict(r.same_choice == r.items)} |")
    disagreements = [(r, d) for r in rows for d in r.disagreements]
    if disagreements:
        lines += ["", "## Items where the chosen answers differ", "",
                  "| task | format | item | lm-eval choice | qeval choice | lm-eval margin | "
                  "qeval margin | lm-eval exact tie |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r.task} | {r.fmt} | {d.sample_id} | {d.lmeval_choice} | {d.qeval_choice} | "
                  f"{d.lmeval_margin:.2e} | {d.qeval_margin:.2e} | {d.lmeval_tie} |"
                  for r, d in disagreements]
    lines += ["", NOTES, ""]
    return "\n".join(lines)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"qeval task ids (default {DEFAULT_TASKS})")
    p.add_argument("--formats", default="letter,cloze", help="letter, cloze or both")
    p.add_argument("--limit", type=int, default=0, help="first N items per task (0: all)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side; the best counts")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="benchmark files (default: as qeval finds them, else ../shared/data)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(list(argv))
    tasks = tuple(t.strip() for t in a.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in SUPPORTED_TASKS]
    if unknown:
        p.error(f"no letter and cloze pair for {', '.join(unknown)}; choose from "
                f"{', '.join(SUPPORTED_TASKS)}")
    formats = tuple(f.strip() for f in a.formats.split(",") if f.strip())
    if not formats or set(formats) - set(FORMATS):
        p.error("--formats: letter, cloze or letter,cloze")
    data_dir = data_dir_from(a.data_dir) or (PROJECT_ROOT.parent / "shared" / "data").resolve()
    return Options(tasks=tasks, formats=formats, limit=a.limit or None, dtype=a.dtype,
                   batch_size=a.batch_size, repeats=a.repeats, data_dir=data_dir, out=a.out,
                   argv=tuple(argv))


def large_vocab(argv: Sequence[str]) -> int:
    """The large-vocabulary reference-text case (see the module docstring)."""
    import large_vocab as lv

    p = argparse.ArgumentParser(description="bench_scoring.py --large-vocab")
    p.add_argument("--large-vocab", action="store_true")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qeval-large-vocab")
    p.add_argument("--passages", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT.with_name("results_bench_scoring_large_vocab.md"))
    a = p.parse_args(list(argv))
    rows = lv.run(a.work, a.passages, "bench", repeats=a.repeats)
    text = "\n".join([
        "# Reference text at Gemma-3's vocabulary (262,144 tokens, hidden 640)", "",
        f"Command: `{shlex.join(['.venv/bin/python', 'benchmarks/bench_scoring.py', *argv])}`", "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- model: random Llama, {lv.SHAPE}, vocabulary {lv.VOCAB}; llama.cpp: its F32 GGUF",
        f"- machine: {os.cpu_count()} CPUs; first {a.passages} clinical_reference passage(s), "
        f"top-{lv.TOP_K} + tail; best of {a.repeats}", "",
        *lv.table(rows), "", lv.NOTES, ""])
    print(text)
    a.out.write_text(text, encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--large-vocab" in argv:
        return large_vocab(argv)
    opts = parse(argv)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    import datasets
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from qeval.engines.hf import HFFactory

    datasets.disable_progress_bars()  # one bar per converted file would drown the progress lines
    torch.manual_seed(0)
    dtype_name, method = DTYPES[opts.dtype]
    model = resolve_model(DEFAULT_MODEL)
    # strict_dtype: on a CPU qeval would otherwise compute a bf16 request in float32.
    backend = HFFactory(model, device="cpu", strict_dtype=True, batch_size=opts.batch_size).open(
        VariantSpec(name=opts.dtype, method=method), None)
    lm = HFLM(pretrained=str(model.path), dtype=dtype_name, device="cpu", batch_size=opts.batch_size)
    lm_dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    if lm_dtype != backend.info.compute_dtype:
        raise RuntimeError(f"dtypes differ: lm-eval {lm_dtype}, qeval {backend.info.compute_dtype}")
    manager = TaskManager()
    header = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": f"{DEFAULT_MODEL} ({model.source}; fingerprint {model.fingerprint[:16]})",
        "device / dtype": f"cpu, {backend.info.compute_dtype} on both sides",
        "batch size": f"{opts.batch_size} on both sides",
        "items": f"first {opts.limit} per task" if opts.limit else "all",
        "repeats": f"{opts.repeats} (best counts), after a {WARMUP_ITEMS}-item warm-up per side",
        "machine": f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} (one process, "
                   "shared by both sides)",
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                    f"lm_eval {lm_eval.__version__}",
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="qeval-bench-scoring-") as tmp:
        for task_id in opts.tasks:
            for fmt in opts.formats:
                row = bench(task_id, fmt, opts, backend, lm, manager, Path(tmp))
                progress(summary_line(row))
                rows.append(row)
    backend.close()
    text = markdown(rows, opts, header)
    print(text)
    opts.out.write_text(text, encoding="utf-8")
    progress(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QevalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
