"""Cells and tables shared by report.md, the terminal summary and the HTML report: numbers as
text, per-kind filters of results.json's comparisons, the efficiency table, the time breakdown."""

from __future__ import annotations

from pathlib import Path

from qeval.types import Decision, TaskComparison

COLOR = {Decision.GO: "green", Decision.NO_GO: "red", Decision.INCONCLUSIVE: "yellow"}


def delta_pp(i: dict) -> str:
    return f"{100 * i['estimate']:+.1f} [{100 * i['low']:+.1f}, {100 * i['high']:+.1f}]"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def delta(c: dict | TaskComparison) -> str:
    d = c["delta"] if isinstance(c, dict) else c.delta.model_dump()
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def choice_comparisons(comparisons: list[dict]) -> list[dict]:
    return [c for c in comparisons if c.get("kind", "multiple_choice") == "multiple_choice"]


def text_comparisons(comparisons: list[dict]) -> list[dict]:
    return [c for c in comparisons if c.get("kind") == "reference_text"]


def generate_comparisons(comparisons: list[dict]) -> list[dict]:
    return [c for c in comparisons if c.get("kind") == "generate"]


def labelled_comparisons(comparisons: list[dict]) -> list[dict]:
    """Comparisons with per-item correctness (chance level, high-risk items, areas)."""
    return [c for c in comparisons if c.get("kind", "multiple_choice") in ("multiple_choice", "generate")]


def share_ci(i: dict) -> str:
    return f"{100 * i['estimate']:.1f} [{100 * i['low']:.1f}, {100 * i['high']:.1f}]"


def failures_cell(c: dict) -> str:
    return (f"{pct(c['baseline_extraction_failure']['estimate'])} / "
            f"{pct(c['candidate_extraction_failure']['estimate'])}")


def kld_cell(c: dict) -> str:
    k = c["kld_mean"]
    return f"{k['estimate']:.4f} ± {c['kld_se']:.4f} [{k['low']:.4f}, {k['high']:.4f}]"


def bucket_label(b: dict) -> str:
    """A position bucket's range in tokens: "0–1k", "4k–8k", "8k+"."""
    def k(n: int) -> str:
        return f"{n // 1024}k" if n % 1024 == 0 and n else str(n)
    return f"{k(b['start'])}+" if b.get("end") is None else f"{k(b['start'])}–{k(b['end'])}"


def position_rows(comparisons: list[dict]) -> list[list[str]]:
    """One row per reference-text comparison and position bucket (tasks with `position_buckets`):
    task, candidate, positions, passages, tokens, KLD mean [95% CI], p99, and the mean relative to
    the first bucket's."""
    rows = []
    for c in text_comparisons(comparisons):
        buckets = c.get("by_position") or []
        first = buckets[0]["kld_mean"]["estimate"] if buckets else 0.0
        for b in buckets:
            k = b["kld_mean"]
            rel = f"{k['estimate'] / first:.2f}×" if first > 0 else "—"
            rows.append([c["task"], c["candidate"], bucket_label(b), str(b["n"]), str(b["n_tokens"]),
                         f"{k['estimate']:.4f} [{k['low']:.4f}, {k['high']:.4f}]", f"{b['kld_p99']:.3g}", rel])
    return rows


POSITION_HEADERS = ["task", "candidate", "positions", "passages", "tokens", "KLD mean [95% CI]", "p99",
                    "vs first"]
POSITION_NOTE = ("KLD by position in the passage (tokens before the predicted one): does the damage grow "
                 "with context length? Each bucket's interval resamples whole passages, never tokens; "
                 "\"vs first\" is the bucket's mean over the first bucket's.")


def engine_floor_lines(comparisons: list[dict]) -> list[str]:
    """One line per GGUF candidate and reference-text task: its KLD beside the engine's floor."""
    out = []
    for c in text_comparisons(comparisons):
        f = c.get("engine_floor")
        if f:
            share = f["kld_mean"]["estimate"] / c["kld_mean"]["estimate"] if c["kld_mean"]["estimate"] > 0 else 0.0
            out.append(f"{c['candidate']} on {c['task']}: KLD mean {c['kld_mean']['estimate']:.2e}, engine floor "
                       f"({f['variant']}) {f['kld_mean']['estimate']:.2e} [{f['kld_mean']['low']:.2e}, "
                       f"{f['kld_mean']['high']:.2e}], same top {100 * f['same_top']['estimate']:.2f}% "
                       f"— {100 * min(share, 1.0):.0f}% of this KLD is the engine's")
    return out


def interval_pct(i: dict) -> str:
    return f"{100 * i['estimate']:.2f} [{100 * i['low']:.2f}, {100 * i['high']:.2f}]"


def ratio_cell(i: dict) -> str:
    return f"{i['estimate']:.4f} [{i['low']:.4f}, {i['high']:.4f}]"


def reasons_cell(counts: dict) -> str:
    return " / ".join(str(counts.get(k, 0)) for k in ("stop", "eos", "max_tokens"))


def mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f}"


def times_cell(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def speed_cell(row: dict, batch_one: bool, key: str) -> str:
    point = next((p for p in row["speed"] if (p["batch"] == 1) == batch_one), None)
    value = None if point is None else point[key]
    if value is None:
        return "—"
    ratio = (row.get("vs_baseline") or {}).get(f"{key.split('_')[0]}_{'b1' if batch_one else 'bN'}")
    return f"{value:.0f}" + ("" if row["role"] == "baseline" or ratio is None else f" ({ratio:.2f}×)")


def quality_cell(row: dict) -> str:
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
            mib(r["artefact_bytes"]), mib(r["weight_bytes"]), mib(r["predicted_weight_bytes"]),
            times_cell(vs.get("weight_bytes")), mib(r["peak_memory_bytes"]), times_cell(vs.get("peak_memory")),
            f"{r['load_s']:.2f}", speed_cell(r, True, "prefill_tok_s"), speed_cell(r, True, "decode_tok_s"),
            speed_cell(r, False, "prefill_tok_s"), speed_cell(r, False, "decode_tok_s"), quality_cell(r)])
    return rows


def efficiency_table(eff: dict) -> tuple[list[str], list[list[str]]]:
    """The columns (bN spelled with the probe's batch) and rows of report.md's and the HTML
    report's table: efficiency_rows, plus a `KV cache MiB` column after `peak vs base` only when
    some variant measured its KV cache (`+kv=` variants), so older reports stay as they were."""
    columns, rows = list(EFFICIENCY_COLUMNS), efficiency_rows(eff)
    if any(r.get("kv_cache_bytes") is not None for r in eff["variants"]):
        columns.insert(8, "KV cache MiB")
        for r, row in zip(eff["variants"], rows):
            row.insert(8, mib(r.get("kv_cache_bytes")))
    return [c.replace("bN", f"b{eff['probe']['batch']}") for c in columns], rows


EFFICIENCY_COLUMNS = ["variant", "bits/weight", "artefact MiB", "weights MiB", "planner MiB",
                      "weights vs base", "peak MiB", "peak vs base", "load s", "prefill tok/s b1",
                      "decode tok/s b1", "prefill tok/s bN", "decode tok/s bN", "quality"]


def efficiency_markdown(eff: dict | None) -> list[str]:
    if not eff or not eff.get("variants"):
        return []
    p = eff["probe"]
    head, rows = efficiency_table(eff)
    lines = ["", "## What each variant buys (measured in this run)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
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
