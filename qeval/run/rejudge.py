"""`qeval gate RUN_DIR --policy P`: judge a finished run again under another policy.

Pure, no model: every comparison's summary numbers come from results.json and what the gate
recomputes its bounds from (per-item outcomes, per-passage sums) from paired.json beside it; the
same `verdict.judge` the compare ran then decides under the new policy, with the run's own bootstrap
size and seed — so the stored run's own policy reproduces its verdicts exactly.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from pydantic import ValidationError

from qeval.efficiency import quality
from qeval.errors import QevalInputError
from qeval.gate import GatePolicy
from qeval.verdict import judge
from qeval.kinds import DEFAULT_KIND, kind_of
from qeval.run.document import verdict_fields
from qeval.rundir.read import Run, run_of
from qeval.rundir.schema import PAIRED_FILE, PAIRED_SCHEMA
# What results.json adds to a comparison: the verdict of the policy it was judged with.
_JUDGED = ("verdict", "rules")


def _paired(run: Run) -> dict:
    path = run.path / PAIRED_FILE
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise QevalInputError(f"{path}: not found; this run was written by a qeval without `qeval gate` "
                              "support: run its compare again (stored records are reused)") from None
    except ValueError as exc:
        raise QevalInputError(f"{path}: not valid JSON ({exc}); the run directory is damaged") from None
    if not isinstance(data, dict) or data.get("schema") != PAIRED_SCHEMA:
        raise QevalInputError(f"{path}: schema is not {PAIRED_SCHEMA!r}; use the qeval that wrote the run")
    return data


def _rebuild(stored: list[dict], paired: list[dict], where: Path) -> list:
    """Comparison objects from results.json's dicts and paired.json's per-item parts."""
    parts = {(p["task"], p["candidate"]): p for p in paired}
    out = []
    for c in stored:
        kind = kind_of(c.get("kind", DEFAULT_KIND), where / "results.json")
        cls, part, part_cls = kind.comparison_type, kind.paired_part, kind.paired_type
        p = parts.get((c["task"], c["candidate"]))
        if p is None or part not in p:
            raise QevalInputError(f"{where / PAIRED_FILE}: no paired {part} of {c['candidate']!r} on "
                                  f"{c['task']!r}; the run directory is damaged")
        fields = {k: v for k, v in c.items() if k not in _JUDGED}
        try:
            out.append(cls.model_validate({**fields, part: part_cls.model_validate(p[part])}))
        except ValidationError as exc:
            e = exc.errors()[0]
            raise QevalInputError(f"{where}: comparison of {c['candidate']!r} on {c['task']!r}: "
                                  f"{'.'.join(map(str, e['loc']))}: {e['msg']}; use the qeval that "
                                  "wrote the run") from None
    return out


def rejudge(run: Run, policy: GatePolicy, *, policy_file: Path) -> dict:
    """A new results dict: the stored run judged under `policy` (verdicts, reasons, rules, exit
    code, the efficiency table's quality column); everything measured is unchanged. It records
    which run and which policy it came from."""
    r = run.results
    paired = _paired(run)
    comparisons = _rebuild(r["comparisons"], paired.get("comparisons", []), run.path)
    floor = r.get("noise_floor") or {}
    floors = {c.task: c for c in _rebuild(floor.get("comparisons", []), paired.get("noise_floor", []),
                                          run.path)}
    cfg = r.get("config", {})
    verdict = judge(comparisons, policy, floors=floors, n_boot=cfg.get("n_boot", 10_000),
                    seed=cfg.get("seed", 20261122))
    out = {**r, **verdict_fields(comparisons, verdict),
           "policy": {"file": str(policy_file), **policy.model_dump(mode="json")},
           "rejudged": {"run_dir": str(run.path), "verdict": r["verdict"], "exit_code": r["exit_code"],
                        "policy": r.get("policy"), "created_at": r.get("created_at"),
                        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
    eff = r.get("efficiency")
    if eff:
        rows = [{**row, "quality": quality(row["variant"], comparisons, verdict.tasks, verdict.per_candidate)}
                if row.get("role") == "candidate" else row for row in eff.get("variants", [])]
        out["efficiency"] = {**eff, "variants": rows}
    return out


def write_rejudged(out_dir: Path, run: Run, results: dict) -> None:
    """results.json, efficiency.json, report.md and report.html into out_dir (atomically as a
    folder: written beside it, then moved into place, replacing an earlier re-judgement). The HTML
    report's KL plot reads the records of the original run."""
    import shutil

    from qeval.report.html import REPORT_FILE, render_html
    from qeval.util.fileio import atomic_write_text
    from qeval.run.document import write_results

    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_results(tmp, results)
        atomic_write_text(tmp / REPORT_FILE, render_html(run_of(run.path, results)))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.replace(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
