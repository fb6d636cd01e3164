"""The report's plots, drawn by matplotlib's SVG backend (no raster backend, no script, no network).

Each function is pure (the typed run document, or numbers gathered from a run, in; SVG text out),
so the HTML report inlines the very same pictures a notebook shows with IPython.display.SVG. The
output is deterministic — a fixed `svg.hashsalt`, no date in the metadata, text kept as <text>
(`svg.fonttype: none`) — and laid out with matplotlib's real font metrics (`bbox_inches="tight"`:
no label is cut). Every plot is an `<svg>` with a stable id, class `qeval-plot`, a <title> and an
aria-label; its marks carry ids `<plot id>-row-<i>` (in the order of the rows the plot draws) so
a test can count them. Labels are task ids, variant names and numbers: no prompt, option or
output text ever reaches a plot.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import ValidationError

from qeval.gate import GatePolicy
from qeval.report.by_kind import view
from qeval.rundir.read import Run
from qeval.rundir.schema import RunResults

SVG_NAMESPACE = "http://www.w3.org/2000/svg"
_XLINK = ' xmlns:xlink="http://www.w3.org/1999/xlink"'

FOREST_ID = "qeval-forest"
FLIPS_ID = "qeval-flips"
KLD_ID = "qeval-kld"
QUALITY_MEMORY_ID = "qeval-quality-memory"
CALIBRATE_ID = "qeval-calibrate"

VERDICT_COLOUR = {"GO": "#1a7f37", "NO_GO": "#cf222e", "INCONCLUSIVE": "#9a6700"}
BASELINE_COLOUR = "#57606a"
_NOTE = "#57606a"
_FLIP_COLOUR = {("c2w", "high"): "#a40e26", ("c2w", "standard"): "#ff8182",
                ("w2c", "high"): "#116329", ("w2c", "standard"): "#6fdd8b"}
_CALIBRATE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_RC = {"svg.hashsalt": "qeval", "svg.fonttype": "none", "font.size": 10, "axes.titlesize": 11,
       "axes.titleweight": "bold", "axes.spines.top": False, "axes.spines.right": False}
_WRAP_AT = 44  # a row label longer than this wraps after its task id


# ---------------------------------------------------------------- small helpers


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def document(results: RunResults | dict) -> RunResults:
    """The typed run document (a results dict, as load_run's `results`, is validated into it)."""
    return results if isinstance(results, RunResults) else RunResults.model_validate(results)


def labelled_comparisons(results: RunResults | dict) -> list:
    """Comparisons with per-item correctness (multiple choice, generate): accuracy and flips."""
    return [c for c in document(results).comparisons if view(c).labelled]


def gate_policy(results: RunResults | dict) -> GatePolicy | None:
    """The policy the run was judged with (results.json keeps its fields and the file name);
    None when the run did not record one, rather than inventing the defaults."""
    recorded = document(results).policy or {}
    fields = {k: v for k, v in recorded.items() if k in GatePolicy.model_fields}
    if "defaults" not in fields:
        return None
    try:
        return GatePolicy.model_validate(fields)
    except ValidationError:
        return None


def _verdict(c) -> str:
    v = getattr(c, "verdict", None)
    return "" if v is None else getattr(v, "value", str(v))


def _row_label(task: str, candidate: str) -> str:
    """`task · candidate`, on two lines (after the task) when long: every label shows in full."""
    label = f"{task} · {candidate}"
    return label if len(label) <= _WRAP_AT else f"{task} ·\n{candidate}"


@contextmanager
def _canvas(width: float, height: float) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        yield Figure(figsize=(width, height))


def _render(fig, plot_id: str, title: str) -> str:
    """The figure as a standalone SVG document (namespace included, for notebooks and files),
    with the plot's id, class, aria-label and <title>; the HTML report inlines it through
    `inline_svg`. Nothing is clipped (a clip path would be a url() reference in the page)."""
    for artist in fig.findobj():
        artist.set_clip_on(False)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.12, facecolor="white",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    svg = text[text.index("<svg "):]
    head = (f'<svg id="{plot_id}" class="qeval-plot" role="img" aria-label="{_esc(title)}" ')
    svg = head + svg[len("<svg "):]
    end = svg.index(">") + 1
    return svg[:end] + f"<title>{_esc(title)}</title>" + svg[end:]


def inline_svg(svg: str) -> str:
    """The same SVG for inlining in HTML5, which puts <svg> in the SVG namespace (and reads
    xlink:href) by itself: without the namespace URLs the report holds no address at all."""
    return svg.replace(f' xmlns="{SVG_NAMESPACE}"', "", 1).replace(_XLINK, "", 1)


def _empty(plot_id: str, title: str, message: str) -> str:
    with _canvas(6.0, 0.8) as fig:
        fig.text(0.01, 0.7, title, fontweight="bold", fontsize=11)
        fig.text(0.01, 0.2, message, color=_NOTE)
        return _render(fig, plot_id, title)


def _note(ax, text: str) -> None:
    """Grey small print under the axes' label."""
    ax.annotate(text, (0, 0), xycoords="axes fraction", xytext=(0, -40), textcoords="offset points",
                fontsize=8, color=_NOTE, va="top")


def _rows_axes(fig, labels: Sequence[str]):
    ax = fig.add_subplot()
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)
    return ax


# ---------------------------------------------------------------- forest plot of Δ accuracy


def forest_plot(results: RunResults | dict) -> str:
    """Δ accuracy (candidate − baseline) with its 95% interval, one row per task × candidate,
    coloured by the comparison's verdict; the dashed mark is the task's non-inferiority margin
    (−accuracy_margin of the policy's rules for that task, per-task overrides included)."""
    title = "Δ accuracy per task and candidate, 95% CI, with the non-inferiority margin"
    rows = labelled_comparisons(results)
    if not rows:
        return _empty(FOREST_ID, title, "No task with labels in this run (reference text only).")
    policy = gate_policy(results)
    margins = [None if policy is None else policy.rules_for(c.task).accuracy_margin for c in rows]
    with _canvas(7.5, 1.2 + 0.38 * len(rows)) as fig:
        ax = _rows_axes(fig, [_row_label(c.task, c.candidate) for c in rows])
        ax.axvline(0, color="#6e7781", linewidth=1.0, gid=f"{FOREST_ID}-zero")
        ax.grid(axis="x", color="#eaeef2")
        for i, (c, margin) in enumerate(zip(rows, margins)):
            colour = VERDICT_COLOUR.get(_verdict(c), BASELINE_COLOUR)
            d = c.delta
            if margin is not None:
                ax.plot([-100 * margin] * 2, [i - 0.4, i + 0.4], color="#cf222e", linewidth=1.3,
                        linestyle=(0, (4, 3)), gid=f"{FOREST_ID}-margin-{i}")
            ax.plot([100 * d.low, 100 * d.high], [i, i], color=colour, linewidth=2.5,
                    solid_capstyle="butt", gid=f"{FOREST_ID}-row-{i}")
            ax.plot([100 * d.estimate], [i], "o", color=colour, markersize=6, gid=f"{FOREST_ID}-estimate-{i}")
            ax.annotate(f"{100 * d.estimate:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] pp  {_verdict(c)}",
                        (1, i), xycoords=("axes fraction", "data"), xytext=(8, 0),
                        textcoords="offset points", va="center", color=colour)
        ax.set_xlabel("Δ accuracy, candidate − baseline (percentage points)")
        ax.set_title(title, loc="left")
        legend = ("dashed red: −margin of the task's accuracy rule" if any(m is not None for m in margins)
                  else "no gate policy recorded in this run: margins not shown")
        _note(ax, f"dot: paired Δ; bar: 95% interval; colour: verdict; {legend}")
        return _render(fig, FOREST_ID, title)


# ---------------------------------------------------------------- flips by direction and risk


class FlipCounts(NamedTuple):
    correct_to_wrong_high: int
    correct_to_wrong_standard: int
    wrong_to_correct_high: int
    wrong_to_correct_standard: int


def flip_counts(comparison) -> FlipCounts:
    """Flips split by direction and by risk level, from a comparison of the run document (the
    high-risk flips are listed by sample id there; standard = all − high-risk)."""
    if isinstance(comparison, dict):
        comparison = document_comparison(comparison)
    down_high = len(comparison.high_risk.correct_to_wrong)
    up_high = len(comparison.high_risk.wrong_to_correct)
    return FlipCounts(down_high, comparison.flips_correct_to_wrong - down_high,
                      up_high, comparison.flips_wrong_to_correct - up_high)


def document_comparison(c: dict):
    """One comparison dict of results.json, typed."""
    from pydantic import TypeAdapter

    from qeval.rundir.schema import JudgedComparison

    return TypeAdapter(JudgedComparison).validate_python(c)


def flips_plot(results: RunResults | dict) -> str:
    """Diverging bars per task × candidate: correct→wrong to the left, wrong→correct to the
    right, each split into high-risk (dark) and standard (light) items."""
    title = "Flips per task and candidate: correct→wrong vs wrong→correct, by risk level"
    rows = labelled_comparisons(results)
    if not rows:
        return _empty(FLIPS_ID, title, "No task with labels in this run (reference text only).")
    counts = [flip_counts(c) for c in rows]
    largest = max([1, *(max(f.correct_to_wrong_high + f.correct_to_wrong_standard,
                            f.wrong_to_correct_high + f.wrong_to_correct_standard) for f in counts)])
    with _canvas(7.5, 1.3 + 0.38 * len(rows)) as fig:
        ax = _rows_axes(fig, [_row_label(c.task, c.candidate) for c in rows])
        for i, f in enumerate(counts):
            for direction, parts in (("c2w", (f.correct_to_wrong_high, f.correct_to_wrong_standard)),
                                     ("w2c", (f.wrong_to_correct_high, f.wrong_to_correct_standard))):
                sign, start = (-1 if direction == "c2w" else 1), 0
                for risk, n in zip(("high", "standard"), parts):
                    ax.barh(i, sign * n, left=sign * start, height=0.6, color=_FLIP_COLOUR[(direction, risk)],
                            gid=f"{FLIPS_ID}-row-{i}-{direction}-{risk}")
                    start += n
                ax.annotate(f"{sum(parts)} ({parts[0]} high)", (sign * sum(parts), i),
                            xytext=(sign * 5, 0), textcoords="offset points", va="center",
                            ha="right" if sign < 0 else "left", fontsize=8)
        ax.axvline(0, color="#6e7781", linewidth=1.0)
        ax.set_xlim(-1.35 * largest, 1.35 * largest)
        ax.xaxis.set_major_formatter(_abs_formatter())
        ax.set_xlabel("← correct→wrong · items · wrong→correct →")
        ax.set_title(title, loc="left")
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=colour, label=f"{'correct→wrong' if d == 'c2w' else 'wrong→correct'}, {r}")
                           for (d, r), colour in _FLIP_COLOUR.items()],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        _note(ax, "high = items marked risk: high in the task; counts are items")
        return _render(fig, FLIPS_ID, title)


def _abs_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{abs(v):g}")


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
    policy = gate_policy(run.document)
    out = []
    for c in run.document.comparisons:
        kl = view(c).kl
        if kl is None:
            continue
        limit = None if policy is None else getattr(policy.rules_for(c.task), kl.limit_rule)
        out.append(KlSeries(c.task, c.candidate, kl.unit, kl.values(run, c.candidate, c.task), limit,
                            _verdict(c)))
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
    edges = np.logspace(math.log10(lo), math.log10(hi), bins + 1)
    labels = [f"{_row_label(s.task, s.candidate)} (per {s.unit})" for s in series]
    with _canvas(8.0, 1.2 + 0.62 * len(series)) as fig:
        ax = _rows_axes(fig, labels)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.grid(axis="x", color="#eaeef2")
        for i, s in enumerate(series):
            colour = VERDICT_COLOUR.get(s.verdict, BASELINE_COLOUR)
            values = np.asarray(s.values, dtype=np.float64)
            base = i + 0.1  # histogram bars stand on this line, growing upwards (y is inverted)
            if values.size:
                counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
                filled = counts > 0
                heights = 0.45 * counts[filled] / max(int(counts.max()), 1)
                ax.bar(edges[:-1][filled], -heights, width=np.diff(edges)[filled] * 0.9, bottom=base,
                       align="edge", color=colour, alpha=0.35, linewidth=0)
                p5, p25, p50, p75, p95 = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
                mean, top = float(values.mean()), float(values.max())
                y = i + 0.28
                clip = lambda v: min(max(v, lo), hi)  # noqa: E731 - values below the axis sit on its edge
                ax.plot([clip(p5), clip(p95)], [y, y], color=colour, linewidth=1.2)
                ax.add_patch(_box(clip(p25), clip(p75), y, colour, gid=f"{KLD_ID}-row-{i}-{s.unit}"))
                ax.plot([clip(p50)] * 2, [y - 0.1, y + 0.1], color=colour, linewidth=2)
                ax.plot([clip(mean)], [y], "D", color=colour, markersize=5)
                ax.plot([clip(top)], [y], "x", color=colour, markersize=6)
                ax.annotate(f"mean {mean:.3g} · p95 {p95:.3g} · max {top:.3g}\nn = {values.size} {s.unit}s"
                            + (f" · limit on mean {s.limit:g}" if s.limit is not None else ""),
                            (1, i), xycoords=("axes fraction", "data"), xytext=(8, 0),
                            textcoords="offset points", va="center", fontsize=8)
            if s.limit is not None:
                ax.plot([s.limit] * 2, [i - 0.4, i + 0.4], color="#cf222e", linewidth=1.3,
                        linestyle=(0, (4, 3)), gid=f"{KLD_ID}-limit-{i}")
            ax.plot([lo, hi], [base, base], color="#d0d7de", linewidth=0.8)
        ax.set_xlabel("KL divergence, nats (log scale; the first bin holds zeros and smaller values)")
        ax.set_title(title, loc="left")
        _note(ax, "bars: histogram; box: quartiles; whiskers: 5th–95th percentile; ◆ mean; × max; "
                   "dashed red: the policy's limit on the mean")
        return _render(fig, KLD_ID, title)


def _box(x0: float, x1: float, y: float, colour: str, gid: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y - 0.07), max(x1 - x0, 0.0), 0.14, facecolor="white", edgecolor=colour, zorder=3,
                     gid=gid)


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


def _weight_mib(doc: RunResults, info, variant: str) -> float | None:
    """Weight memory: the efficiency section's measurement when present, else what the backend
    reported; zero or missing is 'not measured'."""
    row = doc.efficiency_row(variant)
    size = (row.weight_bytes if row else None) or (info.weight_bytes if info else None)
    return size / _MIB if size else None


def _peak_mib(doc: RunResults, variant: str) -> float | None:
    row = doc.efficiency_row(variant)
    size = row.peak_memory_bytes if row else None
    return size / _MIB if size else None


def _worst(comparisons: Sequence, metric: str) -> tuple[float, float | None]:
    if metric == "delta_accuracy":
        labelled = [c for c in comparisons if view(c).labelled]
        if not labelled:
            return math.nan, None
        worst = min(labelled, key=lambda c: c.delta.estimate)
        return 100 * worst.delta.estimate, 100 * worst.delta.low
    means = [kl.mean(c) for c in comparisons if (kl := view(c).kl) is not None]
    return (max(means) if means else math.nan), None


def variant_points(results: RunResults | dict, metric: Literal["delta_accuracy", "kl"]) -> list[VariantPoint]:
    """The baseline, the noise floor (when measured) and every candidate, with their weight
    memory, peak memory (when the run measured efficiency) and worst quality number across tasks."""
    doc = document(results)
    base = doc.baseline
    points = [VariantPoint(base.variant, "baseline", _weight_mib(doc, base, base.variant), 0.0, None, "",
                           _peak_mib(doc, base.variant))]
    floor = doc.noise_floor
    if floor:
        name = floor.variant.variant
        q, low = _worst(floor.comparisons, metric)
        points.append(VariantPoint(name, "noise_floor", _weight_mib(doc, floor.variant, name), q, low, "",
                                   _peak_mib(doc, name)))
    for info in doc.candidates:
        name = info.variant
        q, low = _worst([c for c in doc.comparisons if c.candidate == name], metric)
        verdict = doc.per_candidate.get(name)
        points.append(VariantPoint(name, "candidate", _weight_mib(doc, info, name), q, low,
                                   "" if verdict is None else verdict.value, _peak_mib(doc, name)))
    return points


def quality_memory_plot(results: RunResults | dict, metric: Literal["auto", "delta_accuracy", "kl"] = "auto") -> str:
    """Each variant at its memory (MiB) against its worst task: the lowest Δ accuracy with its
    lower 95% bound marked, or, without labelled tasks, the largest mean KL. Filled markers sit at
    the resident weights; when the run measured efficiency, a hollow marker on the same row sits at
    the variant's peak memory after loading (scoring and the speed probe)."""
    doc = document(results)
    if metric == "auto":
        metric = "delta_accuracy" if labelled_comparisons(doc) else "kl"
    y_name = ("worst Δ accuracy over tasks (pp); tick: lower 95% bound" if metric == "delta_accuracy"
              else "worst mean KL over tasks (nats)")
    points = variant_points(doc, metric)
    with_peak = any(p.peak_mib is not None for p in points)
    title = f"Quality vs {'memory' if with_peak else 'weight memory'} per variant: {y_name.split(';')[0]}"
    placed = [p for p in points if (p.weight_mib is not None or p.peak_mib is not None)
              and not math.isnan(p.quality)]
    missing = [p.variant for p in points if p not in placed]
    with _canvas(7.5, 4.2) as fig:
        ax = fig.add_subplot()
        ax.grid(color="#eaeef2")
        ax.set_title(title, loc="left")
        if placed:
            ax.axhline(0, color="#6e7781", linewidth=1.0)
            for i, p in enumerate(points):
                if p not in placed:
                    continue
                colour = VERDICT_COLOUR.get(p.verdict, BASELINE_COLOUR)
                marker = "o" if p.role == "candidate" else "s"
                at = p.weight_mib if p.weight_mib is not None else p.peak_mib
                if p.weight_mib is not None and p.peak_mib is not None:
                    ax.plot([p.weight_mib, p.peak_mib], [p.quality] * 2, color=colour, linewidth=1,
                            linestyle=(0, (2, 3)))
                if p.lower is not None:
                    ax.plot([at, at], [p.quality, p.lower], color=colour, linewidth=1.5)
                    ax.plot([at], [p.lower], "_", color=colour, markersize=10, markeredgewidth=2)
                if p.weight_mib is not None:
                    ax.plot([p.weight_mib], [p.quality], marker, color=colour, markersize=7,
                            gid=f"{QUALITY_MEMORY_ID}-row-{i}")
                if p.peak_mib is not None:
                    ax.plot([p.peak_mib], [p.quality], marker, markerfacecolor="white", markeredgecolor=colour,
                            markeredgewidth=2, markersize=7, gid=f"{QUALITY_MEMORY_ID}-peak-{i}")
                label = p.variant + ("" if p.role == "candidate" else f" ({p.role.replace('_', ' ')})")
                ax.annotate(label, (at, p.quality), xytext=(7, 5 - 11 * _same_spot(points, placed, i)),
                            textcoords="offset points", fontsize=9)
            ax.set_xlim(left=0)
        else:
            ax.text(0.5, 0.5, "memory not measured for any variant", transform=ax.transAxes,
                    ha="center", color=_NOTE)
        ax.set_xlabel("memory (MiB): filled = resident weights, hollow = peak after loading (scoring and speed probe)"
                      if with_peak else "weight memory (MiB)")
        ax.set_ylabel(y_name.split(";")[0])
        notes = ["square: baseline / noise floor; circle: candidate, coloured by its verdict"
                 + ("; dotted: from a variant's weights to its peak" if with_peak else "")
                 + (f"; not placed (memory or quality unknown): {', '.join(missing)}" if missing else "")]
        kinds = sorted({r.memory_kind for r in (doc.efficiency.variants if doc.efficiency else [])
                        if r.memory_kind and r.peak_memory_bytes})
        if kinds:
            notes.append(f"peak: {'; '.join(kinds)}")
        _note(ax, "\n".join(notes))
        return _render(fig, QUALITY_MEMORY_ID, title)


def _same_spot(points: Sequence[VariantPoint], placed: Sequence[VariantPoint], i: int) -> int:
    """How many placed variants before point i sit on the same spot (the baseline and its noise
    floor share one): each label moves down a line past them."""
    p = points[i]
    return sum(1 for q in points[:i] if q in placed and (q.weight_mib, q.quality) == (p.weight_mib, p.quality))


# ---------------------------------------------------------------- the calibration experiment


def calibrate_plot(summary, panels: Sequence[tuple[str, str]], *, higher_is_better: Collection[str] = ()) -> str:
    """`qeval calibrate`: one panel per (task, metric), a row per arm (method · calibration set),
    each seed a hollow dot, the pooled 95% interval a bar, the pooled estimate a tick.
    `summary`: run/calibrate.py's CalibrateSummary (its arms, each with task, method, calib and
    stat(metric) → per_seed, pooled)."""
    title = "Calibration sets: per-seed values and pooled 95% intervals"
    arms = sorted({(r.method, r.calib) for r in summary.arms})
    sets = sorted({c for _, c in arms})
    colour = {s: _CALIBRATE_COLOURS[i % len(_CALIBRATE_COLOURS)] for i, s in enumerate(sets)}
    shown = [(task, metric, rows) for task, metric in panels
             if (rows := {(r.method, r.calib): r.stat(metric) for r in summary.arms if r.task == task})]
    if not shown:
        return _empty(CALIBRATE_ID, title, "No arm scored on these tasks.")
    with _canvas(7.0, sum(0.9 + 0.32 * len(arms) for _ in shown)) as fig:
        axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
        for p, (ax, (task, metric, rows)) in enumerate(zip(axes, shown)):
            better = "higher" if metric in higher_is_better else "lower"
            ax.set_title(f"{task}: {metric} ({better} is better)", loc="left")
            ax.set_yticks(range(len(arms)), [f"{m} · {c}" for m, c in arms])
            ax.set_ylim(len(arms) - 0.5, -0.5)
            ax.axvline(0, color="#999999", linewidth=1, linestyle=(0, (3, 3)))
            for i, key in enumerate(arms):
                if key not in rows:
                    continue
                s, c = rows[key], colour[key[1]]
                ax.plot([s.pooled.low, s.pooled.high], [i, i], color=c, linewidth=3, solid_capstyle="butt",
                        gid=f"{CALIBRATE_ID}-panel-{p}-row-{i}")
                ax.plot([s.pooled.estimate], [i], "|", color=c, markersize=14, markeredgewidth=2)
                ax.plot(list(s.per_seed), [i] * len(s.per_seed), "o", markerfacecolor="white",
                        markeredgecolor=c, markersize=6, linestyle="none",
                        gid=f"{CALIBRATE_ID}-panel-{p}-seeds-{i}")
        fig.subplots_adjust(hspace=0.9)
        return _render(fig, CALIBRATE_ID, title)
