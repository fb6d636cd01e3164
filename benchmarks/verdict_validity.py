"""Is the verdict trustworthy? Error rates of the gate measured by simulation, and the real model.

    python benchmarks/verdict_validity.py            # simulation + real model (uses stored records)
    python benchmarks/verdict_validity.py --no-real  # simulation only (about a minute)

1. A/A: the baseline against a numerically perturbed copy of itself (the fake backend's numeric
   path), items resampled many times → false NO_GO rate under the default policy (goal ≤ 5%).
2. Planted effects: a controllable backend demotes / promotes the answer key on known shares of a
   20,000-item pool, so the true Δaccuracy and discordance are known exactly. Samples of n items are
   drawn from the pool many times:
   - true drop 2 pp at n = 1,000 → share of runs the gate blocks (not GO; goal ≥ 0.8) and the
     share where the drop is detected outright (two-sided CI below 0) next to the power the
     minimum-detectable-drop formula predicts;
   - true drop exactly at the margin → both error rates of the non-inferiority test (false GO and
     false NO_GO, each should stay at or below α/2 = 2.5%);
   - true drop 0 → GO rate (how often an undamaged candidate is released);
   - log-prob shift with unchanged answers (temperature) → caught by the label-free rules only.
3. The embedded model: fp32 against bf16, int8wo, int8 and nf4 on clinical-core, with a
   batch-size noise floor, and the verdicts with their first reasons.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qeval import stats  # noqa: E402
from qeval.engines.fake import FakeFactory  # noqa: E402
from qeval.pairing import compare_task  # noqa: E402
from qeval.run.config import RunConfig  # noqa: E402
from qeval.settings import resource_dir  # noqa: E402
from qeval.report.terminal import QuietUI  # noqa: E402
from qeval.gate import GatePolicy, TaskRules  # noqa: E402
from qeval.verdict import judge
from qeval.run.pipeline import run_variant  # noqa: E402
from qeval.types import Decision, Method, Risk, Sample, SourceSpec, Task, TaskSpec, VariantSpec  # noqa: E402

POOL = 20_000


def pool_task() -> Task:
    samples = tuple(
        Sample(id=f"p{i:05d}", question=f"q{i}", choices=("a", "b", "c", "d"), target=i % 4,
               risk=Risk.high if i % 3 == 0 else Risk.standard)
        for i in range(POOL))
    return Task(spec=TaskSpec(id="pool", source=SourceSpec(path=".")), samples=samples,
                content_hash=f"pool-{POOL}", path="<memory>")


def fake(name: str, **params) -> VariantSpec:
    return VariantSpec(name=name, method=Method.fake, backend="fake", params=params)


@dataclass
class Scenario:
    name: str
    candidate: VariantSpec
    n: int
    policy: GatePolicy
    goal: str
    margin_at_truth: bool = False  # set the margin to the pool's exact true drop


def score(task: Task, variant: VariantSpec, base=None):
    cfg = RunConfig(baseline=variant, candidates=(variant,), tasks=("pool",), n_boot=100)
    return run_variant(variant, [task], factory=FakeFactory([task]), store=None,
                       model_fingerprint="fake", cfg=cfg, ui=QuietUI(), baseline=base)


def simulate(trials: int, seed: int) -> list[dict]:
    task = pool_task()
    base = score(task, fake("base", skill=0.6, seed=1))
    base_recs = base.records["pool"]
    acc = np.mean([r.correct for r in base_recs])

    default = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
    accuracy_only = lambda m: GatePolicy(defaults=TaskRules(  # noqa: E731
        accuracy_margin=m, max_choice_kl_mean=None, max_choice_kl_p95=None,
        max_top1_disagreement=None))
    label_free = GatePolicy(defaults=TaskRules(accuracy_margin=None, require_accuracy_evidence=False))

    # damage (correct→wrong) and promote (wrong→correct; applied after damage) for a planted drop
    # and discordance: down = acc·d·(1 − p), up = (1 − acc)·p.
    def planted(drop: float, disc: float = 0.04) -> dict:
        down, up = (disc + drop) / 2, (disc - drop) / 2
        p = up / (1 - acc)
        return {"damage": down / (acc * (1 - p)), "promote": p}

    scenarios = [
        Scenario("A/A numeric copy", fake("copy", skill=0.6, seed=1, numeric_path="x", path_noise=0.05),
                 216, default, "P(NO_GO) ≤ 0.05"),
        Scenario("A/A numeric copy", fake("copy", skill=0.6, seed=1, numeric_path="x", path_noise=0.05),
                 1000, default, "P(NO_GO) ≤ 0.05"),
        Scenario("true drop 2 pp", fake("drop2", skill=0.6, seed=1, **planted(0.02)), 1000,
                 accuracy_only(0.02), "P(not GO) ≥ 0.8"),
        Scenario("true drop 2 pp", fake("drop2", skill=0.6, seed=1, **planted(0.02)), 1000,
                 accuracy_only(0.05), "(margin 5 pp: a 2 pp drop is acceptable)"),
        Scenario("true drop = margin", fake("drop5", skill=0.6, seed=1, **planted(0.05, 0.08)), 1000,
                 accuracy_only(0.05), "P(GO) ≤ 0.025 and P(NO_GO) ≤ 0.025", margin_at_truth=True),
        Scenario("true drop 0", fake("drop0", skill=0.6, seed=1, **planted(0.0)), 1000,
                 accuracy_only(0.02), "GO rate"),
        Scenario("true drop 0", fake("drop0", skill=0.6, seed=1, **planted(0.0)), 216,
                 accuracy_only(0.05), "GO rate"),
        Scenario("true drop 10 pp", fake("drop10", skill=0.6, seed=1, **planted(0.10, 0.12)), 216,
                 accuracy_only(0.05), "P(NO_GO) high"),
        Scenario("log-prob shift, same answers", fake("flat", skill=0.6, seed=1, temperature=2.0),
                 216, label_free, "P(NO_GO) high"),
    ]
    rows = []
    rng = np.random.default_rng(seed)
    cache: dict[str, list] = {}
    for sc in scenarios:
        if sc.candidate.name not in cache:
            cache[sc.candidate.name] = score(task, sc.candidate, base).records["pool"]
        cand = cache[sc.candidate.name]
        truth = compare_task(base_recs, cand, n_boot=100)
        policy = accuracy_only(-truth.delta.estimate) if sc.margin_at_truth else sc.policy
        counts = {d: 0 for d in Decision}
        detected = 0
        t0 = time.perf_counter()
        for _ in range(trials):
            idx = rng.choice(POOL, sc.n, replace=False)
            c = compare_task([base_recs[i] for i in idx], [cand[i] for i in idx], n_boot=1000,
                             seed=int(rng.integers(1 << 31)))
            v = judge([c], policy, n_boot=1000, seed=int(rng.integers(1 << 31)))
            counts[v.decision] += 1
            detected += c.delta.high < 0
        mde = stats.mde_paired(sc.n, truth.discordance)
        d = -truth.delta.estimate
        z = stats.normal_quantile(0.975)
        predicted = float(_phi(d / np.sqrt(truth.discordance / sc.n) - z)) if d > 0 else None
        rows.append({
            "scenario": sc.name, "n": sc.n, "true Δ pp": 100 * truth.delta.estimate,
            "disc %": 100 * truth.discordance, "KL mean": truth.choice_kl_mean.estimate,
            "policy": _policy_name(policy), "P(GO)": counts[Decision.GO] / trials,
            "P(INC)": counts[Decision.INCONCLUSIVE] / trials, "P(NO_GO)": counts[Decision.NO_GO] / trials,
            "drop detected": detected / trials, "predicted": predicted, "MDE pp": 100 * mde,
            "goal": sc.goal, "seconds": time.perf_counter() - t0,
        })
    return rows


def _phi(x: float) -> float:
    import math

    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _policy_name(p: GatePolicy) -> str:
    r = p.defaults
    if r.accuracy_margin is None:
        return "label-free only"
    if r.max_choice_kl_mean is None:
        return f"accuracy only, margin {100 * r.accuracy_margin:.3g} pp"
    return "default"


def print_sim(rows: list[dict], trials: int) -> None:
    print(f"\n## Simulation ({trials} resamples per row; Monte Carlo SE of a rate p is "
          f"√(p(1−p)/{trials}) ≤ {50 / np.sqrt(trials):.1f} pp)\n")
    print("| scenario | n | true Δ pp | disc % | policy | P(GO) | P(INC) | P(NO_GO) | drop detected | "
          "predicted by MDE formula | MDE pp | goal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pred = "—" if r["predicted"] is None else f"{r['predicted']:.2f}"
        print(f"| {r['scenario']} | {r['n']} | {r['true Δ pp']:+.2f} | {r['disc %']:.1f} | {r['policy']} | "
              f"{r['P(GO)']:.3f} | {r['P(INC)']:.3f} | {r['P(NO_GO)']:.3f} | {r['drop detected']:.3f} | "
              f"{pred} | {r['MDE pp']:.1f} | {r['goal']} |")


def real_model() -> None:
    from qeval.engines.hf import HFFactory
    from qeval.run.config import parse_variant, suite_tasks
    from qeval.report.terminal import RichUI
    from qeval.model_source import resolve_model
    from qeval.settings import cache_dir
    from qeval.run.pipeline import run_compare
    from qeval.power import discordance_history
    from qeval.run.store import RecordStore
    from qeval.tasks.registry import TaskRegistry
    from rich.console import Console

    console = Console(stderr=True)
    policy = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
    tasks = [TaskRegistry([resource_dir("tasks")]).load(t) for t in suite_tasks("clinical-core")]
    cfg = RunConfig(baseline=parse_variant("fp32"),
                    candidates=tuple(parse_variant(v) for v in ("bf16", "int8wo", "int8", "nf4")),
                    tasks=tuple(t.spec.id for t in tasks), noise_floor="batch1")
    model = resolve_model(cfg.model)
    t0 = time.perf_counter()
    res = run_compare(cfg, tasks, factory=HFFactory(model, device="cpu"),
                      store=RecordStore(cache_dir() / "records"), model_fingerprint=model.fingerprint,
                      policy=policy, ui=RichUI(console), history=discordance_history(Path("runs")))
    print(f"\n## Embedded model: {model.spec}, fp32 baseline on CPU, clinical-core "
          f"({time.perf_counter() - t0:.0f} s; stored records reused)\n")
    print("| task | candidate | computed | Δ pp [95% CI] | disc % | McNemar p | KL mean [95% CI] | KL p95 | "
          "top-1 agree % | baseline vs chance p | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = {(t.task, t.candidate): t for t in res.verdict.tasks}
    compute = {c.spec.name: c.info.compute_dtype for c in res.candidates}
    rows = [(c, verdicts.get((c.task, c.candidate))) for c in res.comparisons]
    rows += [(c, None) for c in res.floors.values()]
    for c, v in rows:
        name = c.candidate if v else f"{c.candidate} (noise floor)"
        print(f"| {c.task} | {name} | {compute.get(c.candidate, 'float32')} | "
              f"{100 * c.delta.estimate:+.1f} [{100 * c.delta.low:+.1f}, {100 * c.delta.high:+.1f}] | "
              f"{100 * c.discordance:.1f} | {c.mcnemar_p:.2g} | {c.choice_kl_mean.estimate:.4f} "
              f"[{c.choice_kl_mean.low:.4f}, {c.choice_kl_mean.high:.4f}] | {c.choice_kl_p95.estimate:.3f} | "
              f"{100 * c.top1_agreement.estimate:.1f} | {c.baseline_above_chance_p:.2g} | "
              f"{v.decision.value if v else '—'} |")
    print("\nWhy (first deciding rule per candidate and task):\n")
    for t in res.verdict.tasks:
        first = next(r for r in t.rules if r.decision == t.decision)
        print(f"- {t.candidate} on {t.task}: **{t.decision.value}** — `{first.rule}`: {first.reason}")
    print(f"\nOverall: **{res.verdict.decision.value}** "
          f"({', '.join(f'{k} {v.value}' for k, v in res.verdict.per_candidate.items())})")
    print(f"\nCombination: {res.verdict.combination}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000, help="resamples per simulated scenario")
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--no-real", action="store_true", help="skip the embedded-model part")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print("# qeval verdict validity")
    print_sim(simulate(args.trials, args.seed), args.trials)
    if not args.no_real:
        real_model()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
