"""A run's verdict: each comparison judged by its task kind's rules (qeval/gate.py holds the
policy and the rules; qeval/kinds/ says which rules a kind has), then combined across tasks and
candidates: all must pass, NO_GO bounds Bonferroni-corrected over a candidate's interval tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qeval import stats
from qeval.gate import GatePolicy, TaskRules, worst
from qeval.kinds import DEFAULT_KIND, kind_of
from qeval.types import Decision, GenerationComparison, TaskComparison, TaskVerdict, TextComparison, Verdict


def interval_rules(rules: TaskRules, kind: str = DEFAULT_KIND) -> int:
    """How many of these rules can say NO_GO from an interval on a task of this kind (the
    Bonferroni family size)."""
    return sum(x is not None for x in kind_of(kind).interval_limits(rules))


def nogo_alpha_for(policy: GatePolicy, tasks: Sequence[tuple[str, str]]) -> tuple[float, int]:
    """One-sided NO_GO error rate per test, and the family size it was corrected for.
    `tasks`: (task id, task kind) of one candidate's comparisons."""
    k = sum(interval_rules(policy.rules_for(t), kind) for t, kind in tasks)
    if policy.nogo_correction == "none" or k <= 1:
        return policy.alpha / 2, max(k, 1)
    return policy.alpha / 2 / k, k


def combination_text(policy: GatePolicy, k: int) -> str:
    a = policy.alpha / 2
    corr = (f"NO_GO bounds are Bonferroni-corrected over the candidate's {k} task × rule tests "
            f"(one-sided α = {a:g}/{k} = {a / k:.2g} each)" if policy.nogo_correction == "bonferroni"
            and k > 1 else f"NO_GO bounds use one-sided α = {a:g} (no multiplicity correction)")
    return (f"all tasks must pass: a candidate is GO only when every task and rule is GO, each at "
            f"one-sided α = {a:g} (an intersection–union test, so the false-GO rate stays at "
            f"{a:g} without correction); {corr}; any NO_GO makes the candidate NO_GO; otherwise "
            "INCONCLUSIVE. The run takes its worst candidate.")


def judge(comparisons: Sequence[TaskComparison | TextComparison | GenerationComparison],
          policy: GatePolicy, *,
          floors: Mapping[str, TaskComparison | TextComparison | GenerationComparison] | None = None,
          n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = stats.DEFAULT_SEED) -> Verdict:
    floors = floors or {}
    candidates = sorted({c.candidate for c in comparisons})
    go_alpha = policy.alpha / 2
    verdicts: list[TaskVerdict] = []
    family = 1
    for cand in candidates:
        mine = [c for c in comparisons if c.candidate == cand]
        nogo_alpha, family = nogo_alpha_for(policy, [(c.task, c.kind) for c in mine])
        verdicts += [kind_of(c.kind).judge(c, policy.rules_for(c.task), go_alpha=go_alpha,
                                           nogo_alpha=nogo_alpha, floor=floors.get(c.task),
                                           n_boot=n_boot, seed=seed) for c in mine]
    per_candidate = {
        cand: worst([t.decision for t in verdicts if t.candidate == cand]) for cand in candidates
    }
    overall = worst(list(per_candidate.values()))
    reasons = []
    for t in verdicts:
        if t.decision != Decision.GO:
            first = next(r for r in t.rules if r.decision == t.decision)
            reasons.append(f"{t.candidate} on {t.task}: {t.decision.value} — {first.reason}")
    if not verdicts:
        reasons.append("no task was compared")
    return Verdict(decision=overall, per_candidate=per_candidate, tasks=tuple(verdicts),
                   reasons=tuple(reasons), combination=combination_text(policy, family))
