"""Terminal feedback: status lines and progress bars (rich), or silence for tests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from qeval.report.tables import (
    POSITION_HEADERS,
    position_rows,
    COLOR,
    choice_comparisons,
    delta,
    efficiency_rows,
    engine_floor_lines,
    failures_cell,
    generate_comparisons,
    pct,
    ratio_cell,
    run_files,
    text_comparisons,
    times_cell,
)
from qeval.types import Decision


class RichUI:
    def __init__(self, console: Console):
        self.console = console
        self._shared: Progress | None = None  # while variants run in parallel: one display for all bars

    def status(self, message: str) -> None:
        self.console.print(f"[cyan]•[/] {message}")

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)

    @contextmanager
    def bar(self, description: str, total: int):
        if self._shared is not None:  # a row of the shared display (rich's Progress is thread-safe)
            task = self._shared.add_task(description, total=total)
            yield lambda n=1: self._shared.advance(task, n) if self._shared is not None else None
            return
        with self._progress() as progress:
            task = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(task, n)

    @contextmanager
    def shared(self):
        """Every bar opened inside, from any thread, is a row of one live display: the progress of
        variants scored in parallel (qeval compare --executor ray)."""
        with self._progress() as progress:
            self._shared = progress
            try:
                yield
            finally:
                self._shared = None

    def power(self, rows) -> None:
        if not rows:
            return  # no multiple-choice task: nothing to detect in accuracy
        from rich.table import Table

        from qeval.power import row_labels

        table = Table(title="Before scoring: smallest accuracy drop each task can detect "
                      "(paired, power and α from the policy)", title_justify="left")
        for col in ("task", "candidate", "n", "discordance", "from", "detectable drop", "margin", ""):
            table.add_column(col, overflow="fold",
                             justify="right" if col in ("n", "discordance", "detectable drop", "margin") else "left")
        for r in rows:
            flag = (f"[yellow]underpowered: needs ≈{r.n_needed} items[/]" if r.underpowered
                    else "[green]ok[/]" if r.margin is not None else "")
            task, count = row_labels(r.task, r.subset, r.n, r.n_effective)
            table.add_row(task, r.candidate or "all", count, f"{100 * r.discordance:.1f}%",
                          r.discordance_source, f"{100 * r.mde:.1f} pp",
                          "—" if r.margin is None else f"{100 * r.margin:.1f} pp", flag)
        self.console.print(table)


class QuietUI:
    def status(self, message: str) -> None:
        pass

    @contextmanager
    def shared(self):
        yield

    def power(self, rows) -> None:
        pass

    @contextmanager
    def bar(self, description: str, total: int):
        yield lambda n=1: None


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
    for c in choice_comparisons(results["comparisons"]):
        dec = Decision(c["verdict"])
        table.add_row(
            c["task"], c["candidate"], str(c["n"]), pct(c["baseline_accuracy"]),
            pct(c["candidate_accuracy"]), delta(c), str(c["flips_correct_to_wrong"]),
            str(c["flips_wrong_to_correct"]), f"{c['mcnemar_p']:.3g}",
            f"{c['choice_kl_mean']['estimate']:.4f}", f"{c['choice_kl_p95']['estimate']:.3f}",
            f"{c['choice_kl_max']:.3f}",
            pct(c["top1_agreement"]["estimate"]), f"[{COLOR[dec]}]{dec.value}[/]",
        )
    if table.rows:
        console.print(table)
    gens = generate_comparisons(results["comparisons"])
    if gens:
        gt = Table(title="generation: greedy outputs, answer extracted, paired per item")
        for col in ["task", "candidate", "n", "base %", "cand %", "Δ pp [95% CI]", "↓c→w", "↑w→c",
                    "McNemar p", "same answer %", "exact out %", "norm. out %", "no answer % b/c", "verdict"]:
            gt.add_column(col, justify="left" if col in ("task", "candidate", "verdict") else "right")
        for c in gens:
            dec = Decision(c["verdict"])
            gt.add_row(c["task"], c["candidate"], str(c["n"]), pct(c["baseline_accuracy"]),
                       pct(c["candidate_accuracy"]), delta(c), str(c["flips_correct_to_wrong"]),
                       str(c["flips_wrong_to_correct"]), f"{c['mcnemar_p']:.3g}",
                       pct(c["answer_agreement"]["estimate"]), pct(c["exact_output_agreement"]["estimate"]),
                       pct(c["normalised_output_agreement"]["estimate"]), failures_cell(c),
                       f"[{COLOR[dec]}]{dec.value}[/]")
        console.print(gt)
    texts = text_comparisons(results["comparisons"])
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
                       ratio_cell(c["ppl_ratio"]), f"[{COLOR[dec]}]{dec.value}[/]")
        console.print(tt)
    positions = position_rows(results["comparisons"])
    if positions:
        pt = Table(title="reference text by position in the passage: per-token KLD")
        for col in POSITION_HEADERS:
            pt.add_column(col, justify="left" if col in ("task", "candidate") else "right")
        for row in positions:
            pt.add_row(*row)
        console.print(pt)
    for task, variants in (results.get("rotation") or {}).items():
        console.print(f"rotated options on {task}: consistent under every rotation " + ", ".join(
            f"{name} {pct(r['consistency']['estimate'])}%" for name, r in variants.items()), highlight=False)
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
            et.add_row(row[0], row[1], f"{row[3]} ({times_cell(vs.get('weight_bytes'))})",
                       f"{row[6]} ({times_cell(vs.get('peak_memory'))})", row[8], *row[9:13],
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
        for c in text_comparisons(floor["comparisons"]):
            console.print(f"  noise floor ({floor['path']}) on {c['task']}: KLD mean "
                          f"{c['kld_mean']['estimate']:.2e}, same top {100 * c['same_top']['estimate']:.2f}%",
                          highlight=False)
        for c in generate_comparisons(floor["comparisons"]):
            console.print(f"  noise floor ({floor['path']}) on {c['task']}: discordance "
                          f"{pct(c['discordance'])}%, same answer {pct(c['answer_agreement']['estimate'])}%, "
                          f"exact output {pct(c['exact_output_agreement']['estimate'])}%", highlight=False)
        for c in choice_comparisons(floor["comparisons"]):
            console.print(f"  noise floor ({floor['path']}) on {c['task']}: discordance "
                          f"{pct(c['discordance'])}%, choice-KL mean {c['choice_kl_mean']['estimate']:.2e}, "
                          f"top-1 agreement {pct(c['top1_agreement']['estimate'])}%", highlight=False)
    for line in engine_floor_lines(results["comparisons"]):
        console.print(f"  engine floor: {line}", highlight=False)
    for r in results["reasons"]:
        console.print(f"  • {r}", highlight=False)
    if results.get("combination"):
        console.print(f"[dim]Combination: {results['combination']}[/]", highlight=False)
    overall = Decision(results["verdict"])
    per = ", ".join(f"{k} {v}" for k, v in results["per_candidate"].items())
    console.print(f"[bold {COLOR[overall]}]Verdict: {overall.value}[/] ({per}); exit code {results['exit_code']}")
    if out is not None:
        console.print(f"Run directory: {out}  ({', '.join(run_files(out))})", highlight=False)
