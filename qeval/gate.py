"""Turn comparisons into GO / NO_GO / INCONCLUSIVE with reasons in plain words.

Pure: a GatePolicy, TaskComparisons (and optional noise floors) in, a Verdict out.

Every interval rule is a non-inferiority test with two one-sided bounds:
- GO needs the favourable bound inside the limit (e.g. the lower bound of Δaccuracy above −margin)
  at one-sided α/2 (the end of the two-sided (1 − α) interval);
- NO_GO needs the unfavourable bound beyond the limit (the upper bound of Δaccuracy below −margin),
  at one-sided α/2 divided by the number of such tests for the candidate (Bonferroni), so that
  running many tasks and rules does not manufacture a NO_GO from noise;
- anything else is INCONCLUSIVE: the data cannot tell.
A task is NO_GO if any rule is NO_GO, GO only if every rule is GO. A candidate is GO only when all
of its tasks are GO: an intersection–union test, whose false-GO rate stays at α/2 without any
correction however many tasks there are. The run takes its worst candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qeval import stats
from qeval.errors import QevalInputError
from qeval.util.yamlio import read_yaml
from qeval.types import (
    Decision, GenerationComparison, PairedItems, RuleResult, TaskComparison, TaskVerdict,
    TextComparison,
)

_SEVERITY = {Decision.GO: 0, Decision.INCONCLUSIVE: 1, Decision.NO_GO: 2}


def worst(decisions: Sequence[Decision]) -> Decision:
    if not decisions:
        return Decision.INCONCLUSIVE  # nothing compared is never a GO
    return max(decisions, key=_SEVERITY.__getitem__)


class TaskRules(BaseModel):
    """Limits for one task. Unset (null) limits are not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_items: int = Field(30, ge=1, description="fewer paired items than this: INCONCLUSIVE")
    # Largest acceptable accuracy loss (candidate − baseline), as a fraction.
    accuracy_margin: float | None = Field(0.05, ge=0, le=1)
    # The same non-inferiority test restricted to risk: high items.
    high_risk_accuracy_margin: float | None = Field(None, ge=0, le=1)
    # Accuracy rules only speak when the baseline is significantly above guessing at this level.
    chance_alpha: float = Field(0.05, gt=0, lt=1)
    # Label-free limits: mean and 95th-percentile choice-KL (nats), share of items whose top-1
    # answer changes.
    max_choice_kl_mean: float | None = Field(0.05, ge=0)
    max_choice_kl_p95: float | None = Field(0.25, ge=0)
    max_top1_disagreement: float | None = Field(0.10, ge=0, le=1)
    # generate tasks (label-free): share of items whose extracted answer differs from the
    # baseline's (two failed extractions count as the same answer).
    max_answer_disagreement: float | None = Field(0.10, ge=0, le=1)
    # reference_text tasks (label-free, per token): mean KL(baseline ‖ candidate) in nats,
    # perplexity ratio candidate / baseline, share of positions whose most likely next token
    # changes. A reference_text task can be GO on these alone: it has no labels to ask for.
    max_token_kld_mean: float | None = Field(0.05, ge=0)
    max_ppl_ratio: float | None = Field(1.05, ge=1)
    max_top_token_disagreement: float | None = Field(0.10, ge=0, le=1)
    # Hard limit, no interval: correct→wrong flips on risk: high items.
    max_high_risk_flips: int | None = Field(None, ge=0)
    # Without accuracy evidence the task cannot be GO on label-free rules alone.
    require_accuracy_evidence: bool = True
    # With a measured noise floor, a NO_GO needs an effect larger than numerics alone produce.
    require_above_noise_floor: bool = True


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    description: str = ""
    # Two-sided error rate of every interval; GO and NO_GO each use a one-sided α/2 bound.
    alpha: float = Field(0.05, gt=0, lt=1)
    # Power and assumed discordance for the minimum-detectable-drop table printed before a run.
    power: float = Field(0.8, gt=0, lt=1)
    assumed_discordance: float = Field(0.10, gt=0, le=1)
    # How per-task verdicts combine. Only one rule is offered, stated in every report.
    combine: Literal["all_must_pass"] = "all_must_pass"
    # Multiplicity correction of NO_GO bounds across a candidate's task × rule tests.
    nogo_correction: Literal["bonferroni", "none"] = "bonferroni"
    defaults: TaskRules = TaskRules()
    tasks: dict[str, TaskRules] = Field(default_factory=dict)

    def rules_for(self, task: str) -> TaskRules:
        return self.tasks.get(task, self.defaults)

    @classmethod
    def from_yaml(cls, path: Path) -> GatePolicy:
        """Load a policy file; any problem is one QevalInputError line naming the field."""
        data = read_yaml(path, empty={})
        if not isinstance(data, dict):
            raise QevalInputError(f"{path}: a gate policy must be a mapping of fields")
        # A per-task block overrides only what it names.
        defaults = data.get("defaults", {}) or {}
        tasks = {k: {**defaults, **(v or {})} for k, v in (data.get("tasks") or {}).items()}
        try:
            return cls.model_validate({**data, "tasks": tasks})
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(map(str, e["loc"]))
            raise QevalInputError(f"{path}: {where}: {e['msg']} (see configs/gates/default.yaml "
                                  "for the fields)") from None


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):.4g}%"


def _subset(items: PairedItems, mask: Sequence[bool]) -> tuple[int, int, int, float]:
    """(up, down, n, design effect) over the items selected by mask."""
    idx = [i for i, m in enumerate(mask) if m]
    b = np.array([items.baseline_correct[i] for i in idx], dtype=float)
    c = np.array([items.candidate_correct[i] for i in idx], dtype=float)
    labels = [items.clusters[i] for i in idx] if items.clusters is not None else None
    deff = stats.design_effect(c - b, labels) if idx else 1.0
    return int(np.sum(c > b)), int(np.sum(b > c)), len(idx), deff


def _accuracy_rule(name: str, what: str, up: int, down: int, n: int, deff: float, margin: float,
                   go_alpha: float, nogo_alpha: float, floor_disc: float | None) -> RuleResult:
    u, d, m = up / deff, down / deff, n / deff
    est = (up - down) / n
    lo = stats.tango_bound(u, d, m, alpha=go_alpha, side="lower")
    hi = stats.tango_bound(u, d, m, alpha=nogo_alpha, side="upper")
    facts = (f"{what}: Δaccuracy {_pp(est)} on {n} items ({down} correct→wrong, {up} wrong→correct"
             + (f", design effect {deff:.2f}" if deff > 1 else "") + ")")
    if lo > -margin:
        return RuleResult(rule=name, decision=Decision.GO, reason=(
            f"{facts}; the {_level(go_alpha)} lower bound {_pp(lo)} is above −{100 * margin:.1f} pp: "
            "non-inferior"))
    if hi < -margin:
        if floor_disc is not None and (up + down) / n <= floor_disc:
            return RuleResult(rule=name, decision=Decision.INCONCLUSIVE, reason=(
                f"{facts}; worse than −{100 * margin:.1f} pp, but its discordance "
                f"{100 * (up + down) / n:.1f}% is within the noise floor's {100 * floor_disc:.1f}%"))
        return RuleResult(rule=name, decision=Decision.NO_GO, reason=(
            f"{facts}; even the {_level(nogo_alpha)} upper bound {_pp(hi)} is below "
            f"−{100 * margin:.1f} pp: the candidate loses more than the margin"))
    return RuleResult(rule=name, decision=Decision.INCONCLUSIVE, reason=(
        f"{facts}; the bounds {_pp(lo)} ({_level(go_alpha)} lower) and {_pp(hi)} "
        f"({_level(nogo_alpha)} upper) straddle −{100 * margin:.1f} pp: more items are needed"))


def _upper_limit_rule(name: str, what: str, unit: str, est: float, go_bound: float,
                      nogo_bound: float, limit: float, go_alpha: float, nogo_alpha: float,
                      floor: float | None) -> RuleResult:
    """A label-free metric that must stay at or below `limit` (KL, disagreement)."""
    facts = f"{what} {est:.4g}{unit}"
    if go_bound <= limit:
        return RuleResult(rule=name, decision=Decision.GO, reason=(
            f"{facts}; its {_level(go_alpha)} upper bound {go_bound:.4g} is within the limit {limit:g}"))
    if nogo_bound > limit:
        if floor is not None and nogo_bound <= floor:
            return RuleResult(rule=name, decision=Decision.INCONCLUSIVE, reason=(
                f"{facts} is above the limit {limit:g} but not above the noise floor "
                f"({floor:.4g}): numerics alone move it this much"))
        return RuleResult(rule=name, decision=Decision.NO_GO, reason=(
            f"{facts}; even its {_level(nogo_alpha)} lower bound {nogo_bound:.4g} exceeds the "
            f"limit {limit:g}"))
    bound_text = "unbounded" if math.isinf(go_bound) else f"{go_bound:.4g}"
    return RuleResult(rule=name, decision=Decision.INCONCLUSIVE, reason=(
        f"{facts}; the bounds {nogo_bound:.4g} ({_level(nogo_alpha)} lower) and {bound_text} "
        f"({_level(go_alpha)} upper) straddle the limit {limit:g}"))


def _labelled_rules(c: TaskComparison | GenerationComparison, rules: TaskRules, go_alpha: float,
                    nogo_alpha: float, floor_discordance: float | None
                    ) -> tuple[list[RuleResult], bool]:
    """min_items and the rules that need answer keys (accuracy, high-risk margin and flips), for
    every kind of task with per-item correctness; and whether accuracy showed non-inferiority."""
    it = c.items
    results: list[RuleResult] = []
    if c.n < rules.min_items:
        results.append(RuleResult(
            rule="min_items", decision=Decision.INCONCLUSIVE,
            reason=f"only {c.n} paired items; the policy needs at least {rules.min_items}",
        ))

    above_chance, chance_reason = _chance_guard(c, rules.chance_alpha)
    accuracy_go = False
    if rules.accuracy_margin is not None:
        if not above_chance:
            r = RuleResult(rule="accuracy_non_inferiority", decision=Decision.INCONCLUSIVE,
                           reason=chance_reason)
        else:
            r = _accuracy_rule(
                "accuracy_non_inferiority", "all items", c.flips_wrong_to_correct,
                c.flips_correct_to_wrong, c.n, c.design_effect, rules.accuracy_margin, go_alpha,
                nogo_alpha, floor_discordance)
        accuracy_go = r.decision == Decision.GO
        results.append(r)

    if rules.high_risk_accuracy_margin is not None and c.high_risk.n > 0:
        # (a task without risk: high items has nothing to judge here: the rule is left out)
        up, down, n, deff = _subset(it, it.high_risk)
        if n < rules.min_items:
            r = RuleResult(rule="high_risk_non_inferiority", decision=Decision.INCONCLUSIVE,
                           reason=f"only {n} risk: high items; the policy needs at least "
                                  f"{rules.min_items} to judge them apart")
        elif not above_chance:
            r = RuleResult(rule="high_risk_non_inferiority", decision=Decision.INCONCLUSIVE,
                           reason=chance_reason)
        else:
            r = _accuracy_rule("high_risk_non_inferiority", "risk: high items", up, down, n, deff,
                               rules.high_risk_accuracy_margin, go_alpha, nogo_alpha, None)
        results.append(r)

    if rules.max_high_risk_flips is not None:
        flips = c.high_risk.correct_to_wrong
        listed = f": {', '.join(flips)}" if flips else ""
        if not above_chance:
            dec, why = Decision.INCONCLUSIVE, (
                f"{len(flips)} high-risk correct→wrong flips{listed}; but the baseline is at "
                "chance, so its 'correct' answers are guesses and their flips are noise")
        elif len(flips) > rules.max_high_risk_flips:
            dec, why = Decision.NO_GO, (
                f"{len(flips)} high-risk items flipped correct→wrong (limit "
                f"{rules.max_high_risk_flips}){listed}")
        else:
            dec, why = Decision.GO, (
                f"{len(flips)} high-risk correct→wrong flips of {c.high_risk.n} high-risk items "
                f"(limit {rules.max_high_risk_flips}){listed}")
        results.append(RuleResult(rule="high_risk_flips", decision=dec, reason=why))
    return results, accuracy_go


def _chance_guard(c: TaskComparison | GenerationComparison, alpha: float) -> tuple[bool, str]:
    """Whether the baseline is significantly above both guessing and the best answer-cue
    heuristic (one-sided exact tests at `alpha`), and the reason when it is not."""
    cue = (f"; the best answer-cue heuristic ('{c.cue_heuristic}', reading only the options) scores "
           f"{100 * c.cue_accuracy:.1f}% (one-sided exact p = {c.baseline_above_cue_p:.2g})"
           if c.cue_heuristic is not None else "")
    facts = (f"baseline accuracy {100 * c.baseline_accuracy:.1f}%; chance {100 * c.baseline_chance:.1f}% "
             f"(one-sided exact p = {c.baseline_above_chance_p:.2g}){cue}")
    above_chance = c.baseline_above_chance_p < alpha
    above_cue = c.baseline_above_cue_p is None or c.baseline_above_cue_p < alpha
    if above_chance and above_cue:
        return True, ""
    beaten = "chance" if not above_chance else "the best answer-cue heuristic"
    return False, (f"{facts}: not significantly above {beaten}, so accuracy cannot show damage or "
                   "safety on this task")


def _disagreement_rule(name: str, what: str, agree: Sequence[bool], clusters: Sequence[str] | None,
                       limit: float, go_alpha: float, nogo_alpha: float,
                       floor: float | None) -> RuleResult:
    """Share of items that disagree with the baseline, judged on Wilson bounds (effective n when
    items are clustered)."""
    n = len(agree)
    dis = 1 - sum(bool(a) for a in agree) / n  # as 1 − the reported agreement estimate
    deff = stats.design_effect([0.0 if a else 1.0 for a in agree], clusters)
    m = n / deff
    return _upper_limit_rule(
        name, what, "", dis, stats.wilson_bound(dis, m, alpha=go_alpha, side="upper"),
        stats.wilson_bound(dis, m, alpha=nogo_alpha, side="lower"), limit, go_alpha, nogo_alpha,
        floor)


def _evidence_rule(rules: TaskRules, accuracy_go: bool) -> list[RuleResult]:
    if rules.require_accuracy_evidence and not accuracy_go:
        return [RuleResult(
            rule="require_accuracy_evidence", decision=Decision.INCONCLUSIVE,
            reason="accuracy did not show non-inferiority; label-free agreement alone "
            "does not license a GO",
        )]
    return []


def judge_task(c: TaskComparison, rules: TaskRules, *, go_alpha: float = 0.025,
               nogo_alpha: float = 0.025, floor: TaskComparison | None = None,
               n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = stats.DEFAULT_SEED) -> TaskVerdict:
    """go_alpha / nogo_alpha: one-sided error rates of the GO and NO_GO bounds."""
    it = c.items
    use_floor = floor if rules.require_above_noise_floor else None
    results, accuracy_go = _labelled_rules(c, rules, go_alpha, nogo_alpha,
                                           use_floor.discordance if use_floor else None)

    kl = np.asarray(it.choice_kl)
    if rules.max_choice_kl_mean is not None:
        means = stats.bootstrap_means(kl, clusters=it.clusters, n_boot=n_boot, seed=seed)
        results.append(_upper_limit_rule(
            "choice_kl_mean", "mean choice-KL", " nats", float(kl.mean()),
            float(np.quantile(means, 1 - go_alpha)), float(np.quantile(means, nogo_alpha)),
            rules.max_choice_kl_mean, go_alpha, nogo_alpha,
            use_floor.choice_kl_mean.estimate if use_floor else None))

    if rules.max_choice_kl_p95 is not None:
        if it.clusters is None:
            go_b = stats.quantile_bound(kl, 0.95, alpha=go_alpha, side="upper")
            nogo_b = stats.quantile_bound(kl, 0.95, alpha=nogo_alpha, side="lower")
        else:
            boot = stats.cluster_bootstrap_stat(kl, it.clusters, lambda v: np.quantile(v, 0.95),
                                                seed=seed)
            go_b, nogo_b = float(np.quantile(boot, 1 - go_alpha)), float(np.quantile(boot, nogo_alpha))
        results.append(_upper_limit_rule(
            "choice_kl_p95", "95th-percentile choice-KL", " nats", c.choice_kl_p95.estimate,
            go_b, max(nogo_b, 0.0), rules.max_choice_kl_p95, go_alpha, nogo_alpha,
            use_floor.choice_kl_p95.estimate if use_floor else None))

    if rules.max_top1_disagreement is not None:
        results.append(_disagreement_rule(
            "top1_disagreement", "top-1 disagreement", it.agree, it.clusters,
            rules.max_top1_disagreement, go_alpha, nogo_alpha,
            1 - use_floor.top1_agreement.estimate if use_floor else None))

    results += _evidence_rule(rules, accuracy_go)
    decision = worst([r.decision for r in results]) if results else Decision.INCONCLUSIVE
    return TaskVerdict(task=c.task, candidate=c.candidate, decision=decision, rules=tuple(results))


def judge_generate(c: GenerationComparison, rules: TaskRules, *, go_alpha: float = 0.025,
                   nogo_alpha: float = 0.025, floor: GenerationComparison | None = None,
                   n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = stats.DEFAULT_SEED) -> TaskVerdict:
    """Generate tasks: the accuracy rules of judge_task (with its above-chance guard) on the
    extracted answers, and the label-free share of items whose answer changed. (n_boot and seed
    are unused: every bound here is closed-form.)"""
    use_floor = floor if rules.require_above_noise_floor else None
    results, accuracy_go = _labelled_rules(c, rules, go_alpha, nogo_alpha,
                                           use_floor.discordance if use_floor else None)
    if rules.max_answer_disagreement is not None:
        results.append(_disagreement_rule(
            "answer_disagreement", "share of items with another extracted answer", c.items.agree,
            c.items.clusters, rules.max_answer_disagreement, go_alpha, nogo_alpha,
            1 - use_floor.answer_agreement.estimate if use_floor else None))
    results += _evidence_rule(rules, accuracy_go)
    decision = worst([r.decision for r in results]) if results else Decision.INCONCLUSIVE
    return TaskVerdict(task=c.task, candidate=c.candidate, decision=decision, rules=tuple(results))


def judge_text(c: TextComparison, rules: TaskRules, *, go_alpha: float = 0.025,
               nogo_alpha: float = 0.025, floor: TextComparison | None = None,
               n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = stats.DEFAULT_SEED) -> TaskVerdict:
    """Label-free rules on reference text; bounds come from the bootstrap over passages."""
    u = c.units
    tokens = np.array(u.tokens, dtype=np.float64)
    use_floor = floor if rules.require_above_noise_floor else None
    results: list[RuleResult] = []
    if c.n_units < rules.min_items:
        results.append(RuleResult(
            rule="min_items", decision=Decision.INCONCLUSIVE,
            reason=f"only {c.n_units} passages to resample; the policy needs at least {rules.min_items}"))

    def bounds(num: Sequence[float], transform=lambda x: x) -> tuple[float, float, np.ndarray]:
        boot = transform(stats.bootstrap_ratio(num, tokens, n_boot=n_boot, seed=seed))
        return boot, float(np.quantile(boot, 1 - go_alpha)), float(np.quantile(boot, nogo_alpha))

    if rules.max_token_kld_mean is not None:
        _, go_b, nogo_b = bounds(u.kl_sum)
        results.append(_upper_limit_rule(
            "token_kld_mean", f"mean token KLD on {c.n_tokens} tokens", " nats", c.kld_mean.estimate,
            go_b, nogo_b, rules.max_token_kld_mean, go_alpha, nogo_alpha,
            use_floor.kld_mean.estimate if use_floor else None))
    if rules.max_ppl_ratio is not None:
        _, go_b, nogo_b = bounds(u.delta_nll, np.exp)
        results.append(_upper_limit_rule(
            "ppl_ratio", "perplexity ratio", "", c.ppl_ratio.estimate, go_b, nogo_b,
            rules.max_ppl_ratio, go_alpha, nogo_alpha,
            use_floor.ppl_ratio.estimate if use_floor else None))
    if rules.max_top_token_disagreement is not None:
        different = [t - s for t, s in zip(u.tokens, u.same_top)]
        _, go_b, nogo_b = bounds(different)
        results.append(_upper_limit_rule(
            "top_token_disagreement", "share of positions with another top token", "",
            1 - c.same_top.estimate, go_b, nogo_b, rules.max_top_token_disagreement,
            go_alpha, nogo_alpha, 1 - use_floor.same_top.estimate if use_floor else None))
    decision = worst([r.decision for r in results])
    return TaskVerdict(task=c.task, candidate=c.candidate, decision=decision, rules=tuple(results))
