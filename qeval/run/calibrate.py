"""`qeval calibrate`: which calibration text gives the least clinical degradation?

Methods × calibration sets × seeds are quantized and scored against one baseline (one compare
run). Per arm (method, set) and task, each metric is given per seed, with the spread across seeds
and a pooled interval from a two-level bootstrap (items or passages paired across arms, seeds
resampled within an arm), so a set only "wins" when the difference exceeds both item sampling
and seed-to-seed noise. Pure functions: records in, numbers out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qeval.kinds import kind_of
from qeval.stats import seeds_units_bootstrap
from qeval.types import Interval, Strict, Task

# Each kind's metrics: qeval/kinds/ (`calibrate_metrics`). Lower is better for every metric but
# accuracy change, where higher is better.
HIGHER_IS_BETTER = {"delta_accuracy", "same_top"}


@dataclass(frozen=True)
class Arm:
    method: str
    calib: str
    seeds: tuple[int, ...]
    candidates: tuple[str, ...]  # variant names, one per seed, in seed order


class SeedStat(Strict):
    metric: str
    per_seed: tuple[float, ...]
    seed_sd: float  # spread across seeds (0 with one seed)
    pooled: Interval  # over seeds and units, two-level bootstrap


class ArmTask(Strict):
    method: str
    calib: str
    task: str
    kind: str
    n_units: int
    stats: tuple[SeedStat, ...]

    def stat(self, metric: str) -> SeedStat:
        return next(s for s in self.stats if s.metric == metric)


class SetContrast(Strict):
    method: str
    task: str
    metric: str
    a: str
    b: str
    difference: Interval  # a − b
    p: float
    distinguishable: bool  # the interval excludes 0
    better: str | None  # which set, when distinguishable


class CalibrateSummary(Strict):
    arms: tuple[ArmTask, ...]
    contrasts: tuple[SetContrast, ...]
    ranking: dict[str, tuple[str, ...]]  # method → sets, best first, by the primary metric
    primary: dict[str, str]  # method → "task/metric" used to rank
    quantize_seconds: dict[str, float]  # candidate → seconds to make its artefact


def unit_matrices(task: Task, base_records, runs: Sequence[dict], metric: str
                  ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(seeds × units) numerators and per-unit denominators for one metric of one arm."""
    kind = kind_of(task.spec.kind)
    base = None if kind.relative else base_records[task.spec.id]
    return kind.calibrate_rows(task, base, [run[task.spec.id] for run in runs], metric)


def _per_seed(m: np.ndarray, den: np.ndarray | None) -> tuple[float, ...]:
    d = den.sum() if den is not None else m.shape[1]
    return tuple(float(x) for x in m.sum(axis=1) / d)


def summarise(tasks: Sequence[Task], base_records: dict, records: dict[str, dict], arms: Sequence[Arm],
              quantize_seconds: dict[str, float], *, n_boot: int = 2000, seed: int = 0) -> CalibrateSummary:
    """`records[candidate][task_id]` → that candidate's ItemRecords or TextRecords."""
    rows: list[ArmTask] = []
    mats: dict[tuple[str, str, str, str], tuple[np.ndarray, np.ndarray | None]] = {}
    for arm in arms:
        runs = [records[c] for c in arm.candidates]
        for t in tasks:
            stats = []
            for metric in kind_of(t.spec.kind).calibrate_metrics:
                m, den, ids = unit_matrices(t, base_records, runs, metric)
                mats[(arm.method, arm.calib, t.spec.id, metric)] = (m, den)
                per = _per_seed(m, den)
                pooled, _ = seeds_units_bootstrap(m, den=den, n_boot=n_boot, seed=seed)
                stats.append(SeedStat(metric=metric, per_seed=per,
                                      seed_sd=float(np.std(per, ddof=1)) if len(per) > 1 else 0.0,
                                      pooled=pooled))
            rows.append(ArmTask(method=arm.method, calib=arm.calib, task=t.spec.id, kind=t.spec.kind,
                                n_units=len(ids), stats=tuple(stats)))
    contrasts = []
    methods = sorted({a.method for a in arms})
    for method in methods:
        sets = [a.calib for a in arms if a.method == method]
        for a, b in itertools.combinations(sets, 2):
            for t in tasks:
                for metric in kind_of(t.spec.kind).calibrate_metrics:
                    ma, den = mats[(method, a, t.spec.id, metric)]
                    mb, _ = mats[(method, b, t.spec.id, metric)]
                    diff, p = seeds_units_bootstrap(ma, mb, den=den, n_boot=n_boot, seed=seed)
                    sure = diff.low > 0 or diff.high < 0
                    a_better = (diff.estimate > 0) == (metric in HIGHER_IS_BETTER)
                    contrasts.append(SetContrast(method=method, task=t.spec.id, metric=metric, a=a, b=b,
                                                 difference=diff, p=p, distinguishable=sure,
                                                 better=(a if a_better else b) if sure else None))
    ranking, primary = {}, {}
    # Sets are ranked by the label-free metric of the kind that ranks first among the tasks: on
    # its first task, or averaged over its tasks.
    ranker = min((kind_of(t.spec.kind) for t in tasks), key=lambda k: k.rank_priority, default=None)
    first = next((t for t in tasks if kind_of(t.spec.kind) is ranker), None)
    for method in methods:
        mine = [r for r in rows if r.method == method]
        metric = ranker.label_free_metric if ranker is not None else ""
        if ranker is not None and ranker.rank_per_task:
            key = f"{first.spec.id}/{metric}"
            score = {r.calib: r.stat(metric).pooled.estimate for r in mine if r.task == first.spec.id}
        else:
            key = f"mean over tasks/{metric}"
            score = {}
            for r in mine:
                if metric in kind_of(r.kind).calibrate_metrics:
                    score.setdefault(r.calib, []).append(r.stat(metric).pooled.estimate)
            score = {k: float(np.mean(v)) for k, v in score.items()}
        ranking[method] = tuple(sorted(score, key=score.get))
        primary[method] = key
    return CalibrateSummary(arms=tuple(rows), contrasts=tuple(contrasts), ranking=ranking,
                            primary=primary, quantize_seconds=quantize_seconds)


# ---------------------------------------------------------------- plot (SVG, no dependencies)



def markdown(summary: CalibrateSummary, plot_file: str | None) -> str:
    lines = ["# qeval calibrate", ""]
    for method, order in summary.ranking.items():
        lines.append(f"**{method}**: ranking by {summary.primary[method]} (lower is better): "
                     + " < ".join(order))
    lines += ["", "## Per arm (method · set) and task", "",
              "| method | set | task | metric | per seed | seed SD | pooled (95% CI, items/passages × seeds) |",
              "|---|---|---|---|---|---|---|"]
    for r in summary.arms:
        for s in r.stats:
            per = ", ".join(f"{v:.4f}" for v in s.per_seed)
            lines.append(f"| {r.method} | {r.calib} | {r.task} | {s.metric} | {per} | {s.seed_sd:.4f} | "
                         f"{s.pooled.estimate:.4f} [{s.pooled.low:.4f}, {s.pooled.high:.4f}] |")
    lines += ["", "## Are the sets distinguishable?", "",
              "| method | task | metric | a − b | difference (95% CI) | p | verdict |", "|---|---|---|---|---|---|---|"]
    for c in summary.contrasts:
        verdict = f"{c.better} better" if c.distinguishable else "not distinguishable"
        lines.append(f"| {c.method} | {c.task} | {c.metric} | {c.a} − {c.b} | {c.difference.estimate:+.4f} "
                     f"[{c.difference.low:+.4f}, {c.difference.high:+.4f}] | {c.p:.3f} | {verdict} |")
    if summary.quantize_seconds:
        lines += ["", "## Quantization time", "", "| candidate | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in summary.quantize_seconds.items()]
    if plot_file:
        lines += ["", f"![per-seed values and pooled intervals]({plot_file})"]
    return "\n".join(lines) + "\n"
