"""results.json (schema-versioned), report.md and the terminal table. No prompt text, ever:
results carry sample ids, hashes and numbers."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
from .pipeline import CompareResult
from .fileio import atomic_write_text
from .runner import write_jsonl
from .types import EXIT_CODES, Decision, TaskComparison

RESULTS_SCHEMA = "qeval.results/1"

_COLOR = {Decision.GO: "green", Decision.NO_GO: "red", Decision.INCONCLUSIVE: "yellow"}


def results_dict(res: CompareResult, *, model: dict, policy: dict) -> dict:
    verdicts = {(t.task, t.candidate): t for t in res.verdict.tasks}
    comparisons = []
    for c in res.comparisons:
        v = verdicts[(c.task, c.candidate)]
        comparisons.append({
            **c.model_dump(mode="json"),
            "verdict": v.decision.value,
            "rules": [r.model_dump(mode="json") for r in v.rules],
        })
    return {
        "schema": RESULTS_SCHEMA,
        "qeval_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "verdict": res.verdict.decision.value,
        "exit_code": EXIT_CODES[res.verdict.decision],
        "per_candidate": {k: v.value for k, v in res.verdict.per_candidate.items()},
        "reasons": list(res.verdict.reasons),
        "model": model,
        "config": res.config.model_dump(mode="json"),
        "policy": policy,
        "baseline": res.baseline.info.model_dump(mode="json"),
        "candidates": [c.info.model_dump(mode="json") for c in res.candidates],
        "tasks": [{"id": t.spec.id, "version": t.spec.version, "n": len(t.samples),
                   "content_hash": t.content_hash, "path": t.path} for t in res.tasks],
        "comparisons": comparisons,
    }


def write_run(out: Path, res: CompareResult, results: dict, *, log_text: bool) -> None:
    """Everything goes to a temporary directory first, then moves into place: a failed run
    leaves nothing half-written."""
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for run in [res.baseline, *res.candidates]:
        folder = tmp / "records" / _safe(run.spec.name)
        for task_id, recs in run.records.items():
            write_jsonl(folder / f"{task_id}.jsonl", recs)
        # What actually ran (device, dtypes, kernels), beside the records it produced.
        atomic_write_text(folder / "backend.json", run.info.model_dump_json(indent=1) + "\n")
    atomic_write_text(tmp / "results.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    atomic_write_text(tmp / "timings.json", json.dumps({
        **res.timings,
        "reused_tasks": {r.spec.name: r.reused_tasks for r in [res.baseline, *res.candidates]},
    }, indent=1, sort_keys=True) + "\n")
    atomic_write_text(tmp / "report.md", markdown_report(results))
    if log_text:
        from .runner import render_prompt

        lines = []
        for t in res.tasks:
            for s in t.samples:
                ctx, conts = render_prompt(t.spec, s)
                lines.append(json.dumps({"task": t.spec.id, "sample_id": s.id, "prompt": ctx,
                                         "continuations": conts}))
        atomic_write_text(tmp / "texts" / "prompts.jsonl", "\n".join(lines) + "\n")
    if out.exists():
        raise FileExistsError(out)
    tmp.replace(out)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in name)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _delta(c: dict | TaskComparison) -> str:
    d = c["delta"] if isinstance(c, dict) else c.delta.model_dump()
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def markdown_report(results: dict) -> str:
    lines = [
        "# qeval compare",
        "",
        f"**Verdict: {results['verdict']}** (exit code {results['exit_code']})",
        "",
        f"Model: {results['model']['source']} — fingerprint `{results['model']['fingerprint'][:16]}`",
        "",
    ]
    for note in results["model"].get("notes", []):
        lines.append(f"> Note: {note}")
        lines.append("")
    lines += ["## Variants", "", "| variant | role | device | requested | computed | kernels | weight MB |",
              "|---|---|---|---|---|---|---|"]
    for role, info in [("baseline", results["baseline"])] + [("candidate", c) for c in results["candidates"]]:
        lines.append(f"| {info['variant']} | {role} | {info['device']} | {info['requested_dtype']} | "
                     f"{info['compute_dtype']} | {info['kernel']} | {info['weight_bytes'] / 1e6:.1f} |")
    notes = {n for info in [results["baseline"], *results["candidates"]] for n in info["notes"]}
    for n in sorted(notes):
        lines.append(f"\n> {n}")
    lines += ["", "## Per task", "",
              "| task | candidate | n | base acc % | cand acc % | Δ pp [95% CI] | ↓ c→w | ↑ w→c | McNemar p | "
              "choice-KL mean | KL max | top-1 agree % | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        lines.append(
            f"| {c['task']} | {c['candidate']} | {c['n']} | {_pct(c['baseline_accuracy'])} | "
            f"{_pct(c['candidate_accuracy'])} | {_delta(c)} | {c['flips_correct_to_wrong']} | "
            f"{c['flips_wrong_to_correct']} | {c['mcnemar_p']:.3g} | {c['choice_kl_mean']['estimate']:.4f} | "
            f"{c['choice_kl_max']:.3f} | {_pct(c['top1_agreement']['estimate'])} | **{c['verdict']}** |"
        )
    lines += ["", "Chance level and the baseline's evidence against it:", ""]
    seen = set()
    for c in results["comparisons"]:
        if c["task"] in seen:
            continue
        seen.add(c["task"])
        lines.append(f"- {c['task']}: baseline {_pct(c['baseline_accuracy'])}% vs chance "
                     f"{_pct(c['baseline_chance'])}% (one-sided exact p = {c['baseline_above_chance_p']:.3g})")
    lines += ["", "## Why", ""]
    for c in results["comparisons"]:
        lines.append(f"### {c['candidate']} on {c['task']}: {c['verdict']}")
        for r in c["rules"]:
            lines.append(f"- `{r['rule']}` → {r['decision']}: {r['reason']}")
        if c["high_risk_flips"]:
            lines.append(f"- high-risk items flipped correct→wrong (ids only): {', '.join(c['high_risk_flips'])}")
        lines.append("")
    lines += ["## Per area (Δ accuracy, percentage points)", ""]
    for c in results["comparisons"]:
        cats = c["categories"]
        if len(cats) <= 1:
            continue
        lines.append(f"**{c['candidate']} on {c['task']}**: " + "; ".join(
            f"{k['category']} {100 * k['delta']:+.1f} (n={k['n']}, ↓{k['flips_correct_to_wrong']} ↑{k['flips_wrong_to_correct']})"
            for k in cats))
        lines.append("")
    lines += ["---", "Statistics: Δ is candidate − baseline accuracy on the same items; its CI is a paired "
              "bootstrap over items. McNemar is exact on the discordant pairs. Choice-KL is "
              "KL(baseline ‖ candidate) over the softmax of each item's choice scores (nats). "
              "No prompt, option or response text is stored in this run directory unless "
              "--log-text was given.", ""]
    return "\n".join(lines)


def print_summary(console: Console, results: dict, out: Path | None) -> None:
    table = Table(title="qeval compare: candidate vs baseline, paired per item", show_lines=False)
    for col, kw in [("task", {}), ("candidate", {}), ("n", {"justify": "right"}),
                    ("base %", {"justify": "right"}), ("cand %", {"justify": "right"}),
                    ("Δ pp [95% CI]", {"justify": "right"}), ("↓c→w", {"justify": "right"}),
                    ("↑w→c", {"justify": "right"}), ("McNemar p", {"justify": "right"}),
                    ("KL mean", {"justify": "right"}), ("KL max", {"justify": "right"}),
                    ("top-1 %", {"justify": "right"}), ("verdict", {})]:
        table.add_column(col, **kw)
    for c in results["comparisons"]:
        dec = Decision(c["verdict"])
        table.add_row(
            c["task"], c["candidate"], str(c["n"]), _pct(c["baseline_accuracy"]),
            _pct(c["candidate_accuracy"]), _delta(c), str(c["flips_correct_to_wrong"]),
            str(c["flips_wrong_to_correct"]), f"{c['mcnemar_p']:.3g}",
            f"{c['choice_kl_mean']['estimate']:.4f}", f"{c['choice_kl_max']:.3f}",
            _pct(c["top1_agreement"]["estimate"]), f"[{_COLOR[dec]}]{dec.value}[/]",
        )
    console.print(table)
    b = results["baseline"]
    console.print(f"baseline {b['variant']}: computed in {b['compute_dtype']} on {b['device']} "
                  f"(requested {b['requested_dtype']})")
    for info in [b, *results["candidates"]]:
        for n in info["notes"]:
            console.print(f"  [dim]{info['variant']}: {n}[/]")
    for r in results["reasons"]:
        console.print(f"  • {r}")
    overall = Decision(results["verdict"])
    per = ", ".join(f"{k} {v}" for k, v in results["per_candidate"].items())
    console.print(f"[bold {_COLOR[overall]}]Verdict: {overall.value}[/] ({per}); exit code {results['exit_code']}")
    if out is not None:
        console.print(f"Run directory: {out}  (results.json, report.md, records/)")
