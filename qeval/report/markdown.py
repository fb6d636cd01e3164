"""report.md: results.json for people. No prompt text, ever: results carry sample ids, hashes
and numbers."""

from __future__ import annotations

from qeval.power import row_labels
from qeval.report.tables import (
    POSITION_HEADERS,
    POSITION_NOTE,
    position_rows,
    choice_comparisons,
    delta,
    delta_pp,
    efficiency_markdown,
    engine_floor_lines,
    failures_cell,
    generate_comparisons,
    interval_pct,
    kld_cell,
    labelled_comparisons,
    pct,
    ratio_cell,
    reasons_cell,
    share_ci,
    text_comparisons,
)


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
            lines.append(f"| {task} | {name} | {r['n']} | {pct(r['accuracy'])} | "
                         f"{pct(r['mean_rotation_accuracy'])} | {pct(r['all_rotations_accuracy'])} | "
                         f"{interval_pct(r['consistency'])} | "
                         f"{' / '.join(f'{100 * x:.0f}' for x in r['position_shares'])} |")
    paired = [c for c in choice_comparisons(results["comparisons"]) if c.get("rotation")]
    if paired:
        lines += ["", "| task | candidate | Δ consistent pp [95% CI] | Δ mean acc per rotation pp [95% CI] |",
                  "|---|---|---|---|"]
        for c in paired:
            r = c["rotation"]
            lines.append(f"| {c['task']} | {c['candidate']} | {delta_pp(r['consistency_delta'])} | "
                         f"{delta_pp(r['mean_rotation_accuracy_delta'])} |")
    return lines + [""]


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
    mc_table = bool(choice_comparisons(results["comparisons"])) or not generate_comparisons(results["comparisons"])
    lines += ["", "## Per task", "",
              "| task | candidate | n | base acc % | cand acc % | Δ pp [95% CI] | ↓ c→w | ↑ w→c | McNemar p | "
              "choice-KL mean | KL p95 | KL max | top-1 agree % | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"] if mc_table else []
    for c in choice_comparisons(results["comparisons"]):
        lines.append(
            f"| {c['task']} | {c['candidate']} | {c['n']} | {pct(c['baseline_accuracy'])} | "
            f"{pct(c['candidate_accuracy'])} | {delta(c)} | {c['flips_correct_to_wrong']} | "
            f"{c['flips_wrong_to_correct']} | {c['mcnemar_p']:.3g} | {c['choice_kl_mean']['estimate']:.4f} | "
            f"{c['choice_kl_p95']['estimate']:.4f} | {c['choice_kl_max']:.3f} | "
            f"{pct(c['top1_agreement']['estimate'])} | **{c['verdict']}** |"
        )
    lines += rotation_markdown(results)
    if generate_comparisons(results["comparisons"]):
        lines += ["", "## Generation: greedy decoding, answer extracted by the task's pattern", "",
                  "| task | candidate | n | base acc % | cand acc % | Δ pp [95% CI] | ↓ c→w | ↑ w→c | McNemar p | "
                  "same answer % [95% CI] | exact output % [95% CI] | normalised output % [95% CI] | "
                  "no answer % base / cand | mean tokens base / cand | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in generate_comparisons(results["comparisons"]):
            lines.append(
                f"| {c['task']} | {c['candidate']} | {c['n']} | {pct(c['baseline_accuracy'])} | "
                f"{pct(c['candidate_accuracy'])} | {delta(c)} | {c['flips_correct_to_wrong']} | "
                f"{c['flips_wrong_to_correct']} | {c['mcnemar_p']:.3g} | {share_ci(c['answer_agreement'])} | "
                f"{share_ci(c['exact_output_agreement'])} | {share_ci(c['normalised_output_agreement'])} | "
                f"{failures_cell(c)} | {c['baseline_mean_output_tokens']:.0f} / "
                f"{c['candidate_mean_output_tokens']:.0f} | **{c['verdict']}** |")
        lines += ["", "Outputs are compared by sha256 (exactly, and after lowercasing, replacing punctuation "
                  "with spaces and collapsing whitespace); \"same answer\" compares the extracted answers "
                  "(two failed extractions count as the same); \"no answer\" is the share of outputs where "
                  "the answer pattern did not match. Stop reasons (stop / eos / max_tokens): " + "; ".join(
                      f"{c['candidate']} on {c['task']}: base {reasons_cell(c['baseline_stop_reasons'])}, "
                      f"cand {reasons_cell(c['candidate_stop_reasons'])}" for c in generate_comparisons(results["comparisons"])), ""]
    if text_comparisons(results["comparisons"]):
        lines += ["", "## Reference text: token-level, label-free (llama.cpp --kl-divergence statistics)", "",
                  "| task | candidate | passages | tokens | KLD mean ± SE [95% CI] | median | p90 | p99 | "
                  "p99.9 | max | same top % [95% CI] | PPL base | PPL cand | PPL ratio [95% CI] | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in text_comparisons(results["comparisons"]):
            lines.append(
                f"| {c['task']} | {c['candidate']} | {c['n']} | {c['n_tokens']} | {kld_cell(c)} | "
                f"{c['kld_median']:.2e} | {c['kld_p90']:.2e} | {c['kld_p99']:.3g} | {c['kld_p999']:.3g} | "
                f"{c['kld_max']:.3g} | {interval_pct(c['same_top'])} | {c['ppl_baseline']:.3f} | "
                f"{c['ppl_candidate']:.3f} | {ratio_cell(c['ppl_ratio'])} | **{c['verdict']}** |")
        positions = position_rows(results["comparisons"])
        if positions:
            lines += ["", "| " + " | ".join(POSITION_HEADERS) + " |", "|" + "---|" * len(POSITION_HEADERS),
                      *["| " + " | ".join(row) + " |" for row in positions], "", POSITION_NOTE]
        floors = engine_floor_lines(results["comparisons"])
        if floors:
            lines += ["", "Engine floor of the GGUF candidates (the unquantized F32 GGUF of the same weights on "
                      "llama.cpp, against the baseline, same tokens): KLD up to it is llama.cpp's own arithmetic "
                      "and conversion, not quantization.", "", *[f"- {line}" for line in floors]]
        k = sorted({c["top_k"] for c in text_comparisons(results["comparisons"])})
        lines += ["", f"KLD is KL(baseline ‖ candidate) per token over the baseline's top "
                  f"{', '.join(map(str, k))} tokens plus one bin for the rest (a lower bound on the "
                  "full-vocabulary KL); intervals resample whole passages.", ""]
    floor = results.get("noise_floor")
    if floor:
        lines += ["", f"## Noise floor: {floor['variant']['variant']} (the baseline recomputed along "
                  f"the {floor['path']} path)", ""]
        if choice_comparisons(floor["comparisons"]) or not generate_comparisons(floor["comparisons"]):
            lines += ["| task | flips both ways | discordance % | choice-KL mean | KL p95 | KL max | top-1 agree % |",
                      "|---|---|---|---|---|---|---|"]
        for c in choice_comparisons(floor["comparisons"]):
            lines.append(f"| {c['task']} | {c['flips_correct_to_wrong']} ↓ {c['flips_wrong_to_correct']} ↑ | "
                         f"{pct(c['discordance'])} | {c['choice_kl_mean']['estimate']:.2e} | "
                         f"{c['choice_kl_p95']['estimate']:.2e} | {c['choice_kl_max']:.2e} | "
                         f"{pct(c['top1_agreement']['estimate'])} |")
        for c in generate_comparisons(floor["comparisons"]):
            lines.append(f"\nGeneration {c['task']}: {c['flips_correct_to_wrong']} ↓ "
                         f"{c['flips_wrong_to_correct']} ↑, same answer {pct(c['answer_agreement']['estimate'])}%, "
                         f"exact output {pct(c['exact_output_agreement']['estimate'])}%, normalised output "
                         f"{pct(c['normalised_output_agreement']['estimate'])}%")
        for c in text_comparisons(floor["comparisons"]):
            lines.append(f"\nReference text {c['task']}: KLD mean {c['kld_mean']['estimate']:.2e}, max "
                         f"{c['kld_max']:.2e}, same top {pct(c['same_top']['estimate'])}%, PPL ratio "
                         f"{c['ppl_ratio']['estimate']:.5f}")
        lines += ["", "Effects no larger than these come from numerics alone; with "
                  "`require_above_noise_floor` a NO_GO needs more.", ""]
    lines += ["", "Chance level, the best answer-cue heuristic (options read without the question) and "
              "the baseline's evidence against both:", ""]
    seen = set()
    for c in labelled_comparisons(results["comparisons"]):
        if c["task"] in seen:
            continue
        seen.add(c["task"])
        cue = (f"; best cue heuristic '{c['cue_heuristic']}' {pct(c['cue_accuracy'])}% (p = "
               f"{c['baseline_above_cue_p']:.3g})" if c.get("cue_heuristic") else "")
        lines.append(f"- {c['task']}: baseline {pct(c['baseline_accuracy'])}% vs chance "
                     f"{pct(c['baseline_chance'])}% (one-sided exact p = {c['baseline_above_chance_p']:.3g}){cue}")
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
    for c in labelled_comparisons(results["comparisons"]):
        h = c["high_risk"]
        if not h["n"]:
            continue
        lines.append(f"| {c['task']} | {c['candidate']} | {h['n']} | {pct(h['baseline_accuracy'])} | "
                     f"{pct(h['candidate_accuracy'])} | {', '.join(h['correct_to_wrong']) or '—'} | "
                     f"{', '.join(h['wrong_to_correct']) or '—'} |")
    lines += ["", "## Per area (Δ accuracy, percentage points)", ""]
    for c in labelled_comparisons(results["comparisons"]):
        cats = c["categories"]
        if len(cats) <= 1:
            continue
        lines.append(f"**{c['candidate']} on {c['task']}**: " + "; ".join(
            f"{k['category']} {100 * k['delta']:+.1f} (n={k['n']}, ↓{k['flips_correct_to_wrong']} ↑{k['flips_wrong_to_correct']})"
            for k in cats))
        lines.append("")
    methods = sorted({c["delta"]["method"] for c in labelled_comparisons(results["comparisons"])})
    lines += ["---", "Statistics: Δ is candidate − baseline accuracy on the same items; its interval is "
              f"{'; '.join(methods)} (chosen over the paired bootstrap because that degenerates when "
              "few items flip). McNemar is exact on the discordant pairs. Choice-KL is "
              "KL(baseline ‖ candidate) over the softmax of each item's choice scores (nats); its mean "
              "is bootstrapped over items (over clusters when the task declares them) and its 95th "
              "percentile has a distribution-free order-statistics interval. Top-1 agreement uses "
              "Wilson intervals." + (
                  " Generated outputs are greedy (argmax, ties to the lowest token id); answer and output "
                  "agreement and extraction failures are shares of items with Wilson intervals."
                  if generate_comparisons(results["comparisons"]) else "")
              + " No prompt, option or response text is stored in this run directory "
              "unless --log-text was given.", ""]
    return "\n".join(lines)
