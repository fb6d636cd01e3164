"""results.json (schema-versioned), report.md and the terminal table. No prompt text, ever:
results carry sample ids, hashes and numbers."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qeval import __version__
from qeval.run.pipeline import CompareResult
from qeval.power import row_labels
from qeval.util.fileio import atomic_write_text
from qeval.run.store import write_jsonl
from qeval.rundir.schema import RESULTS_SCHEMA, RunResults
from qeval.rundir.write import paired_document, safe_name, write_documents, write_paired
from qeval.types import EXIT_CODES, Decision, TaskComparison, Verdict

_COLOR = {Decision.GO: "green", Decision.NO_GO: "red", Decision.INCONCLUSIVE: "yellow"}


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


def rotation_markdown(results: dict) -> list[str]:
    rot = results.get("rotation") or {}
    if not rot:
        return []
    lines = ["", "## Rotated options (permutation-robust scoring)", "",
             "Each item is scored under every cyclic rotation of its options; the verdict uses the "
             "mean over rotations of each option's log-softmax, so a preference for a position cancels out.",
             "", "| task | variant | items | acc % (rotation-averaged) | mean acc % per rotation | "
             "correct under all % | consistent % [95% CI] | picks by position (A, B, …) % |",
             "|---|---|---|---|---|---|---|---|"]
    for task, variants in rot.items():
        for name, r in variants.items():
            lines.append(f"| {task} | {name} | {r['n']} | {_pct(r['accuracy'])} | "
                         f"{_pct(r['mean_rotation_accuracy'])} | {_pct(r['all_rotations_accuracy'])} | "
                         f"{_interval_pct(r['consistency'])} | "
                         f"{' / '.join(f'{100 * x:.0f}' for x in r['position_shares'])} |")
    paired = [c for c in _mc(results["comparisons"]) if c.get("rotation")]
    if paired:
        lines += ["", "| task | candidate | Δ consistent pp [95% CI] | Δ mean acc per rotation pp [95% CI] |",
                  "|---|---|---|---|"]
        for c in paired:
            r = c["rotation"]
            lines.append(f"| {c['task']} | {c['candidate']} | {_delta_pp(r['consistency_delta'])} | "
                         f"{_delta_pp(r['mean_rotation_accuracy_delta'])} |")
    return lines + [""]


def _delta_pp(i: dict) -> str:
    return f"{100 * i['estimate']:+.1f} [{100 * i['low']:+.1f}, {100 * i['high']:+.1f}]"


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
    from qeval.report.html import write_html  # here: html_report reads run directories through this module

    write_html(tmp)


def write_results(folder: Path, results: RunResults | dict) -> None:
    """results.json, efficiency.json (when measured) and report.md into `folder`."""
    doc = results if isinstance(results, RunResults) else RunResults.model_validate(results)
    write_documents(folder, doc)
    atomic_write_text(folder / "report.md", markdown_report(doc.as_dict()))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _delta(c: dict | TaskComparison) -> str:
    d = c["delta"] if isinstance(c, dict) else c.delta.model_dump()
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _mc(comparisons: list[dict]) -> list[dict]:
    return [c for c in comparisons if c.get("kind", "multiple_choice") == "multiple_choice"]


def _text(comparisons: list[dict]) -> list[dict]:
    return [c for c in comparisons if c.get("kind") == "reference_text"]


def _gen(comparisons: list[dict]) -> list[dict]:
    return [c for c in comparisons if c.get("kind") == "generate"]


def _labelled(comparisons: list[dict]) -> list[dict]:
    """Comparisons with per-item correctness (chance level, high-risk items, areas)."""
    return [c for c in comparisons if c.get("kind", "multiple_choice") in ("multiple_choice", "generate")]


def _share_ci(i: dict) -> str:
    return f"{100 * i['estimate']:.1f} [{100 * i['low']:.1f}, {100 * i['high']:.1f}]"


def _failures(c: dict) -> str:
    return (f"{_pct(c['baseline_extraction_failure']['estimate'])} / "
            f"{_pct(c['candidate_extraction_failure']['estimate'])}")


def _kld(c: dict) -> str:
    k = c["kld_mean"]
    return f"{k['estimate']:.4f} ± {c['kld_se']:.4f} [{k['low']:.4f}, {k['high']:.4f}]"


def _engine_floor_lines(comparisons: list[dict]) -> list[str]:
    """One line per GGUF candidate and reference-text task: its KLD beside the engine's floor."""
    out = []
    for c in _text(comparisons):
        f = c.get("engine_floor")
        if f:
            share = f["kld_mean"]["estimate"] / c["kld_mean"]["estimate"] if c["kld_mean"]["estimate"] > 0 else 0.0
            out.append(f"{c['candidate']} on {c['task']}: KLD mean {c['kld_mean']['estimate']:.2e}, engine floor "
                       f"({f['variant']}) {f['kld_mean']['estimate']:.2e} [{f['kld_mean']['low']:.2e}, "
                       f"{f['kld_mean']['high']:.2e}], same top {100 * f['same_top']['estimate']:.2f}% "
                       f"— {100 * min(share, 1.0):.0f}% of this KLD is the engine's")
    return out


def _interval_pct(i: dict) -> str:
    return f"{100 * i['estimate']:.2f} [{100 * i['low']:.2f}, {100 * i['high']:.2f}]"


def _ratio(i: dict) -> str:
    return f"{i['estimate']:.4f} [{i['low']:.4f}, {i['high']:.4f}]"


def _reasons(counts: dict) -> str:
    return " / ".join(str(counts.get(k, 0)) for k in ("stop", "eos", "max_tokens"))


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f}"


def _times(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _speed_cell(row: dict, batch_one: bool, key: str) -> str:
    point = next((p for p in row["speed"] if (p["batch"] == 1) == batch_one), None)
    value = None if point is None else point[key]
    if value is None:
        return "—"
    ratio = (row.get("vs_baseline") or {}).get(f"{key.split('_')[0]}_{'b1' if batch_one else 'bN'}")
    return f"{value:.0f}" + ("" if row["role"] == "baseline" or ratio is None else f" ({ratio:.2f}×)")


def _quality_cell(row: dict) -> str:
    q = row.get("quality")
    if not q:
        return "baseline"
    d = q.get("worst_delta")
    worst = "" if d is None else f", worst Δ {100 * d['estimate']:+.1f} pp [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] ({q['worst_task']})"
    return f"{q['verdict']}{worst}"


def efficiency_rows(eff: dict) -> list[list[str]]:
    """One row per variant: what it buys (memory, speed) beside what it costs (quality)."""
    rows = []
    for r in eff["variants"]:
        vs = r.get("vs_baseline") or {}
        rows.append([
            r["variant"], "—" if r["bits_per_weight"] is None else f"{r['bits_per_weight']:.2f}",
            _mb(r["artefact_bytes"]), _mb(r["weight_bytes"]), _mb(r["predicted_weight_bytes"]),
            _times(vs.get("weight_bytes")), _mb(r["peak_memory_bytes"]), _times(vs.get("peak_memory")),
            f"{r['load_s']:.2f}", _speed_cell(r, True, "prefill_tok_s"), _speed_cell(r, True, "decode_tok_s"),
            _speed_cell(r, False, "prefill_tok_s"), _speed_cell(r, False, "decode_tok_s"), _quality_cell(r)])
    return rows


EFFICIENCY_COLUMNS = ["variant", "bits/weight", "artefact MiB", "weights MiB", "planner MiB",
                      "weights vs base", "peak MiB", "peak vs base", "load s", "prefill tok/s b1",
                      "decode tok/s b1", "prefill tok/s bN", "decode tok/s bN", "quality"]


def efficiency_markdown(eff: dict | None) -> list[str]:
    if not eff or not eff.get("variants"):
        return []
    p = eff["probe"]
    head = [c.replace("bN", f"b{p['batch']}") for c in EFFICIENCY_COLUMNS]
    lines = ["", "## What each variant buys (measured in this run)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in efficiency_rows(eff)]
    kinds = sorted({r["memory_kind"] for r in eff["variants"]})
    reused = [r["variant"] for r in eff["variants"] if not r["scored_here"]]
    lines += ["", f"Speed: a fixed neutral {p['prompt_tokens']}-token prompt (no task text), one prefill "
              f"and {p['new_tokens']} greedy decoding steps from the KV cache, logits of the last "
              f"position only; best of {p['repeats']} after a warm-up; {p.get('torch_threads')} torch "
              f"threads on {p.get('cpu_count')} CPUs. Ratios (×) are against the baseline measured "
              "in this run; timings from different runs or machines are not comparable. "
              f"Peak: {'; '.join(kinds)} (loading has its own peak, in efficiency.json: `load_peak_bytes`). "
              "Bits per weight: resident weight bytes × 8 / the baseline's parameter count. Planner: "
              "`qeval plan`'s weight bytes for the format as held. '—' means not measurable on that "
              "engine (qeval's llama.cpp backend runs one sequence at a time)."
              + (f" Records reused, speed probe only: {', '.join(reused)}." if reused else ""), ""]
    return lines


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
    lines += efficiency_markdown(results.get("efficiency"))
    if results.get("power"):
        lines += ["", "## Before scoring: what each task could detect", "",
                  "| task | candidate | n | discordance | from | detectable drop (pp) | margin (pp) | |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["power"]:
            flag = f"underpowered: needs ≈{r['n_needed']} items" if r["underpowered"] else ""
            margin = "—" if r["margin"] is None else f"{100 * r['margin']:.1f}"
            task, count = row_labels(r["task"], r.get("subset", "all"), r["n"], r.get("n_effective"))
            lines.append(f"| {task} | {r['candidate'] or 'all'} | {count} | "
                         f"{100 * r['discordance']:.1f}% | {r['discordance_source']} | "
                         f"{100 * r['mde']:.1f} | {margin} | {flag} |")
    # The multiple-choice table is left out only when generate tasks stand in its place.
    mc_table = bool(_mc(results["comparisons"])) or not _gen(results["comparisons"])
    lines += ["", "## Per task", "",
              "| task | candidate | n | base acc % | cand acc % | Δ pp [95% CI] | ↓ c→w | ↑ w→c | McNemar p | "
              "choice-KL mean | KL p95 | KL max | top-1 agree % | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"] if mc_table else []
    for c in _mc(results["comparisons"]):
        lines.append(
            f"| {c['task']} | {c['candidate']} | {c['n']} | {_pct(c['baseline_accuracy'])} | "
            f"{_pct(c['candidate_accuracy'])} | {_delta(c)} | {c['flips_correct_to_wrong']} | "
            f"{c['flips_wrong_to_correct']} | {c['mcnemar_p']:.3g} | {c['choice_kl_mean']['estimate']:.4f} | "
            f"{c['choice_kl_p95']['estimate']:.4f} | {c['choice_kl_max']:.3f} | "
            f"{_pct(c['top1_agreement']['estimate'])} | **{c['verdict']}** |"
        )
    lines += rotation_markdown(results)
    if _gen(results["comparisons"]):
        lines += ["", "## Generation: greedy decoding, answer extracted by the task's pattern", "",
                  "| task | candidate | n | base acc % | cand acc % | Δ pp [95% CI] | ↓ c→w | ↑ w→c | McNemar p | "
                  "same answer % [95% CI] | exact output % [95% CI] | normalised output % [95% CI] | "
                  "no answer % base / cand | mean tokens base / cand | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in _gen(results["comparisons"]):
            lines.append(
                f"| {c['task']} | {c['candidate']} | {c['n']} | {_pct(c['baseline_accuracy'])} | "
                f"{_pct(c['candidate_accuracy'])} | {_delta(c)} | {c['flips_correct_to_wrong']} | "
                f"{c['flips_wrong_to_correct']} | {c['mcnemar_p']:.3g} | {_share_ci(c['answer_agreement'])} | "
                f"{_share_ci(c['exact_output_agreement'])} | {_share_ci(c['normalised_output_agreement'])} | "
                f"{_failures(c)} | {c['baseline_mean_output_tokens']:.0f} / "
                f"{c['candidate_mean_output_tokens']:.0f} | **{c['verdict']}** |")
        lines += ["", "Outputs are compared by sha256 (exactly, and after lowercasing, replacing punctuation "
                  "with spaces and collapsing whitespace); \"same answer\" compares the extracted answers "
                  "(two failed extractions count as the same); \"no answer\" is the share of outputs where "
                  "the answer pattern did not match. Stop reasons (stop / eos / max_tokens): " + "; ".join(
                      f"{c['candidate']} on {c['task']}: base {_reasons(c['baseline_stop_reasons'])}, "
                      f"cand {_reasons(c['candidate_stop_reasons'])}" for c in _gen(results["comparisons"])), ""]
    if _text(results["comparisons"]):
        lines += ["", "## Reference text: token-level, label-free (llama.cpp --kl-divergence statistics)", "",
                  "| task | candidate | passages | tokens | KLD mean ± SE [95% CI] | median | p90 | p99 | "
                  "p99.9 | max | same top % [95% CI] | PPL base | PPL cand | PPL ratio [95% CI] | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in _text(results["comparisons"]):
            lines.append(
                f"| {c['task']} | {c['candidate']} | {c['n']} | {c['n_tokens']} | {_kld(c)} | "
                f"{c['kld_median']:.2e} | {c['kld_p90']:.2e} | {c['kld_p99']:.3g} | {c['kld_p999']:.3g} | "
                f"{c['kld_max']:.3g} | {_interval_pct(c['same_top'])} | {c['ppl_baseline']:.3f} | "
                f"{c['ppl_candidate']:.3f} | {_ratio(c['ppl_ratio'])} | **{c['verdict']}** |")
        floors = _engine_floor_lines(results["comparisons"])
        if floors:
            lines += ["", "Engine floor of the GGUF candidates (the unquantized F32 GGUF of the same weights on "
                      "llama.cpp, against the baseline, same tokens): KLD up to it is llama.cpp's own arithmetic "
                      "and conversion, not quantization.", "", *[f"- {line}" for line in floors]]
        k = sorted({c["top_k"] for c in _text(results["comparisons"])})
        lines += ["", f"KLD is KL(baseline ‖ candidate) per token over the baseline's top "
                  f"{', '.join(map(str, k))} tokens plus one bin for the rest (a lower bound on the "
                  "full-vocabulary KL); intervals resample whole passages.", ""]
    floor = results.get("noise_floor")
    if floor:
        lines += ["", f"## Noise floor: {floor['variant']['variant']} (the baseline recomputed along "
                  f"the {floor['path']} path)", ""]
        if _mc(floor["comparisons"]) or not _gen(floor["comparisons"]):
            lines += ["| task | flips both ways | discordance % | choice-KL mean | KL p95 | KL max | top-1 agree % |",
                      "|---|---|---|---|---|---|---|"]
        for c in _mc(floor["comparisons"]):
            lines.append(f"| {c['task']} | {c['flips_correct_to_wrong']} ↓ {c['flips_wrong_to_correct']} ↑ | "
                         f"{_pct(c['discordance'])} | {c['choice_kl_mean']['estimate']:.2e} | "
                         f"{c['choice_kl_p95']['estimate']:.2e} | {c['choice_kl_max']:.2e} | "
                         f"{_pct(c['top1_agreement']['estimate'])} |")
        for c in _gen(floor["comparisons"]):
            lines.append(f"\nGeneration {c['task']}: {c['flips_correct_to_wrong']} ↓ "
                         f"{c['flips_wrong_to_correct']} ↑, same answer {_pct(c['answer_agreement']['estimate'])}%, "
                         f"exact output {_pct(c['exact_output_agreement']['estimate'])}%, normalised output "
                         f"{_pct(c['normalised_output_agreement']['estimate'])}%")
        for c in _text(floor["comparisons"]):
            lines.append(f"\nReference text {c['task']}: KLD mean {c['kld_mean']['estimate']:.2e}, max "
                         f"{c['kld_max']:.2e}, same top {_pct(c['same_top']['estimate'])}%, PPL ratio "
                         f"{c['ppl_ratio']['estimate']:.5f}")
        lines += ["", "Effects no larger than these come from numerics alone; with "
                  "`require_above_noise_floor` a NO_GO needs more.", ""]
    lines += ["", "Chance level, the best answer-cue heuristic (options read without the question) and "
              "the baseline's evidence against both:", ""]
    seen = set()
    for c in _labelled(results["comparisons"]):
        if c["task"] in seen:
            continue
        seen.add(c["task"])
        cue = (f"; best cue heuristic '{c['cue_heuristic']}' {_pct(c['cue_accuracy'])}% (p = "
               f"{c['baseline_above_cue_p']:.3g})" if c.get("cue_heuristic") else "")
        lines.append(f"- {c['task']}: baseline {_pct(c['baseline_accuracy'])}% vs chance "
                     f"{_pct(c['baseline_chance'])}% (one-sided exact p = {c['baseline_above_chance_p']:.3g}){cue}")
    lines += ["", "## How the verdict was combined", "", results.get("combination", ""), "",
              "## Why", ""]
    for c in results["comparisons"]:
        lines.append(f"### {c['candidate']} on {c['task']}: {c['verdict']}")
        for r in c["rules"]:
            lines.append(f"- `{r['rule']}` → {r['decision']}: {r['reason']}")
        lines.append("")
    lines += ["## High-risk items (sample ids only)", "",
              "| task | candidate | n high-risk | base acc % | cand acc % | correct→wrong | wrong→correct |",
              "|---|---|---|---|---|---|---|"]
    for c in _labelled(results["comparisons"]):
        h = c["high_risk"]
        if not h["n"]:
            continue
        lines.append(f"| {c['task']} | {c['candidate']} | {h['n']} | {_pct(h['baseline_accuracy'])} | "
                     f"{_pct(h['candidate_accuracy'])} | {', '.join(h['correct_to_wrong']) or '—'} | "
                     f"{', '.join(h['wrong_to_correct']) or '—'} |")
    lines += ["", "## Per area (Δ accuracy, percentage points)", ""]
    for c in _labelled(results["comparisons"]):
        cats = c["categories"]
        if len(cats) <= 1:
            continue
        lines.append(f"**{c['candidate']} on {c['task']}**: " + "; ".join(
            f"{k['category']} {100 * k['delta']:+.1f} (n={k['n']}, ↓{k['flips_correct_to_wrong']} ↑{k['flips_wrong_to_correct']})"
            for k in cats))
        lines.append("")
    methods = sorted({c["delta"]["method"] for c in _labelled(results["comparisons"])})
    lines += ["---", "Statistics: Δ is candidate − baseline accuracy on the same items; its interval is "
              f"{'; '.join(methods)} (chosen over the paired bootstrap because that degenerates when "
              "few items flip). McNemar is exact on the discordant pairs. Choice-KL is "
              "KL(baseline ‖ candidate) over the softmax of each item's choice scores (nats); its mean "
              "is bootstrapped over items (over clusters when the task declares them) and its 95th "
              "percentile has a distribution-free order-statistics interval. Top-1 agreement uses "
              "Wilson intervals." + (
                  " Generated outputs are greedy (argmax, ties to the lowest token id); answer and output "
                  "agreement and extraction failures are shares of items with Wilson intervals."
                  if _gen(results["comparisons"]) else "")
              + " No prompt, option or response text is stored in this run directory "
              "unless --log-text was given.", ""]
    return "\n".join(lines)


def print_summary(console: Console, results: dict, out: Path | None) -> None:
    table = Table(title="qeval compare: candidate vs baseline, paired per item", show_lines=False)
    for col, kw in [("task", {}), ("candidate", {}), ("n", {"justify": "right"}),
                    ("base %", {"justify": "right"}), ("cand %", {"justify": "right"}),
                    ("Δ pp [95% CI]", {"justify": "right"}), ("↓c→w", {"justify": "right"}),
                    ("↑w→c", {"justify": "right"}), ("McNemar p", {"justify": "right"}),
                    ("KL mean", {"justify": "right"}), ("KL p95", {"justify": "right"}),
                    ("KL max", {"justify": "right"}),
                    ("top-1 %", {"justify": "right"}), ("verdict", {})]:
        table.add_column(col, **kw)
    for c in _mc(results["comparisons"]):
        dec = Decision(c["verdict"])
        table.add_row(
            c["task"], c["candidate"], str(c["n"]), _pct(c["baseline_accuracy"]),
            _pct(c["candidate_accuracy"]), _delta(c), str(c["flips_correct_to_wrong"]),
            str(c["flips_wrong_to_correct"]), f"{c['mcnemar_p']:.3g}",
            f"{c['choice_kl_mean']['estimate']:.4f}", f"{c['choice_kl_p95']['estimate']:.3f}",
            f"{c['choice_kl_max']:.3f}",
            _pct(c["top1_agreement"]["estimate"]), f"[{_COLOR[dec]}]{dec.value}[/]",
        )
    if table.rows:
        console.print(table)
    gens = _gen(results["comparisons"])
    if gens:
        gt = Table(title="generation: greedy outputs, answer extracted, paired per item")
        for col in ["task", "candidate", "n", "base %", "cand %", "Δ pp [95% CI]", "↓c→w", "↑w→c",
                    "McNemar p", "same answer %", "exact out %", "norm. out %", "no answer % b/c", "verdict"]:
            gt.add_column(col, justify="left" if col in ("task", "candidate", "verdict") else "right")
        for c in gens:
            dec = Decision(c["verdict"])
            gt.add_row(c["task"], c["candidate"], str(c["n"]), _pct(c["baseline_accuracy"]),
                       _pct(c["candidate_accuracy"]), _delta(c), str(c["flips_correct_to_wrong"]),
                       str(c["flips_wrong_to_correct"]), f"{c['mcnemar_p']:.3g}",
                       _pct(c["answer_agreement"]["estimate"]), _pct(c["exact_output_agreement"]["estimate"]),
                       _pct(c["normalised_output_agreement"]["estimate"]), _failures(c),
                       f"[{_COLOR[dec]}]{dec.value}[/]")
        console.print(gt)
    texts = _text(results["comparisons"])
    if texts:
        tt = Table(title="reference text: per-token KL(baseline ‖ candidate), label-free")
        for col in ["task", "candidate", "tokens", "KLD mean ± SE", "p99", "max", "same top %",
                    "PPL ratio [95% CI]", "verdict"]:
            tt.add_column(col, justify="left" if col in ("task", "candidate", "verdict") else "right")
        for c in texts:
            dec = Decision(c["verdict"])
            tt.add_row(c["task"], c["candidate"], str(c["n_tokens"]),
                       f"{c['kld_mean']['estimate']:.4f} ± {c['kld_se']:.4f}", f"{c['kld_p99']:.3f}",
                       f"{c['kld_max']:.2f}", f"{100 * c['same_top']['estimate']:.2f}",
                       _ratio(c["ppl_ratio"]), f"[{_COLOR[dec]}]{dec.value}[/]")
        console.print(tt)
    for task, variants in (results.get("rotation") or {}).items():
        console.print(f"rotated options on {task}: consistent under every rotation " + ", ".join(
            f"{name} {_pct(r['consistency']['estimate'])}%" for name, r in variants.items()), highlight=False)
    eff = results.get("efficiency")
    if eff and eff.get("variants"):
        n = eff["probe"]["batch"]
        et = Table(title=f"what each variant buys: measured in this run; (×) vs the baseline; tok/s at "
                         f"batch 1 and {n}; full table in report.md")
        for col in ["variant", "bits/w", "weights MiB", "peak MiB", "load s", "prefill b1",
                    "decode b1", f"prefill b{n}", f"decode b{n}", "verdict"]:
            et.add_column(col, justify="left" if col in ("variant", "verdict") else "right")
        for r, row in zip(eff["variants"], efficiency_rows(eff)):
            vs = r.get("vs_baseline") or {}
            et.add_row(row[0], row[1], f"{row[3]} ({_times(vs.get('weight_bytes'))})",
                       f"{row[6]} ({_times(vs.get('peak_memory'))})", row[8], *row[9:13],
                       (r.get("quality") or {}).get("verdict", "baseline"))
        console.print(et)
    b = results["baseline"]
    console.print(f"baseline {b['variant']}: computed in {b['compute_dtype']} on {b['device']} "
                  f"(requested {b['requested_dtype']})")
    for info in [b, *results["candidates"]]:
        for n in info["notes"]:
            console.print(f"  [dim]{info['variant']}: {n}[/]")
    floor = results.get("noise_floor")
    if floor:
        for c in _text(floor["comparisons"]):
            console.print(f"  noise floor ({floor['path']}) on {c['task']}: KLD mean "
                          f"{c['kld_mean']['estimate']:.2e}, same top {100 * c['same_top']['estimate']:.2f}%",
                          highlight=False)
        for c in _gen(floor["comparisons"]):
            console.print(f"  noise floor ({floor['path']}) on {c['task']}: discordance "
                          f"{_pct(c['discordance'])}%, same answer {_pct(c['answer_agreement']['estimate'])}%, "
                          f"exact output {_pct(c['exact_output_agreement']['estimate'])}%", highlight=False)
        for c in _mc(floor["comparisons"]):
            console.print(f"  noise floor ({floor['path']}) on {c['task']}: discordance "
                          f"{_pct(c['discordance'])}%, choice-KL mean {c['choice_kl_mean']['estimate']:.2e}, "
                          f"top-1 agreement {_pct(c['top1_agreement']['estimate'])}%", highlight=False)
    for line in _engine_floor_lines(results["comparisons"]):
        console.print(f"  engine floor: {line}", highlight=False)
    for r in results["reasons"]:
        console.print(f"  • {r}", highlight=False)
    if results.get("combination"):
        console.print(f"[dim]Combination: {results['combination']}[/]", highlight=False)
    overall = Decision(results["verdict"])
    per = ", ".join(f"{k} {v}" for k, v in results["per_candidate"].items())
    console.print(f"[bold {_COLOR[overall]}]Verdict: {overall.value}[/] ({per}); exit code {results['exit_code']}")
    if out is not None:
        console.print(f"Run directory: {out}  ({', '.join(run_files(out))})", highlight=False)


def run_files(out: Path) -> list[str]:
    """The main files a run directory holds, as written (efficiency.json only when measured)."""
    names = [n for n in ("results.json", "efficiency.json", "report.md", "report.html") if (out / n).is_file()]
    return names + (["records/"] if (out / "records").is_dir() else [])


STAGE_NAMES = {"prepare": "quantize/export", "load": "load", "tokenize": "tokenize",
               "score": "score", "probe": "speed probe"}


def time_breakdown(timings: dict) -> str:
    """One line: where a run's wall time went, each stage summed over the variants."""
    stages: dict[str, float] = {}
    for per_variant in timings.get("stages_s", {}).values():
        for k, x in per_variant.items():
            stages[k] = stages.get(k, 0.0) + x
    parts = [("model", timings.get("model_preparation_s", 0.0))]
    parts += [(STAGE_NAMES.get(k, k), stages[k]) for k in STAGE_NAMES if k in stages]
    parts.append(("statistics", timings.get("statistics_s", 0.0)))
    total = timings.get("total_s", 0.0)
    rest = total - sum(x for _, x in parts)
    text = " · ".join(f"{name} {x:.1f} s" for name, x in parts)
    return f"wall time {total:.1f} s: {text} · other {max(rest, 0.0):.1f} s"
