"""Read a finished run directory back: results.json and the per-item records beside it.

The public way to analyse a run (the HTML report and notebooks/explore_run.ipynb use it). A run
directory holds ids, hashes and numbers only; nothing here reads the opt-in texts/ folder.

    run = load_run("runs/2024-…")
    run.document                            # results.json (+ efficiency.json) as a RunResults
    run.baseline, run.candidates, run.tasks
    run.records("int8", "clinical_core")    # ItemRecord / GenerationRecord / TextRecord
    run.choice_kl("int8", "clinical_core")  # per item, as results.json's choice_kl_* were computed
    run.token_kl("int8", "clinical_reference")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from qeval import stats
from qeval.errors import QevalInputError
from qeval.pairing import PairingError, PromptMismatch, pair_records
from qeval.rundir.schema import EFFICIENCY_FILE, RESULTS_FILE, RESULTS_SCHEMA, EfficiencyTable, RunResults
from qeval.rundir.write import record_path
from qeval.types import GenerationRecord, ItemRecord, Strict, TextRecord

TaskKind = Literal["multiple_choice", "reference_text", "generate"]
AnyRecord = ItemRecord | TextRecord | GenerationRecord

_RECORD_TYPE: dict[str, type[AnyRecord]] = {
    "multiple_choice": ItemRecord, "generate": GenerationRecord, "reference_text": TextRecord,
}


class RunTask(Strict):
    """A task of the run as results.json lists it."""

    id: str
    kind: TaskKind = "multiple_choice"
    n: int
    version: int = 1


@dataclass(frozen=True)
class Run:
    """A finished run directory. `document` is results.json as written, typed (efficiency.json's
    table under `efficiency` when the run measured it); `results` the same as a plain dict."""

    path: Path
    document: RunResults
    _dict: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def results(self) -> dict[str, Any]:
        """results.json as a dict (efficiency.json merged under `efficiency`), for readers
        that index by key."""
        if self._dict is None:
            object.__setattr__(self, "_dict", self.document.as_dict())
        return self._dict

    @property
    def baseline(self) -> str:
        return self.document.baseline.variant

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(c.variant for c in self.document.candidates)

    @property
    def noise_floor(self) -> str | None:
        """The noise-floor replica's variant name, when the run measured one."""
        floor = self.document.noise_floor
        return floor.variant.variant if floor else None

    @property
    def tasks(self) -> tuple[RunTask, ...]:
        return tuple(RunTask(id=t.id, kind=t.kind, n=t.n, version=t.version) for t in self.document.tasks)

    def task(self, task_id: str) -> RunTask:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise QevalInputError(f"{self.path}: no task {task_id!r} in this run "
                              f"(tasks: {', '.join(t.id for t in self.tasks)})")

    def comparison(self, candidate: str, task_id: str):
        """The candidate's comparison on the task, as in results.json (typed)."""
        found = self.document.comparison(candidate, task_id)
        if found is not None:
            return found
        raise QevalInputError(f"{self.path}: no comparison of {candidate!r} on {task_id!r} in this run")

    def records(self, variant: str, task_id: str) -> list[AnyRecord]:
        """One variant's records of one task, in file order. The baseline has no records of a
        reference_text task: its distributions are compared in memory and never stored."""
        record_type = _RECORD_TYPE[self.task(task_id).kind]
        path = record_path(self.path, variant, task_id)
        try:
            lines = path.read_text().splitlines()
        except OSError:
            raise QevalInputError(f"{path}: no records of {variant!r} on {task_id!r} in this run "
                                  "directory") from None
        try:
            return [record_type.model_validate_json(line) for line in lines if line.strip()]
        except ValidationError as exc:
            raise QevalInputError(f"{path}: not {record_type.__name__} records "
                                  f"({exc.errors()[0]['msg']}); use the qeval that wrote the run") from None

    def choice_kl(self, candidate: str, task_id: str) -> tuple[float, ...]:
        """Per-item KL(baseline ‖ candidate) over the softmax of choice scores, nats, in sample-id
        order: recomputed from the records with compare.py's pairing and stats.choice_kl, so its
        mean, p99 and max are results.json's."""
        self._require_kind(task_id, "multiple_choice", "choice-KL")
        try:
            pairs = pair_records(self.records(self.baseline, task_id), self.records(candidate, task_id))
        except (PairingError, PromptMismatch) as exc:
            raise QevalInputError(f"{self.path}: records of {candidate!r} on {task_id!r} do not pair with "
                                  f"the baseline's ({exc})") from None
        return tuple(stats.choice_kl(b.choice_scores, c.choice_scores) for b, c in pairs)

    def token_kl(self, candidate: str, task_id: str) -> tuple[float, ...]:
        """Per-token KL(baseline ‖ candidate), nats, all passages in sample-id order."""
        self._require_kind(task_id, "reference_text", "per-token KL")
        records = sorted(self.records(candidate, task_id), key=lambda r: r.sample_id)
        return tuple(k for r in records for k in r.kl)

    def _require_kind(self, task_id: str, kind: TaskKind, what: str) -> None:
        actual = self.task(task_id).kind
        if actual != kind:
            raise QevalInputError(f"task {task_id!r} is a {actual} task: {what} needs a {kind} task")


def load_run(path: str | Path) -> Run:
    """Open a run directory written by `qeval compare`; any problem is one QevalInputError line."""
    path = Path(path)
    results_path = path / RESULTS_FILE
    try:
        results = json.loads(results_path.read_text())
    except OSError as exc:
        raise QevalInputError(f"{results_path}: cannot read results ({exc.strerror or exc}); "
                              "pass a run directory written by qeval compare") from None
    except ValueError as exc:
        raise QevalInputError(f"{results_path}: not valid JSON ({exc}); the run directory is damaged") from None
    schema = results.get("schema") if isinstance(results, dict) else None
    if schema != RESULTS_SCHEMA:
        raise QevalInputError(f"{results_path}: schema {schema!r} is not {RESULTS_SCHEMA!r}; "
                              "use the qeval that wrote it")
    eff_path = path / EFFICIENCY_FILE
    if eff_path.is_file():
        # Measured beside results.json (timings vary between runs; results.json does not).
        try:
            efficiency = json.loads(eff_path.read_text())
        except ValueError as exc:
            raise QevalInputError(f"{eff_path}: not valid JSON ({exc}); the run directory is damaged") from None
        results = {**results, "efficiency": _checked(EfficiencyTable, {
            k: v for k, v in efficiency.items() if k != "schema"}, eff_path)}
    return Run(path=path, document=_checked(RunResults, results, results_path))


def _checked(model, data: dict, where: Path):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise QevalInputError(f"{where}: {'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}; "
                              "use the qeval that wrote the run") from None


def run_of(path: Path, results: RunResults | dict) -> Run:
    """A Run over `path`'s records with another document (a re-judged one)."""
    doc = results if isinstance(results, RunResults) else RunResults.model_validate(results)
    return Run(path=Path(path), document=doc)
