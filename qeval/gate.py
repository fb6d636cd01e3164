"""Turn comparisons into GO / NO_GO / INCONCLUSIVE with reasons in plain words.

Pure: a GatePolicy and TaskComparisons in, a Verdict out. Every rule answers with one of the three
decisions; a task is NO_GO when any rule says NO_GO, GO only when every rule says GO, and
INCONCLUSIVE otherwise. A candidate takes the worst of its tasks; the run takes the worst of its
candidates, so a CI gate that lists several candidates fails when any of them fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .types import Decision, RuleResult, TaskComparison, TaskVerdict, Verdict

_SEVERITY = {Decision.GO: 0, Decision.INCONCLUSIVE: 1, Decision.NO_GO: 2}


def worst(decisions: Sequence[Decision]) -> Decision:
    if not decisions:
        return Decision.INCONCLUSIVE  # nothing compared is never a GO
    return max(decisions, key=_SEVERITY.__getitem__)


class TaskRules(BaseModel):
    """Thresholds for one task. Unset (null) limits are not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_items: int = Field(30, ge=1, description="fewer paired items than this: INCONCLUSIVE")
    # Non-inferiority on accuracy: GO needs the CI's lower bound of Δ above -margin; NO_GO when
    # the CI's upper bound lies below -margin (the candidate is surely worse by more than margin).
    accuracy_margin: float | None = Field(0.05, ge=0)
    # Accuracy rules only speak when the baseline is significantly above guessing at this level.
    chance_alpha: float = Field(0.05, gt=0, lt=1)
    # Label-free limits: mean choice-KL (nats) and top-1 agreement, judged on their 95% CIs.
    max_choice_kl_mean: float | None = Field(0.05, ge=0)
    min_top1_agreement: float | None = Field(0.90, ge=0, le=1)
    # Hard limit, no interval: correct→wrong flips on risk: high items (only counted when the
    # baseline is above chance, since flips of a guessing model are noise).
    max_high_risk_flips: int | None = Field(None, ge=0)
    # Without accuracy evidence the task cannot be GO on label-free rules alone.
    require_accuracy_evidence: bool = True


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    description: str = ""
    defaults: TaskRules = TaskRules()
    tasks: dict[str, TaskRules] = Field(default_factory=dict)

    def rules_for(self, task: str) -> TaskRules:
        return self.tasks.get(task, self.defaults)

    @classmethod
    def from_yaml(cls, path: Path) -> GatePolicy:
        data = yaml.safe_load(path.read_text()) or {}
        # A per-task block overrides only what it names.
        defaults = data.get("defaults", {}) or {}
        tasks = {k: {**defaults, **(v or {})} for k, v in (data.get("tasks") or {}).items()}
        return cls.model_validate({**data, "tasks": tasks})


def _fmt(x: float) -> str:
    return f"{x:+.3f}" if x else "0.000"


def judge_task(c: TaskComparison, rules: TaskRules) -> TaskVerdict:
    results: list[RuleResult] = []
    if c.n < rules.min_items:
        results.append(RuleResult(
            rule="min_items", decision=Decision.INCONCLUSIVE,
            reason=f"only {c.n} paired items; the policy needs at least {rules.min_items}",
        ))

    above_chance = c.baseline_above_chance_p < rules.chance_alpha
    accuracy_shown_non_inferior = False
    if rules.accuracy_margin is not None:
        m = rules.accuracy_margin
        d = c.delta
        ci = f"Δaccuracy {_fmt(d.estimate)} (95% CI {d.low:+.3f} to {d.high:+.3f})"
        if not above_chance:
            dec, why = Decision.INCONCLUSIVE, (
                f"baseline accuracy {c.baseline_accuracy:.3f} is not significantly above chance "
                f"({c.baseline_chance:.3f}, p={c.baseline_above_chance_p:.2g}): accuracy cannot "
                "show damage on this task"
            )
        elif d.low > -m:
            dec, why = Decision.GO, f"{ci}: non-inferior within margin {m:.3f}"
        elif d.high < -m:
            dec, why = Decision.NO_GO, f"{ci}: worse than the baseline by more than {m:.3f}"
        else:
            dec, why = Decision.INCONCLUSIVE, (
                f"{ci}: the interval straddles -{m:.3f}; more items are needed to decide"
            )
        accuracy_shown_non_inferior = dec == Decision.GO
        results.append(RuleResult(rule="accuracy_non_inferiority", decision=dec, reason=why))

    if rules.max_high_risk_flips is not None:
        flips = len(c.high_risk_flips)
        if not above_chance:
            dec, why = Decision.INCONCLUSIVE, "baseline at chance: high-risk flips are noise here"
        elif flips > rules.max_high_risk_flips:
            dec, why = Decision.NO_GO, (
                f"{flips} high-risk items flipped correct→wrong (limit "
                f"{rules.max_high_risk_flips}): {', '.join(c.high_risk_flips)}"
            )
        else:
            dec, why = Decision.GO, (
                f"{flips} high-risk correct→wrong flips of {c.high_risk_n} high-risk items "
                f"(limit {rules.max_high_risk_flips})"
            )
        results.append(RuleResult(rule="high_risk_flips", decision=dec, reason=why))

    if rules.max_choice_kl_mean is not None:
        k, lim = c.choice_kl_mean, rules.max_choice_kl_mean
        ci = f"mean choice-KL {k.estimate:.4f} nats (95% CI {k.low:.4f} to {k.high:.4f})"
        if k.high <= lim:
            dec, why = Decision.GO, f"{ci} within limit {lim}"
        elif k.low > lim:
            dec, why = Decision.NO_GO, f"{ci} above limit {lim}: answers shift"
        else:
            dec, why = Decision.INCONCLUSIVE, f"{ci} straddles limit {lim}"
        results.append(RuleResult(rule="choice_kl_mean", decision=dec, reason=why))

    if rules.min_top1_agreement is not None:
        a, lim = c.top1_agreement, rules.min_top1_agreement
        ci = f"top-1 agreement {a.estimate:.3f} (95% CI {a.low:.3f} to {a.high:.3f})"
        if a.low >= lim:
            dec, why = Decision.GO, f"{ci} at or above {lim}"
        elif a.high < lim:
            dec, why = Decision.NO_GO, f"{ci} below {lim}: the candidate picks other answers"
        else:
            dec, why = Decision.INCONCLUSIVE, f"{ci} straddles {lim}"
        results.append(RuleResult(rule="top1_agreement", decision=dec, reason=why))

    if rules.require_accuracy_evidence and not accuracy_shown_non_inferior:
        results.append(RuleResult(
            rule="require_accuracy_evidence", decision=Decision.INCONCLUSIVE,
            reason="accuracy could not show non-inferiority; label-free agreement alone "
            "does not license a GO",
        ))

    decision = worst([r.decision for r in results]) if results else Decision.INCONCLUSIVE
    return TaskVerdict(task=c.task, candidate=c.candidate, decision=decision, rules=tuple(results))


def judge(comparisons: Sequence[TaskComparison], policy: GatePolicy) -> Verdict:
    tasks = tuple(judge_task(c, policy.rules_for(c.task)) for c in comparisons)
    candidates = sorted({t.candidate for t in tasks})
    per_candidate = {
        cand: worst([t.decision for t in tasks if t.candidate == cand]) for cand in candidates
    }
    overall = worst(list(per_candidate.values()))
    reasons = []
    for t in tasks:
        if t.decision != Decision.GO:
            first = next(r for r in t.rules if r.decision == t.decision)
            reasons.append(f"{t.candidate} on {t.task}: {t.decision.value} — {first.reason}")
    if not tasks:
        reasons.append("no task was compared")
    return Verdict(decision=overall, per_candidate=per_candidate, tasks=tasks,
                   reasons=tuple(reasons))
