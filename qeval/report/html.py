"""report.html: the run as one self-contained page (inline CSS and SVG, no script, no address of
any kind), beside report.md and results.json.

Built from the run directory alone (qeval.rundir.read.load_run), so `qeval report DIR` can rebuild it
for an earlier run. It shows ids, hashes and numbers only: even when the run opted in to
--log-text, nothing from texts/ is read.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from qeval.errors import QevalInputError
from qeval.report import plots
from qeval.report.by_kind import view
from qeval.rundir.read import Run, load_run
from qeval.rundir.schema import RunResults
from qeval.types import Interval
from qeval.util.fileio import atomic_write_text

REPORT_FILE = "report.html"

_CSS = """
:root { color-scheme: light; --go: #1a7f37; --nogo: #cf222e; --inc: #9a6700; --muted: #57606a; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1280px; padding: 16px 24px 48px; color: #1f2328; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; }
.meta { color: var(--muted); margin: 0 0 16px; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
.banner { border-radius: 8px; padding: 14px 18px; margin: 12px 0 8px; border: 2px solid; }
.banner.GO { background: #dafbe1; border-color: var(--go); }
.banner.NO_GO { background: #ffebe9; border-color: var(--nogo); }
.banner.INCONCLUSIVE { background: #fff8c5; border-color: var(--inc); }
.banner .decision { font-size: 28px; font-weight: 700; }
.banner ul { margin: 8px 0 0; padding-left: 20px; }
.chip { display: inline-block; border-radius: 12px; padding: 1px 10px; margin: 2px 6px 2px 0;
        color: white; font-weight: 600; font-size: 13px; }
.chip.GO { background: var(--go); } .chip.NO_GO { background: var(--nogo); }
.chip.INCONCLUSIVE { background: var(--inc); }
figure { margin: 8px 0 24px; overflow-x: auto; } figcaption { color: var(--muted); font-size: 13px; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; white-space: normal; vertical-align: bottom; } td.l, th.l { text-align: left; }
table.compact { font-size: 12px; } table.compact th, table.compact td { padding: 3px 6px; }
td.w { white-space: normal; } .unit { color: var(--muted); } #qeval-efficiency td.w { min-width: 16em; }
#qeval-tasks td:last-child, #qeval-tasks th:last-child { position: sticky; right: 0; }
#qeval-tasks td:last-child { background: white; }
b.GO { color: var(--go); } b.NO_GO { color: var(--nogo); } b.INCONCLUSIVE { color: var(--inc); }
details { margin: 4px 0; } summary { cursor: pointer; }
.note { color: var(--muted); font-size: 13px; }
"""


def write_html(run_dir: Path) -> Path:
    """Write report.html into a run directory (atomically) and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_FILE
    atomic_write_text(path, render_html(load_run(run_dir)))
    return path


def render_html(run: Run) -> str:
    r = run.document
    sections = [
        _header(r), _banner(r),
        '<nav><a href="#forest">Δ accuracy</a><a href="#flips">flips</a><a href="#kld">KL divergence</a>'
        '<a href="#memory">quality vs memory</a><a href="#tasks">per task</a>'
        + ('<a href="#efficiency">efficiency</a>' if r.efficiency else "")
        + '<a href="#why">why</a></nav>',
        _figure("forest", "Δ accuracy with 95% intervals and margins", plots.forest_plot(r),
                "Paired Δ accuracy, candidate − baseline, on the same items. GO needs the lower bound "
                "above −margin; NO_GO needs the upper bound below it (one-sided, Bonferroni-corrected "
                "across a candidate's tests)."),
        _figure("flips", "Flips by direction and risk level", plots.flips_plot(r),
                "Items the candidate answers differently from the baseline's correctness: "
                "correct→wrong (losses) and wrong→correct (gains), high-risk items darker."),
        _figure("kld", "KL divergence distributions", _kld_svg(run),
                "Per-item choice-KL (multiple choice) and per-token KL (reference text), recomputed "
                "from the stored records."),
        _figure("memory", "Quality vs memory", plots.quality_memory_plot(r),
                "Each variant against its worst task, at its resident weight memory (filled marker) and, "
                "when this run measured efficiency, at its peak memory after loading, while scoring "
                "and in the speed probe (hollow marker on the same row)."),
        _task_table(r),
        _position_table(run.results.get("comparisons") or []),
        _efficiency_table(run.results.get("efficiency")),  # report.md's cells, from the dict
        _why(r),
        '<p class="note">This page holds task ids, sample ids, variant names and numbers only: no prompt, '
        "option, reference or output text (with --log-text those stay in texts/, never here). Everything "
        "is inline; it opens offline.</p>",
    ]
    title = f"qeval: {r.verdict.value}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(s for s in sections if s) + "\n</body></html>\n")


# ---------------------------------------------------------------- pieces


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _interval_pp(i: Interval) -> str:
    return f"{100 * i.estimate:+.1f} [{100 * i.low:+.1f}, {100 * i.high:+.1f}]"


def _header(r: RunResults) -> str:
    b = r.baseline
    policy = (r.policy or {}).get("name", "—")
    return (f"<h1>qeval compare: {_esc(r.model.source)}</h1>"
            f'<p class="meta">fingerprint {_esc(r.model.fingerprint[:16])} · baseline '
            f"{_esc(b.variant)} computed in {_esc(b.compute_dtype)} on {_esc(b.device)} "
            f"(requested {_esc(b.requested_dtype)}) · policy {_esc(policy)} · {_esc(r.created_at)}"
            f" · qeval {_esc(r.qeval_version)}</p>")


def _banner(r: RunResults) -> str:
    verdict = r.verdict.value
    chips = "".join(f'<span class="chip {_esc(v.value)}" data-candidate="{_esc(k)}">{_esc(k)}: {_esc(v.value)}</span>'
                    for k, v in r.per_candidate.items())
    reasons = "".join(f"<li>{_esc(x)}</li>" for x in r.reasons)
    return (f'<section id="verdict" class="banner {_esc(verdict)}" data-verdict="{_esc(verdict)}">'
            f'<div class="decision">{_esc(verdict.replace("_", "-"))}</div>'
            f"<div>exit code {_esc(r.exit_code)} · per candidate: {chips}</div>"
            f"<ul class=\"reasons\">{reasons}</ul></section>")


def _figure(anchor: str, heading: str, svg: str, caption: str) -> str:
    return (f'<h2 id="{anchor}">{_esc(heading)}</h2><figure>{plots.inline_svg(svg)}'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _kld_svg(run: Run) -> str:
    """The KL plot needs the records; a run directory without them still gets the rest."""
    try:
        series = plots.kl_series(run)
    except QevalInputError as exc:
        return plots.kld_plot([], empty_note=f"Records not readable: {exc}")
    return plots.kld_plot(series)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, left: int, table_id: str,
           cls: str = "", wrap: Iterable[int] = (), text: Iterable[int] = ()) -> str:
    """`left`: how many leading columns are text (left-aligned), `text` any other such columns;
    `wrap`: columns whose cells may wrap. Cells arrive escaped."""
    wrap, text = set(wrap), set(text)

    def classes(i: int) -> str:
        return " ".join(c for c, on in (("l", i < left or i in text), ("w", i in wrap)) if on)

    head = "".join(f'<th class="{classes(i)}">{_esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{classes(i)}">{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return (f'<div class="table-wrap"><table id="{table_id}" class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _unit(what: str) -> str:
    """What a number is, in brackets, kept on one line (a cell may break before it)."""
    return f'<span class="unit">({_esc(what).replace(" ", "&nbsp;")})</span>'


def _task_row(c) -> list[str]:
    verdict = f'<b class="{_esc(c.verdict.value)}">{_esc(c.verdict.value)}</b>'
    v = view(c)
    if not v.labelled:  # reference text: token-level, label-free
        return [_esc(c.task), _esc(c.kind), _esc(c.candidate),
                f"{c.n}&nbsp;passages / {c.n_tokens}&nbsp;tokens", "—", "—", "—", "—", "—",
                f"{v.kl.mean(c):.4g} {_unit('per token')}",
                f"{pct(c.same_top.estimate)} {_unit('same top token')}",
                f"PPL&nbsp;ratio&nbsp;{c.ppl_ratio.estimate:.4f}", verdict]
    high = c.high_risk
    agreement, what = v.agreement(c)
    kl = f"{v.kl.mean(c):.4g} {_unit('per ' + v.kl.unit)}" if v.kl else "—"
    return [_esc(c.task), _esc(c.kind), _esc(c.candidate), str(c.n), pct(c.baseline_accuracy),
            pct(c.candidate_accuracy), _interval_pp(c.delta),
            f"{c.flips_correct_to_wrong} ({len(high.correct_to_wrong)})",
            f"{c.flips_wrong_to_correct} ({len(high.wrong_to_correct)})", kl,
            f"{pct(agreement)} {_unit(what)}",
            f"McNemar&nbsp;p&nbsp;{c.mcnemar_p:.3g}", verdict]


def _task_table(r: RunResults) -> str:
    headers = ["task", "kind", "candidate", "n", "base acc %", "cand acc %", "Δ pp [95% CI]",
               "↓ c→w (high-risk)", "↑ w→c (high-risk)", "KL mean, nats", "agreement %", "test",
               "verdict"]
    rows = [_task_row(c) for c in r.comparisons]
    return ('<h2 id="tasks">Per task</h2>'
            + _table(headers, rows, left=3, table_id="qeval-tasks", cls="compact", wrap={3, 9, 10, 11},
                     text={11})
            + '<p class="note">Δ is candidate − baseline accuracy on the same items (Tango score interval; '
              "Rao–Scott when clustered). KL is KL(baseline ‖ candidate): over the softmax of the choice "
              "scores per item, or per token over the baseline's top-k plus a tail bin.</p>")


def _efficiency_cell(cell: str, verdicts: Iterable[str]) -> str:
    """report.md's cell, escaped; a quality cell's leading verdict in its colour."""
    for v in verdicts:
        if cell == v or cell.startswith(f"{v},"):
            return f'<b class="{_esc(v)}">{_esc(v)}</b>{_esc(cell[len(v):])}'
    return _esc(cell)


def _markdown_prose(line: str) -> str:
    """A line of report.md's prose: escaped, `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _esc(line))


def _efficiency_table(eff: dict | None) -> str:
    """The efficiency section: the very cells, columns, heading and notes of report.md's table
    (qeval.report.markdown.efficiency_rows / efficiency_markdown); older runs have none."""
    if not eff or not eff.get("variants"):
        return ""
    from qeval.report.tables import efficiency_markdown, efficiency_table  # report → html_report

    markdown = efficiency_markdown(eff)
    heading = next((line[3:] for line in markdown if line.startswith("## ")), "Efficiency")
    prose = [line for line in markdown if line.strip() and not line.startswith(("|", "#"))]
    headers, cells = efficiency_table(eff)
    verdicts = ("INCONCLUSIVE", "NO_GO", "GO")
    rows = [[_efficiency_cell(cell, verdicts) for cell in row] for row in cells]
    return (f'<h2 id="efficiency">{_esc(heading)}</h2>'
            + _table(headers, rows, left=1, table_id="qeval-efficiency", cls="compact",
                     wrap={len(headers) - 1}, text={len(headers) - 1})
            + "".join(f'<p class="note">{_markdown_prose(line)}</p>' for line in prose))


def _position_table(comparisons: list[dict]) -> str:
    """Reference-text KLD by position bucket (tasks with `position_buckets`): report.md's cells."""
    from qeval.report.tables import POSITION_HEADERS, POSITION_NOTE, position_rows

    rows = position_rows(comparisons)
    if not rows:
        return ""
    return ('<h2 id="positions">KL divergence by position</h2>'
            + _table(POSITION_HEADERS, [[_esc(cell) for cell in row] for row in rows], left=2,
                     table_id="qeval-positions", cls="compact")
            + f'<p class="note">{_esc(POSITION_NOTE)}</p>')


def _why(r: RunResults) -> str:
    blocks = []
    for c in r.comparisons:
        rules = "".join(f"<li><code>{_esc(x.rule)}</code> → {_esc(x.decision.value)}: {_esc(x.reason)}</li>"
                        for x in c.rules)
        blocks.append(f"<details><summary>{_esc(c.candidate)} on {_esc(c.task)}: "
                      f"<b>{_esc(c.verdict.value)}</b></summary><ul>{rules}</ul></details>")
    combination = r.combination
    return ('<h2 id="why">Why</h2>' + (f"<p>{_esc(combination)}</p>" if combination else "")
            + "".join(blocks))
