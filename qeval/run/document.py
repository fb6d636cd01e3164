"""The run document from a finished compare: results.json's fields (typed as RunResults) and the
run directory written atomically (records, results.json, efficiency.json, paired.json,
timings.json, report.md, report.html). No prompt text unless the user opted in: results carry
sample ids, hashes and numbers."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qeval.report.markdown import markdown_report
from qeval.run.store import write_jsonl
from qeval.rundir.schema import RESULTS_SCHEMA, RunResults
from qeval.rundir.write import paired_document, safe_name, write_documents, write_paired
from qeval.types import EXIT_CODES, Verdict
from qeval.util.fileio import atomic_write_text
from qeval.util.versions import QEVAL_VERSION as __version__

if TYPE_CHECKING:
    from qeval.run.pipeline import CompareResult


def verdict_fields(comparisons: Sequence, verdict: Verdict) -> dict:
    """results.json's verdict, exit code, per-candidate verdicts, reasons, combination rule and
    comparisons (each with its verdict and rules): what a policy decides from the comparisons."""
    verdicts = {(t.task, t.candidate): t for t in verdict.tasks}
    dumped = []
    for c in comparisons:
        v = verdicts[(c.task, c.candidate)]
        dumped.append({
            **c.model_dump(mode="json"),
            "verdict": v.decision.value,
            "rules": [r.model_dump(mode="json") for r in v.rules],
        })
    return {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "verdict": verdict.decision.value,
        "exit_code": EXIT_CODES[verdict.decision],
        "per_candidate": {k: v.value for k, v in verdict.per_candidate.items()},
        "reasons": list(verdict.reasons),
        "comparisons": dumped,
        "combination": verdict.combination,
    }


def results_document(res: CompareResult, *, model: dict, policy: dict, **more) -> RunResults:
    """The typed run document (results.json, efficiency.json's table under `efficiency`).
    `more`: the sections a command adds (efficiency, artefacts, skipped_tasks). Validated from
    the dict the sections are dumped to, so every field written today counts as set and the
    file's bytes are the same."""
    return RunResults.model_validate({**results_dict(res, model=model, policy=policy), **more})


def results_dict(res: CompareResult, *, model: dict, policy: dict) -> dict:
    judged = verdict_fields(res.comparisons, res.verdict)
    return {
        "schema": RESULTS_SCHEMA,
        "qeval_version": __version__,
        "created_at": judged["created_at"],
        "verdict": judged["verdict"],
        "exit_code": judged["exit_code"],
        "per_candidate": judged["per_candidate"],
        "reasons": judged["reasons"],
        "model": model,
        "config": res.config.model_dump(mode="json"),
        "policy": policy,
        "baseline": res.baseline.info.model_dump(mode="json"),
        "candidates": [c.info.model_dump(mode="json") for c in res.candidates],
        "tasks": [{"id": t.spec.id, "version": t.spec.version, "kind": t.spec.kind, "n": t.size(),
                   "content_hash": t.content_hash, "path": t.path} for t in res.tasks],
        "comparisons": judged["comparisons"],
        "combination": judged["combination"],
        "rotation": rotation_by_task(res.comparisons),
        "power": [r.model_dump(mode="json") for r in res.power],
        "engine_floor": None if res.engine_floor is None else res.engine_floor.info.model_dump(mode="json"),
        "noise_floor": None if res.floor is None else {
            "variant": res.floor.info.model_dump(mode="json"),
            "path": res.config.noise_floor,
            "comparisons": [c.model_dump(mode="json") for c in res.floors.values()],
        },
    }


def rotation_by_task(comparisons) -> dict[str, dict[str, dict]]:
    """task → variant → its rotation statistics (baseline included), for tasks scored under
    rotated options."""
    out: dict[str, dict[str, dict]] = {}
    for c in comparisons:
        rot = getattr(c, "rotation", None)
        if rot is not None:
            for side in (rot.baseline, rot.candidate):
                out.setdefault(c.task, {})[side.variant] = side.model_dump(mode="json")
    return out


def write_run(out: Path, res: CompareResult, results: RunResults | dict, *, log_text: bool,
              extra_files: dict[str, str] | None = None) -> None:
    """Everything goes to a temporary directory first, then moves into place: a failed run
    leaves nothing half-written. `extra_files`: name → text, written beside report.md."""
    import shutil

    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _fill_run_dir(tmp, res, results, log_text=log_text, extra_files=extra_files)
        if out.exists():
            raise FileExistsError(out)
        tmp.replace(out)
    except BaseException:
        # Nothing half-written, and opted-in texts never left behind outside the run directory.
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fill_run_dir(tmp: Path, res: CompareResult, results: RunResults | dict, *, log_text: bool,
                  extra_files: dict[str, str] | None) -> None:
    for run in [res.baseline, *([res.floor] if res.floor else []), *res.candidates]:
        folder = tmp / "records" / safe_name(run.spec.name)
        for task_id, recs in [*run.records.items(), *run.text.items()]:
            write_jsonl(folder / f"{safe_name(task_id)}.jsonl", recs)  # lm-eval:<task> has a colon
        # What actually ran (device, dtypes, kernels), beside the records it produced.
        atomic_write_text(folder / "backend.json", run.info.model_dump_json(indent=1) + "\n")
    write_results(tmp, results)
    write_paired(tmp, paired_document(res.comparisons, res.floors.values()))
    atomic_write_text(tmp / "timings.json", json.dumps({
        **res.timings,
        "reused_tasks": {r.spec.name: r.reused_tasks
                         for r in [res.baseline, *([res.floor] if res.floor else []), *res.candidates]},
    }, indent=1, sort_keys=True) + "\n")
    for name, text in (extra_files or {}).items():
        atomic_write_text(tmp / name, text)
    if log_text:
        from qeval.kinds.choice import render_prompt

        lines = []
        for t in res.tasks:
            for p in t.passages:
                lines.append(json.dumps({"task": t.spec.id, "sample_id": p.id, "text": p.text}))
            for s in t.samples:
                ctx, conts = render_prompt(t.spec, s)
                lines.append(json.dumps({"task": t.spec.id, "sample_id": s.id, "prompt": ctx,
                                         "continuations": conts}))
        atomic_write_text(tmp / "texts" / "prompts.jsonl", "\n".join(lines) + "\n")
        outputs = [json.dumps({"task": task_id, "variant": run.spec.name, "sample_id": sid, "output": text})
                   for run in [res.baseline, *([res.floor] if res.floor else []), *res.candidates]
                   for task_id, texts in sorted(run.outputs.items()) for sid, text in sorted(texts.items())]
        if outputs:
            atomic_write_text(tmp / "texts" / "outputs.jsonl", "\n".join(outputs) + "\n")
    from qeval.report.html import (
        write_html,  # here: html_report reads run directories through this module
    )

    write_html(tmp)


def write_results(folder: Path, results: RunResults | dict) -> None:
    """results.json, efficiency.json (when measured) and report.md into `folder`."""
    doc = results if isinstance(results, RunResults) else RunResults.model_validate(results)
    write_documents(folder, doc)
    atomic_write_text(folder / "report.md", markdown_report(doc.as_dict()))
