"""Minimum detectable accuracy drop per task, printed before any scoring.

A paired comparison of n items whose outcomes differ on a share d of them (the discordance) has a
standard error of about √(d / n) for Δaccuracy, so the smallest drop it detects with power 1 − β
at two-sided α is (z₁₋α/₂ + z₁₋β)·√(d / n). The discordance comes from earlier runs of the same
task when the runs directory has them (per candidate when that candidate ran before, else the
largest seen for the task), otherwise from the policy's stated default.

A task declaring `cluster_by: cluster` counts its items as n²/Σ(cluster size²) (items of one
cluster perfectly correlated: the worst case; items without a cluster count one each); clustering
by category keeps n (its correlation is unknown before a run, and the run's intervals carry the
measured design effect). When the policy sets `high_risk_accuracy_margin`, the risk: high items
get a row of their own against it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from qeval import stats
from qeval.pairing import cluster_label
from qeval.gate import GatePolicy
from qeval.kinds import kind_of
from qeval.types import PowerRow, Risk, Sample, Task


def discordance_history(runs_root: Path) -> dict[tuple[str, str], tuple[float, str]]:
    """(task, candidate) → (discordance, source run) from the newest earlier run that has it."""
    found: dict[tuple[str, str], tuple[float, str]] = {}
    if not runs_root.is_dir():
        return found
    paths = sorted(runs_root.glob("*/results.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in paths:
        try:
            data = json.loads(path.read_text())
            comps = data["comparisons"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable old run says nothing about power
        for c in comps:
            try:
                key = (str(c["task"]), str(c["candidate"]))
                disc = (int(c["flips_correct_to_wrong"]) + int(c["flips_wrong_to_correct"])) / int(c["n"])
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                continue
            found.setdefault(key, (disc, path.parent.name))
    return found


def power_table(tasks: Sequence[Task], candidates: Sequence[str], policy: GatePolicy,
                history: dict[tuple[str, str], tuple[float, str]] | None = None) -> list[PowerRow]:
    history = history or {}
    rows = []
    for t in tasks:
        if not kind_of(t.spec.kind).has_labels:
            continue  # accuracy power: a label-free kind (reference text) has no accuracy to detect
        rules = policy.rules_for(t.spec.id)
        rows += _rows(t, list(t.samples), "all", rules.accuracy_margin, candidates, policy, history)
        high = [s for s in t.samples if s.risk == Risk.high]
        if rules.high_risk_accuracy_margin is not None and high:
            rows += _rows(t, high, "high_risk", rules.high_risk_accuracy_margin, candidates, policy, history)
    return rows


def row_labels(task: str, subset: str, n: int, n_effective: float | None) -> tuple[str, str]:
    """How a power row's task and item count are shown (terminal and report alike)."""
    label = f"{task} (risk: high)" if subset == "high_risk" else task
    count = f"{n} (≈{n_effective:.0f} effective)" if n_effective is not None else str(n)
    return label, count


def _effective_n(t: Task, samples: list[Sample]) -> float:
    if t.spec.cluster_by != "cluster":
        return float(len(samples))
    return stats.effective_n([cluster_label(s, "cluster") for s in samples])


def _rows(t: Task, samples: list[Sample], subset: str, margin: float | None, candidates: Sequence[str],
          policy: GatePolicy, history: dict[tuple[str, str], tuple[float, str]]) -> list[PowerRow]:
    """The rows of one task's items (or its risk: high subset) against one margin. The task's
    discordance from earlier runs stands in for the subset's."""
    rows = []
    tid, n = t.spec.id, len(samples)
    n_eff = _effective_n(t, samples)
    seen = {cand: v for (task, cand), v in history.items() if task == tid}
    per_cand: list[tuple[str | None, float, str]] = []
    for cand in candidates:
        if cand in seen:
            d, run = seen[cand]
            per_cand.append((cand, d, f"run {run}"))
    if len(per_cand) < len(candidates):
        if seen:
            cand_max, (d, run) = max(seen.items(), key=lambda kv: kv[1][0])
            fallback = (d, f"largest earlier ({cand_max}, run {run})")
        else:
            fallback = (policy.assumed_discordance, "policy default")
        if per_cand:
            per_cand += [(c, *fallback) for c in candidates if c not in seen]
        else:
            per_cand = [(None, *fallback)]
    for cand, d, source in per_cand:
        d_used = max(d, 1.0 / n)  # zero discordance seen before is no promise of zero now
        mde = stats.mde_paired(n, d_used, alpha=policy.alpha, power=policy.power) * (n / n_eff) ** 0.5
        needed = stats.n_for_mde(margin, d_used, alpha=policy.alpha, power=policy.power) if margin else None
        rows.append(PowerRow(
            task=tid, candidate=cand, n=n, n_effective=None if n_eff == n else n_eff, subset=subset,
            discordance=d_used, discordance_source=source,
            mde=mde, margin=margin, underpowered=margin is not None and mde > margin,
            # items needed at this task's ratio of items to effective items
            n_needed=None if needed is None else math.ceil(needed * n / n_eff - 1e-9),
        ))
    return rows
