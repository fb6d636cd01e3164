"""Writing the run document: results.json, efficiency.json and paired.json from their typed models
(qeval.rundir.schema), and the file names records are stored under. No report here: report.md and
report.html are written by qeval.report, which may import this module, never the reverse."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qeval.rundir.schema import (
    EFFICIENCY_FILE,
    PAIRED_FILE,
    RESULTS_FILE,
    EfficiencyDoc,
    PairedDoc,
    PairedEntry,
    RunResults,
    dump,
)
from qeval.util.fileio import atomic_write_text


def safe_name(name: str) -> str:
    """A variant or task name as a file name (lm-eval:<task> has a colon)."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in name)


def record_path(run_dir: Path, variant: str, task_id: str) -> Path:
    return run_dir / "records" / safe_name(variant) / f"{safe_name(task_id)}.jsonl"


def write_documents(folder: Path, doc: RunResults) -> None:
    """results.json, and efficiency.json when the run measured it, into `folder`. Measurements of
    time and memory differ from run to run; results.json must not (the same compare twice gives
    the same file apart from created_at), so they live beside it."""
    atomic_write_text(folder / RESULTS_FILE, dump(doc))
    if doc.efficiency is not None:
        eff = EfficiencyDoc.model_validate(doc.efficiency.model_dump(mode="json", exclude_unset=True))
        atomic_write_text(folder / EFFICIENCY_FILE, dump(eff))


def paired_document(comparisons: Iterable, floors: Iterable) -> PairedDoc:
    """paired.json: what the gate judges beside each comparison's summary numbers — per item
    (ids, correctness, choice-KL, agreement, risk, cluster) or per passage unit (token sums).
    Ids and numbers only. `qeval gate` re-judges a run from it under another policy."""
    def entry(c) -> PairedEntry:
        part = "units" if getattr(c, "units", None) is not None else "items"
        # Validated from the dump: every field counts as set, so `clusters: null` is written too.
        return PairedEntry.model_validate({"task": c.task, "candidate": c.candidate, "kind": c.kind,
                                           part: getattr(c, part).model_dump(mode="json")})

    return PairedDoc(comparisons=[entry(c) for c in comparisons], noise_floor=[entry(c) for c in floors])


def write_paired(folder: Path, doc: PairedDoc) -> None:
    atomic_write_text(folder / PAIRED_FILE, dump(doc, indent=None))
