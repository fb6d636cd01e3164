"""The report's plots as hand-built SVG strings: no plotting library, no script, no network.

Each function is pure (results.json's dict, or numbers gathered from a run, in; SVG text out), so
the HTML report inlines the very same pictures a notebook shows with IPython.display.SVG. Every
plot is an `<svg>` with a stable id, class `qeval-plot`, a <title> and an aria-label; its rows
carry `data-task` / `data-candidate` so a test can count them. Labels are task ids, variant names
and numbers, always escaped: no prompt, option or output text ever reaches a plot.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np
from pydantic import ValidationError

from qeval.gate import GatePolicy
from qeval.rundir.read import Run

SVG_NAMESPACE = "http://www.w3.org/2000/svg"

FOREST_ID = "qeval-forest"
FLIPS_ID = "qeval-flips"
KLD_ID = "qeval-kld"
QUALITY_MEMORY_ID = "qeval-quality-memory"

VERDICT_COLOUR = {"GO": "#1a7f37", "NO_GO": "#cf222e", "INCONCLUSIVE": "#9a6700"}
BASELINE_COLOUR = "#57606a"
_FLIP_COLOUR = {("c2w", "high"): "#a40e26", ("c2w", "standard"): "#ff8182",
                ("w2c", "high"): "#116329", ("w2c", "standard"): "#6fdd8b"}
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12"'
_EM_PER_CHAR = 0.6  # a generous average glyph width (7.2 px at 12 px): sizes columns and the canvas
_LABEL_CAP = 340  # a row label wider than this wraps after its task id
_ROW_H = 26
_LABELLED_KINDS = ("multiple_choice", "generate")


# ---------------------------------------------------------------- small helpers


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text_px(label: str, size: float = 12, bold: bool = False) -> float:
    """Estimated width of a label in px (no font metrics without a browser: deliberately generous)."""
    return len(label) * size * (_EM_PER_CHAR + (0.05 if bold else 0))


_TEXT_TAG = re.compile(r'<text x="([-\d.]+)" y="[-\d.]+" text-anchor="(\w+)"([^>]*)>([^<]*)</text>')


def text_extents(svg: str) -> list[tuple[float, float, str]]:
    """(left, right, label) of every horizontal <text> of a plot, by the estimate above; rotated
    text (a transform) is left out. The plots size their canvas with it; tests check it."""
    out = []
    for x, anchor, attrs, content in _TEXT_TAG.findall(svg):
        if "transform=" in attrs:
            continue
        size = float(m.group(1)) if (m := re.search(r'font-size="([\d.]+)"', attrs)) else 12
        label = html.unescape(content)
        w = _text_px(label, size, 'font-weight="bold"' in attrs)
        left = float(x) - {"start": 0, "middle": w / 2, "end": w}[anchor]
        out.append((left, left + w, label))
    return out


def _svg(plot_id: str, title: str, width: float, height: float, body: Iterable[str]) -> str:
    """A standalone SVG document (namespace included, for notebooks and files); the HTML
    report inlines it through `inline_svg`. The canvas widens to the right edge of its widest
    label, so no label is ever cut at the edge."""
    body = list(body)
    width = max([width, *(right + 8 for _, right, _ in text_extents("".join(body)))])
    return (f'<svg xmlns="{SVG_NAMESPACE}" id="{plot_id}" class="qeval-plot" role="img" '
            f'aria-label="{_esc(title)}" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" {_FONT}>'
            f'<title>{_esc(title)}</title><rect width="100%" height="100%" fill="white"/>'
            + "".join(body) + "</svg>\n")


def inline_svg(svg: str) -> str:
    """The same SVG for inlining in HTML5, which puts <svg> in the SVG namespace by itself:
    without the namespace URL the report holds no address at all."""
    return svg.replace(f' xmlns="{SVG_NAMESPACE}"', "", 1)


def _text(x: float, y: float, label: object, *, anchor: str = "start", size: int | None = None,
          weight: str | None = None, fill: str | None = None, cls: str | None = None) -> str:
    attrs = f'x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"'
    attrs += f' font-size="{size}"' if size else ""
    attrs += f' font-weight="{weight}"' if weight else ""
    attrs += f' fill="{fill}"' if fill else ""
    attrs += f' class="{cls}"' if cls else ""
    return f"<text {attrs}>{_esc(label)}</text>"


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1,
          dash: str | None = None, cls: str | None = None) -> str:
    extra = (f' stroke-dasharray="{dash}"' if dash else "") + (f' class="{cls}"' if cls else "")
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
            f'stroke-width="{width}"{extra}/>')


def _wrap(label: str) -> list[str]:
    """A row label on one line, or, when wider than _LABEL_CAP, on two: after "task ·"."""
    if _text_px(label) + 16 <= _LABEL_CAP or " · " not in label:
        return [label]
    head, tail = label.split(" · ", 1)
    return [f"{head} ·", tail]


def _label_column(labels: Iterable[str], minimum: float = 80) -> tuple[float, list[list[str]]]:
    """The label column's width and each label's lines: every label shows in full."""
    lines = [_wrap(s) for s in labels]
    return max([minimum, *(_text_px(x) + 16 for ls in lines for x in ls)]), lines


def _row_label(x: float, y: float, lines: Sequence[str], *, size: int = 12, gap: float = 13) -> str:
    """A row label whose last line sits on baseline y (a wrapped label grows upwards)."""
    return "".join(_text(x, y - (len(lines) - 1 - i) * gap, line, size=size) for i, line in enumerate(lines))


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) covering [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    magnitude = 10 ** math.floor(math.log10(span / count))
    step = next(m * magnitude for m in (1, 2, 5, 10) if span / (m * magnitude) <= count)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _task_candidate(c: dict) -> str:
    return f"{c['task']} · {c['candidate']}"


def _row_attrs(cls: str, c: dict) -> str:
    return (f'class="{cls}" data-task="{_esc(c["task"])}" data-candidate="{_esc(c["candidate"])}" '
            f'data-verdict="{_esc(c.get("verdict", ""))}"')


def labelled_comparisons(results: dict) -> list[dict]:
    """Comparisons with per-item correctness (multiple choice, generate): accuracy and flips."""
    return [c for c in results["comparisons"] if c.get("kind", "multiple_choice") in _LABELLED_KINDS]


def gate_policy(results: dict) -> GatePolicy | None:
    """The policy the run was judged with (results.json keeps its fields and the file name);
    None when the run did not record one, rather than inventing the defaults."""
    recorded = results.get("policy") or {}
    fields = {k: v for k, v in recorded.items() if k in GatePolicy.model_fields}
    if "defaults" not in fields:
        return None
    try:
        return GatePolicy.model_validate(fields)
    except ValidationError:
        return None


def _empty(plot_id: str, title: str, message: str) -> str:
    return _svg(plot_id, title, 520, 60, [_text(12, 22, title, weight="bold"), _text(12, 44, message)])


# ---------------------------------------------------------------- forest plot of Δ accuracy


def forest_plot(results: dict) -> str:
    """Δ accuracy (candidate − baseline) with its 95% interval, one row per task × candidate,
    coloured by the comparison's verdict; the dashed mark is the task's non-inferiority margin
    (−accuracy_margin of the policy's rules for that task, per-task overrides included)."""
    title = "Δ accuracy per task and candidate, 95% CI, with the non-inferiority margin"
    rows = labelled_comparisons(results)
    if not rows:
        return _empty(FOREST_ID, title, "No task with labels in this run (reference text only).")
    policy = gate_policy(results)
    margins = [None if policy is None else policy.rules_for(c["task"]).accuracy_margin for c in rows]
    values = [100 * v for c in rows for v in (c["delta"]["low"], c["delta"]["high"])]
    values += [-100 * m for m in margins if m is not None] + [0.0]
    pad = 0.06 * (max(values) - min(values)) or 1.0
    lo, hi = min(values) - pad, max(values) + pad
    left, lines = _label_column(map(_task_candidate, rows))
    row_h = _ROW_H + 8 if any(len(x) > 1 for x in lines) else _ROW_H
    estimates = [f"{100 * c['delta']['estimate']:+.1f} [{100 * c['delta']['low']:+.1f}, "
                 f"{100 * c['delta']['high']:+.1f}] pp  {c.get('verdict', '')}" for c in rows]
    width, top = 380, 40
    right = 12 + max(_text_px(e) for e in estimates) + 12
    height = top + row_h * len(rows) + 56

    def x(pp: float) -> float:
        return left + (pp - lo) / (hi - lo) * width

    body = [_text(12, 18, title, weight="bold")]
    bottom = top + row_h * len(rows)
    for t in _nice_ticks(lo, hi):
        body += [_line(x(t), top, x(t), bottom, "#eaeef2"),
                 _text(x(t), bottom + 14, f"{t:+g}", anchor="middle", size=10)]
    body.append(_line(x(0), top - 6, x(0), bottom, "#6e7781", 1.2, cls="zero-line"))
    for i, (c, margin, label, estimate) in enumerate(zip(rows, margins, lines, estimates)):
        y = top + i * row_h + row_h / 2
        colour = VERDICT_COLOUR.get(c.get("verdict", ""), BASELINE_COLOUR)
        d = c["delta"]
        row = [_row_label(12, y + 4 + 6 * (len(label) - 1), label)]
        if margin is not None:
            row.append(_line(x(-100 * margin), y - row_h / 2, x(-100 * margin), y + row_h / 2,
                             "#cf222e", 1.5, dash="4,3", cls="margin"))
        row += [_line(x(100 * d["low"]), y, x(100 * d["high"]), y, colour, 2.5, cls="ci"),
                f'<circle class="estimate" cx="{x(100 * d["estimate"]):.1f}" cy="{y:.1f}" r="4.5" '
                f'fill="{colour}"/>',
                _text(left + width + 12, y + 4, estimate, fill=colour)]
        body.append(f"<g {_row_attrs('forest-row', c)}>" + "".join(row) + "</g>")
    body.append(_text(left + width / 2, bottom + 30, "Δ accuracy, candidate − baseline (percentage points)",
                      anchor="middle", size=11))
    legend = ("dashed red: −margin of the task's accuracy rule" if any(m is not None for m in margins)
              else "no gate policy recorded in this run: margins not shown")
    body.append(_text(12, bottom + 48, f"dot: paired Δ; bar: 95% interval; colour: verdict; {legend}",
                      size=10, fill="#57606a"))
    return _svg(FOREST_ID, title, left + width + right, height, body)


# ---------------------------------------------------------------- flips by direction and risk


class FlipCounts(NamedTuple):
    correct_to_wrong_high: int
    correct_to_wrong_standard: int
    wrong_to_correct_high: int
    wrong_to_correct_standard: int


def flip_counts(comparison: dict) -> FlipCounts:
    """Flips split by direction and by risk level, from a comparison in results.json (the
    high-risk flips are listed by sample id there; standard = all − high-risk)."""
    down_high = len(comparison["high_risk"]["correct_to_wrong"])
    up_high = len(comparison["high_risk"]["wrong_to_correct"])
    return FlipCounts(down_high, comparison["flips_correct_to_wrong"] - down_high,
                      up_high, comparison["flips_wrong_to_correct"] - up_high)


def flips_plot(results: dict) -> str:
    """Diverging bars per task × candidate: correct→wrong to the left, wrong→correct to the
    right, each split into high-risk (dark) and standard (light) items."""
    title = "Flips per task and candidate: correct→wrong vs wrong→correct, by risk level"
    rows = labelled_comparisons(results)
    if not rows:
        return _empty(FLIPS_ID, title, "No task with labels in this run (reference text only).")
    counts = [flip_counts(c) for c in rows]
    largest = max([1, *(max(f.correct_to_wrong_high + f.correct_to_wrong_standard,
                            f.wrong_to_correct_high + f.wrong_to_correct_standard) for f in counts)])
    left, lines = _label_column(map(_task_candidate, rows))
    row_h = _ROW_H + 8 if any(len(x) > 1 for x in lines) else _ROW_H
    half, top = 200, 46
    down_labels = [f"{f.correct_to_wrong_high + f.correct_to_wrong_standard} ({f.correct_to_wrong_high} high)"
                   for f in counts]
    up_labels = [f"{f.wrong_to_correct_high + f.wrong_to_correct_standard} ({f.wrong_to_correct_high} high)"
                 for f in counts]
    # Room for the count beside the longest correct→wrong bar.
    centre = left + 12 + max(_text_px(s, 10) for s in down_labels) + half
    height = top + row_h * len(rows) + 50
    scale = half / largest

    def bars(direction: str, y: float, high: int, standard: int) -> list[str]:
        """High-risk flips next to the centre line, standard ones beyond them."""
        sign = -1 if direction == "c2w" else 1
        out, start = [], 0
        for risk, n in (("high", high), ("standard", standard)):
            x0, x1 = centre + sign * start * scale, centre + sign * (start + n) * scale
            what = "correct→wrong" if direction == "c2w" else "wrong→correct"
            out.append(f'<rect class="flip-bar {direction}-{risk}" x="{min(x0, x1):.1f}" y="{y:.1f}" '
                       f'width="{abs(x1 - x0):.1f}" height="16" fill="{_FLIP_COLOUR[(direction, risk)]}">'
                       f"<title>{what}, {risk}: {n}</title></rect>")
            start += n
        return out

    body = [_text(12, 18, title, weight="bold"),
            _text(centre - 8, top - 8, "← correct→wrong", anchor="end", size=11, fill="#a40e26"),
            _text(centre + 8, top - 8, "wrong→correct →", size=11, fill="#116329")]
    bottom = top + row_h * len(rows)
    for i, (c, f, label, down_label, up_label) in enumerate(zip(rows, counts, lines, down_labels, up_labels)):
        y = top + i * row_h + (row_h - 16) / 2
        down = f.correct_to_wrong_high + f.correct_to_wrong_standard
        up = f.wrong_to_correct_high + f.wrong_to_correct_standard
        parts = [_row_label(12, y + 12 + 6 * (len(label) - 1), label)]
        parts += bars("c2w", y, f.correct_to_wrong_high, f.correct_to_wrong_standard)
        parts += bars("w2c", y, f.wrong_to_correct_high, f.wrong_to_correct_standard)
        parts += [_text(centre - down * scale - 6, y + 12, down_label, anchor="end", size=10),
                  _text(centre + up * scale + 6, y + 12, up_label, size=10)]
        body.append(f"<g {_row_attrs('flips-row', c)}>" + "".join(parts) + "</g>")
    body.append(_line(centre, top - 4, centre, bottom, "#6e7781", 1.2))
    legend_y, lx = bottom + 22, 12.0
    for (direction, risk), colour in _FLIP_COLOUR.items():
        label = f"{'correct→wrong' if direction == 'c2w' else 'wrong→correct'}, {risk}"
        body += [f'<rect x="{lx:.1f}" y="{legend_y - 10:.1f}" width="12" height="12" fill="{colour}"/>',
                 _text(lx + 16, legend_y, label, size=10)]
        lx += 16 + _text_px(label, 10) + 14
    body.append(_text(12, legend_y + 20, "high = items marked risk: high in the task; counts are items",
                      size=10, fill="#57606a"))
    right = 12 + max(_text_px(s, 10) for s in up_labels)
    return _svg(FLIPS_ID, title, max(centre + half + right, lx + 10), height + 10, body)


# ---------------------------------------------------------------- KL divergence distributions


class KlSeries(NamedTuple):
    """One distribution of KL(baseline ‖ candidate): per item (choice-KL) or per token."""

    task: str
    candidate: str
    unit: Literal["item", "token"]
    values: Sequence[float]
    limit: float | None = None  # the policy's limit on the mean (max_choice_kl_mean / max_token_kld_mean)
    verdict: str = ""


def kl_series(run: Run) -> list[KlSeries]:
    """Every candidate's KL distributions, recomputed from the run's records: per-item choice-KL
    on multiple-choice tasks, per-token KL on reference_text tasks (generate tasks score no
    distribution)."""
    policy = gate_policy(run.results)
    out = []
    for c in run.results["comparisons"]:
        kind = c.get("kind", "multiple_choice")
        rules = None if policy is None else policy.rules_for(c["task"])
        if kind == "multiple_choice":
            out.append(KlSeries(c["task"], c["candidate"], "item", run.choice_kl(c["candidate"], c["task"]),
                                None if rules is None else rules.max_choice_kl_mean, c.get("verdict", "")))
        elif kind == "reference_text":
            out.append(KlSeries(c["task"], c["candidate"], "token", run.token_kl(c["candidate"], c["task"]),
                                None if rules is None else rules.max_token_kld_mean, c.get("verdict", "")))
    return out


def _log_range(series: Sequence[KlSeries]) -> tuple[float, float]:
    """Decades covering every positive value and limit (at most 10 of them, at least 1e-8)."""
    positive = [v for s in series for v in s.values if v > 0] + [s.limit for s in series if s.limit]
    if not positive:
        return 1e-6, 1.0
    hi = 10 ** math.ceil(math.log10(max(positive)))
    lo = max(10 ** math.floor(math.log10(min(positive))), 1e-8, hi / 1e10)
    return (lo, hi) if hi > lo else (lo, lo * 10)


def kld_plot(series: Sequence[KlSeries], *, bins: int = 48,
             empty_note: str = "No multiple-choice or reference-text comparison in this run.") -> str:
    """Each row a log-scaled histogram of one KL distribution, with its box (quartiles),
    whiskers (5th–95th percentile), median, mean (◆), max (×) and the policy's limit on the mean
    (dashed). Zeros and values below the axis are counted in its first bin."""
    title = "KL(baseline ‖ candidate) distributions: per item (choice-KL) and per token (reference text)"
    if not series:
        return _empty(KLD_ID, title, empty_note)
    lo, hi = _log_range(series)
    labels = [f"{s.task} · {s.candidate} (per {s.unit})" for s in series]
    left, lines = _label_column(labels)
    width, right, top, row_h = 420, 270, 40, 44
    height = top + row_h * len(series) + 58
    log_lo, log_hi = math.log10(lo), math.log10(hi)

    def x(v: float) -> float:
        clamped = min(max(v, lo), hi)
        return left + (math.log10(clamped) - log_lo) / (log_hi - log_lo) * width

    body = [_text(12, 18, title, weight="bold")]
    bottom = top + row_h * len(series)
    for decade in range(int(round(log_lo)), int(round(log_hi)) + 1):
        v = 10.0 ** decade
        label = f"≤1e{decade}" if decade == round(log_lo) else f"1e{decade}"
        body += [_line(x(v), top, x(v), bottom, "#eaeef2"),
                 _text(x(v), bottom + 14, label, anchor="middle", size=10)]
    edges = np.linspace(log_lo, log_hi, bins + 1)
    for i, (s, label) in enumerate(zip(series, lines)):
        base_y = top + i * row_h + row_h - 14  # histogram bars stand on this line
        values = np.asarray(s.values, dtype=np.float64)
        colour = VERDICT_COLOUR.get(s.verdict, BASELINE_COLOUR)
        parts = [_row_label(12, base_y - 4, label)]
        if values.size:
            logs = np.log10(np.clip(values, lo, hi))
            counts, _ = np.histogram(logs, bins=edges)
            peak = max(int(counts.max()), 1)
            for k, n in enumerate(counts):
                if n:
                    x0 = left + (edges[k] - log_lo) / (log_hi - log_lo) * width
                    h = 22 * n / peak
                    parts.append(f'<rect class="kld-bin" x="{x0:.1f}" y="{base_y - h:.1f}" '
                                 f'width="{width / bins - 0.6:.1f}" height="{h:.1f}" fill="{colour}" '
                                 f'fill-opacity="0.35"/>')
            p5, p25, p50, p75, p95 = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
            mean, top_value = float(values.mean()), float(values.max())
            box_y = base_y + 6
            parts += [_line(x(p5), box_y, x(p95), box_y, colour, 1.2, cls="whisker"),
                      f'<rect class="kld-box" x="{x(p25):.1f}" y="{box_y - 4:.1f}" '
                      f'width="{max(x(p75) - x(p25), 1):.1f}" height="8" fill="white" stroke="{colour}"/>',
                      _line(x(p50), box_y - 5, x(p50), box_y + 5, colour, 2, cls="median"),
                      f'<path class="kld-mean" d="M{x(mean):.1f},{box_y - 5:.1f} l4,5 l-4,5 l-4,-5 z" '
                      f'fill="{colour}"/>',
                      _text(x(top_value), box_y + 4, "×", anchor="middle", size=11, fill=colour),
                      _text(left + width + 12, base_y - 4, f"mean {mean:.3g} · p95 {p95:.3g} · max "
                            f"{top_value:.3g}", size=11),
                      _text(left + width + 12, base_y + 10, f"n = {values.size} {s.unit}s"
                            + (f" · limit on mean {s.limit:g}" if s.limit is not None else ""),
                            size=10, fill="#57606a")]
        if s.limit is not None:
            parts.append(_line(x(s.limit), base_y - 24, x(s.limit), base_y + 12, "#cf222e", 1.5,
                               dash="4,3", cls="limit"))
        parts.append(_line(left, base_y, left + width, base_y, "#d0d7de"))
        attrs = _row_attrs("kld-row", {"task": s.task, "candidate": s.candidate, "verdict": s.verdict})
        body.append(f'<g {attrs} data-unit="{s.unit}">' + "".join(parts) + "</g>")
    body += [_text(left + width / 2, bottom + 30, "KL divergence, nats (log scale)", anchor="middle", size=11),
             _text(12, bottom + 48, "bars: histogram; box: quartiles; whiskers: 5th–95th percentile; "
                   "◆ mean; × max; dashed red: the policy's limit on the mean", size=10, fill="#57606a")]
    return _svg(KLD_ID, title, left + width + right, height, body)


# ---------------------------------------------------------------- quality vs memory


class VariantPoint(NamedTuple):
    variant: str
    role: Literal["baseline", "candidate", "noise_floor"]
    weight_mib: float | None  # resident weights; None: not measured
    quality: float  # worst Δ accuracy (pp) or worst mean KL (nats); 0 for the baseline
    lower: float | None  # lower 95% bound of the worst Δ (accuracy metric only)
    verdict: str  # GO / NO_GO / INCONCLUSIVE; "" for the baseline and the noise floor
    peak_mib: float | None = None  # the efficiency section's peak after loading (scoring, speed probe)


_MIB = 2**20  # MiB, as report.md's efficiency table


def _efficiency_row(results: dict, variant: str) -> dict:
    return next((v for v in (results.get("efficiency") or {}).get("variants", [])
                 if v.get("variant") == variant), {})


def _weight_mib(results: dict, info: dict | None, variant: str) -> float | None:
    """Weight memory: the efficiency section's measurement when present, else what the backend
    reported; zero or missing is 'not measured'."""
    size = _efficiency_row(results, variant).get("weight_bytes") or (info or {}).get("weight_bytes")
    return size / _MIB if size else None


def _peak_mib(results: dict, variant: str) -> float | None:
    size = _efficiency_row(results, variant).get("peak_memory_bytes")
    return size / _MIB if size else None


def _worst(comparisons: list[dict], metric: str) -> tuple[float, float | None]:
    if metric == "delta_accuracy":
        labelled = [c for c in comparisons if c.get("kind", "multiple_choice") in _LABELLED_KINDS]
        if not labelled:
            return math.nan, None
        worst = min(labelled, key=lambda c: c["delta"]["estimate"])
        return 100 * worst["delta"]["estimate"], 100 * worst["delta"]["low"]
    means = [c["choice_kl_mean"]["estimate"] if c.get("kind", "multiple_choice") == "multiple_choice"
             else c["kld_mean"]["estimate"] for c in comparisons if c.get("kind") != "generate"]
    return (max(means) if means else math.nan), None


def variant_points(results: dict, metric: Literal["delta_accuracy", "kl"]) -> list[VariantPoint]:
    """The baseline, the noise floor (when measured) and every candidate, with their weight
    memory, peak memory (when the run measured efficiency) and worst quality number across tasks."""
    base = results["baseline"]
    points = [VariantPoint(base["variant"], "baseline", _weight_mib(results, base, base["variant"]),
                           0.0, None, "", _peak_mib(results, base["variant"]))]
    floor = results.get("noise_floor")
    if floor:
        name = floor["variant"]["variant"]
        q, low = _worst(floor["comparisons"], metric)
        points.append(VariantPoint(name, "noise_floor", _weight_mib(results, floor["variant"], name), q, low,
                                   "", _peak_mib(results, name)))
    for info in results["candidates"]:
        name = info["variant"]
        own = [c for c in results["comparisons"] if c["candidate"] == name]
        q, low = _worst(own, metric)
        points.append(VariantPoint(name, "candidate", _weight_mib(results, info, name), q, low,
                                   results.get("per_candidate", {}).get(name, ""), _peak_mib(results, name)))
    return points


def _free_label_y(x: float, y: float, width: float, taken: Sequence[tuple[float, float, float]]) -> float:
    """Move a label down until it overlaps none placed before (variants of the same size, such as
    the baseline and its noise floor, share a point)."""
    while any(abs(y - ty) < 13 and x < tx + tw and tx < x + width for tx, ty, tw in taken):
        y += 13
    return y


def _marker(role: str, cx: float, cy: float, colour: str, *, hollow: bool, cls: str) -> str:
    """Square for the baseline and the noise floor, circle for a candidate; hollow: peak memory."""
    fill = "white" if hollow else colour
    stroke = f' stroke="{colour}" stroke-width="2"' if hollow else ""
    if role != "candidate":
        return (f'<rect class="{cls}" x="{cx - 5:.1f}" y="{cy - 5:.1f}" width="10" height="10" '
                f'fill="{fill}"{stroke}/>')
    return f'<circle class="{cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="{5 if hollow else 6}" fill="{fill}"{stroke}/>'


def quality_memory_plot(results: dict, metric: Literal["auto", "delta_accuracy", "kl"] = "auto") -> str:
    """Each variant at its memory (MiB) against its worst task: the lowest Δ accuracy with its
    lower 95% bound marked, or, without labelled tasks, the largest mean KL. Filled markers sit at
    the resident weights; when the run measured efficiency, a hollow marker on the same row sits at
    the variant's peak memory after loading (scoring and the speed probe)."""
    if metric == "auto":
        metric = "delta_accuracy" if labelled_comparisons(results) else "kl"
    y_name = ("worst Δ accuracy over tasks (pp); tick: lower 95% bound" if metric == "delta_accuracy"
              else "worst mean KL over tasks (nats)")
    points = variant_points(results, metric)
    with_peak = any(p.peak_mib is not None for p in points)
    title = f"Quality vs {'memory' if with_peak else 'weight memory'} per variant: {y_name.split(';')[0]}"
    placed = [p for p in points if (p.weight_mib is not None or p.peak_mib is not None)
              and not math.isnan(p.quality)]
    missing = [p.variant for p in points if p not in placed]
    left, width, top, plot_h = 70, 560, 40, 260
    labels = [p.variant + ("" if p.role == "candidate" else f" ({p.role.replace('_', ' ')})") for p in points]
    right = max([120, *(_text_px(x, 11) + 24 for x in labels)])
    height = top + plot_h + 70 + (14 if with_peak else 0)
    body = [_text(12, 18, title, weight="bold")]
    if placed:
        x_hi = max(m for p in placed for m in (p.weight_mib, p.peak_mib) if m is not None) * 1.12 or 1.0
        ys = [p.quality for p in placed] + [p.lower for p in placed if p.lower is not None] + [0.0]
        pad = 0.1 * (max(ys) - min(ys)) or (1.0 if metric == "delta_accuracy" else 0.01)
        y_lo, y_hi = min(ys) - pad, max(ys) + pad

        def x(mib: float) -> float:
            return left + mib / x_hi * width

        def y(v: float) -> float:
            return top + (y_hi - v) / (y_hi - y_lo) * plot_h

        for t in _nice_ticks(0, x_hi):
            body += [_line(x(t), top, x(t), top + plot_h, "#eaeef2"),
                     _text(x(t), top + plot_h + 14, f"{t:g}", anchor="middle", size=10)]
        for t in _nice_ticks(y_lo, y_hi):
            body += [_line(left, y(t), left + width, y(t), "#eaeef2"),
                     _text(left - 6, y(t) + 3, f"{t:g}", anchor="end", size=10)]
        body.append(_line(left, y(0), left + width, y(0), "#6e7781", 1.2, cls="zero-line"))
        taken: list[tuple[float, float, float]] = []  # labels already placed: x, y, width
        for p, label in zip(points, labels):
            if p not in placed:
                continue
            colour = VERDICT_COLOUR.get(p.verdict, BASELINE_COLOUR)
            at = p.weight_mib if p.weight_mib is not None else p.peak_mib
            cx, cy = x(at), y(p.quality)
            parts = []
            if p.weight_mib is not None and p.peak_mib is not None:
                parts.append(_line(cx, cy, x(p.peak_mib), cy, colour, 1, dash="2,3", cls="weight-to-peak"))
            if p.lower is not None:
                parts += [_line(cx, cy, cx, y(p.lower), colour, 1.5),
                          _line(cx - 5, y(p.lower), cx + 5, y(p.lower), colour, 2, cls="lower-bound")]
            if p.weight_mib is not None:
                parts.append(_marker(p.role, cx, cy, colour, hollow=False, cls="weight-marker"))
            if p.peak_mib is not None:
                parts.append(_marker(p.role, x(p.peak_mib), cy, colour, hollow=True, cls="peak-marker"))
            label_y = _free_label_y(cx + 9, cy - 7, _text_px(label, 11), taken)
            taken.append((cx + 9, label_y, _text_px(label, 11)))
            parts.append(_text(cx + 9, label_y, label, size=11))
            body.append(f'<g class="qm-point" data-variant="{_esc(p.variant)}" data-role="{p.role}">'
                        + "".join(parts) + "</g>")
    else:
        body.append(_text(left + width / 2, top + plot_h / 2, "memory not measured for any variant",
                          anchor="middle", fill="#57606a"))
    x_name = ("memory (MiB): filled = resident weights, hollow = peak after loading (scoring and speed probe)"
              if with_peak else "weight memory (MiB)")
    notes = ["square: baseline / noise floor; circle: candidate, coloured by its verdict"
             + ("; dotted: from a variant's weights to its peak" if with_peak else "")
             + (f"; not placed (memory or quality unknown): {', '.join(missing)}" if missing else "")]
    kinds = sorted({v["memory_kind"] for v in (results.get("efficiency") or {}).get("variants", [])
                    if v.get("memory_kind") and v.get("peak_memory_bytes")})
    if kinds:
        notes.append(f"peak: {'; '.join(kinds)}")
    body += [_line(left, top + plot_h, left + width, top + plot_h, "#57606a"),
             _line(left, top, left, top + plot_h, "#57606a"),
             _text(max(left + width / 2, 12 + _text_px(x_name, 11) / 2), top + plot_h + 32, x_name,
                   anchor="middle", size=11),
             f'<text x="16" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="11" '
             f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">{_esc(y_name.split(";")[0])}</text>',
             *(_text(12, top + plot_h + 52 + 14 * i, note, size=10, fill="#57606a") for i, note in enumerate(notes))]
    return _svg(QUALITY_MEMORY_ID, title, left + width + right, height, body)
