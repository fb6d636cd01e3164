"""reference_text: bounded baseline distributions, binned KL, windows, statistics, gate and reuse
(fake backend for the flow; pure numpy for the maths)."""

from __future__ import annotations

import numpy as np
import pytest

from qeval.kinds import reference_text as rt
from qeval import stats
from qeval.engines.fake import FakeFactory
from qeval.run.config import RunConfig
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.errors import QevalInputError
from qeval.gate import GatePolicy, TaskRules
from qeval.verdict import nogo_alpha_for
from qeval.run.pipeline import run_compare
from qeval.run.store import RecordStore
from qeval.tasks.registry import load_task
from qeval.types import Decision, Passage, SourceSpec, Task, TaskSpec

from conftest import fake_variant


def make_text_task(n: int = 40, words: int = 60, task_id: str = "ref", window: int = 1024) -> Task:
    rng = np.random.default_rng(7)
    vocab = ["dose", "renal", "patient", "mg", "daily", "review", "blood", "pressure", "the", "of"]
    passages = tuple(Passage(id=f"p{i:03d}", text=" ".join(rng.choice(vocab, size=words)),
                             category=f"style{i % 4}") for i in range(n))
    spec = TaskSpec(id=task_id, kind="reference_text", source=SourceSpec(format="qeval_passages", path="."),
                    baseline_top_k=16, window_tokens=window)
    return Task(spec=spec, samples=(), passages=passages, content_hash=f"{task_id}-{n}-{words}-{window}",
                path="<memory>")


def _logprobs(rng, rows, vocab, scale=2.0):
    x = rng.normal(0, scale, size=(rows, vocab))
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


class _Table:
    """A 'backend' that returns fixed log-prob tables (for the binned-KL maths)."""

    def __init__(self, lp):
        self.lp = lp.astype(np.float32)

    def token_logprobs(self, tokens):
        return self.lp


def _exact_kl(p_lp, q_lp):
    p_lp, q_lp = p_lp.astype(np.float64), q_lp.astype(np.float64)
    return (np.exp(p_lp) * (p_lp - q_lp)).sum(axis=1)


def test_binned_kl_is_a_lower_bound_and_exact_with_the_whole_vocabulary():
    rng = np.random.default_rng(0)
    base, cand = _logprobs(rng, 50, 300), _logprobs(rng, 50, 300)
    cand = 0.7 * base + 0.3 * cand
    cand = cand - np.log(np.exp(cand).sum(axis=1, keepdims=True))
    passage = rt.PassageTokens("p", "all", None, (tuple(range(51)),), "h")
    exact = _exact_kl(base.astype(np.float32), cand.astype(np.float32))
    for k, tol in [(300, 1e-6), (64, None), (8, None)]:
        dist = rt.baseline_distributions(_Table(base), [passage], k)["p"][0]
        binned = rt.binned_kl(dist, cand.astype(np.float32))
        assert np.all(binned <= exact + 1e-6)  # merging outcomes never raises KL
        if tol:
            np.testing.assert_allclose(binned, exact, atol=tol)
        else:
            assert binned.mean() > 0.3 * exact.mean()  # and keeps most of it
    same = rt.baseline_distributions(_Table(base), [passage], 8)["p"][0]
    assert np.all(rt.binned_kl(same, base.astype(np.float32)) < 1e-6)


def test_baseline_distribution_keeps_top_tokens_in_order_and_exact_tail():
    rng = np.random.default_rng(1)
    lp = _logprobs(rng, 10, 100)
    passage = rt.PassageTokens("p", "all", None, (tuple(range(11)),), "h")
    d = rt.baseline_distributions(_Table(lp), [passage], 5)["p"][0]
    np.testing.assert_array_equal(d.top_ids, np.argsort(-lp.astype(np.float32), axis=1, kind="stable")[:, :5])
    p = np.exp(lp)
    tail = p.sum(axis=1) - np.take_along_axis(p, d.top_ids.astype(int), axis=1).sum(axis=1)
    np.testing.assert_allclose(d.tail_mass, tail, rtol=1e-5)
    np.testing.assert_allclose(d.reference_logprob, lp[np.arange(10), np.arange(1, 11)], rtol=1e-5)


@pytest.mark.parametrize("window", [16, 17, 100, 1024])
def test_windows_predict_every_token_after_the_first_exactly_once(window):
    spec = make_text_task(window=window).spec
    ids = list(range(250))
    (p,) = rt.tokenize_passages(spec, [Passage(id="x", text="t")], lambda _: ids)
    predicted = [tok for w in p.windows for tok in w[1:]]
    assert predicted == ids[1:] and all(len(w) <= window for w in p.windows)
    assert p.n_scored == 249


def _run(task, *cands, store=None, policy=None, n_boot=1000, floor=None):
    base = fake_variant("base")
    cfg = RunConfig(baseline=base, candidates=cands, tasks=(task.spec.id,), n_boot=n_boot, noise_floor=floor)
    return run_compare(cfg, [task], factory=FakeFactory([task]), store=store, model_fingerprint="fake",
                       policy=policy or GatePolicy(), ui=QuietUI())


def test_identical_candidate_is_go_and_damage_is_no_go():
    task = make_text_task()
    res = _run(task, fake_variant("same"), fake_variant("noisy", noise=3.0))
    same, noisy = res.comparisons
    assert same.kld_mean.estimate == 0 and same.same_top.estimate == 1 and same.ppl_ratio.estimate == 1
    assert noisy.kld_mean.estimate > 0.5 and noisy.ppl_ratio.low > 1.05 and noisy.same_top.estimate < 0.9
    assert res.verdict.per_candidate == {"same": Decision.GO, "noisy": Decision.NO_GO}
    assert same.n_tokens == sum(len(p.text.encode()) - 1 for p in task.passages)


def test_small_damage_straddling_the_limits_is_inconclusive_not_go():
    task = make_text_task(n=40)
    res = _run(task, fake_variant("slight", noise=0.55))
    (c,) = res.comparisons
    limit = TaskRules().max_token_kld_mean
    assert c.kld_mean.low < limit < c.kld_mean.high or res.verdict.decision != Decision.GO


def test_text_statistics_match_their_definitions():
    task = make_text_task(n=12)
    res = _run(task, fake_variant("noisy", noise=0.8))
    (c,) = res.comparisons
    recs = res.candidates[0].text["ref"]
    kl = np.concatenate([r.kl for r in recs])
    assert c.kld_mean.estimate == pytest.approx(kl.mean())
    assert c.kld_p99 == pytest.approx(np.quantile(kl, 0.99)) and c.kld_max == pytest.approx(kl.max())
    # Clustered SE of the ratio estimator, by hand.
    s = np.array([np.sum(r.kl) for r in recs]); n = np.array([r.n_tokens for r in recs], float)
    r_hat = s.sum() / n.sum()
    se = np.sqrt(len(s) / (len(s) - 1) * np.sum((s - r_hat * n) ** 2)) / n.sum()
    assert c.kld_se == pytest.approx(se)
    dnll = sum(r.nll_candidate - r.nll_baseline for r in recs) / n.sum()
    assert c.ppl_ratio.estimate == pytest.approx(np.exp(dnll))
    assert c.ppl_candidate / c.ppl_baseline == pytest.approx(np.exp(dnll))
    assert c.kld_mean.low <= c.kld_mean.estimate <= c.kld_mean.high


def test_candidate_with_other_token_ids_is_refused_naming_the_passage():
    task = make_text_task(n=3)
    passages = rt.tokenize_passages(task.spec, task.passages, lambda t: list(t.encode()))
    hashes = {p.id: p.prompt_hash for p in passages}
    rt.check_same_tokens("ref", passages, hashes, "c")
    hashes["p001"] = "different"
    with pytest.raises(QevalInputError, match="passage p001"):
        rt.check_same_tokens("ref", passages, hashes, "c")


class _OtherTokenizer(FakeFactory):
    def open(self, variant, baseline_compute):
        backend = super().open(variant, baseline_compute)
        if variant.name != "base":
            backend.tokenize = lambda text: list(text.upper().encode())
        return backend


def test_a_tokenizer_mismatch_stops_the_run_before_scoring():
    task = make_text_task(n=3)
    cfg = RunConfig(baseline=fake_variant("base"), candidates=(fake_variant("c"),), tasks=("ref",))
    with pytest.raises(QevalInputError, match="passage p000: c tokenises"):
        run_compare(cfg, [task], factory=_OtherTokenizer([task]), store=None, model_fingerprint="f",
                    policy=GatePolicy(), ui=QuietUI())


class _CountingFactory(FakeFactory):
    def __init__(self, tasks):
        super().__init__(tasks)
        self.opened: list[str] = []

    def open(self, variant, baseline_compute):
        self.opened.append(variant.name)
        return super().open(variant, baseline_compute)


def test_stored_text_records_are_reused_and_the_baseline_is_not_reopened(tmp_path):
    task = make_text_task(n=35)
    store = RecordStore(tmp_path)
    cfg = RunConfig(baseline=fake_variant("base"), candidates=(fake_variant("c", noise=0.5),),
                    tasks=("ref",), n_boot=500, efficiency=None)
    runs = []
    for _ in range(2):
        f = _CountingFactory([task])
        runs.append((f, run_compare(cfg, [task], factory=f, store=store, model_fingerprint="fake",
                                    policy=GatePolicy(), ui=QuietUI())))
    (f1, r1), (f2, r2) = runs
    assert f1.opened == ["base", "c"] and f2.opened == []
    assert r1.comparisons[0].model_dump() == r2.comparisons[0].model_dump()
    # A new candidate needs the baseline's distributions again: the baseline is reopened.
    f3 = _CountingFactory([task])
    cfg3 = cfg.model_copy(update={"candidates": (fake_variant("c2", noise=0.6),)})
    run_compare(cfg3, [task], factory=f3, store=store, model_fingerprint="fake", policy=GatePolicy(),
                ui=QuietUI())
    assert f3.opened == ["base", "c2"]


def test_noise_floor_on_text_and_family_size_by_kind():
    task = make_text_task(n=35)
    res = _run(task, fake_variant("c", noise=0.3), floor="batch1")
    floor = res.floors["ref"]
    assert 0 < floor.kld_mean.estimate < res.comparisons[0].kld_mean.estimate
    pol = GatePolicy()
    assert nogo_alpha_for(pol, [("ref", "reference_text"), ("mc", "multiple_choice")])[1] == 3 + 4


def test_too_few_passages_is_inconclusive():
    task = make_text_task(n=10)
    res = _run(task, fake_variant("same"))
    rules = {r.rule: r.decision for r in res.verdict.tasks[0].rules}
    assert rules["min_items"] == Decision.INCONCLUSIVE and res.verdict.decision == Decision.INCONCLUSIVE


def test_builtin_clinical_reference_passages():
    task = load_task(resource_dir("tasks") / "clinical_reference" / "clinical_reference.yaml")
    assert task.spec.kind == "reference_text" and task.size() >= 30
    assert {p.category for p in task.passages} == {"discharge_summary", "guideline", "patient_education",
                                                   "case_note"}
    assert len({p.id for p in task.passages}) == task.size()
    assert sum(len(p.text.split()) for p in task.passages) > 12_000


@pytest.mark.parametrize("content,match", [
    ("style: x\npassages:\n  - {id: a, title: t, specialty: s, text: hi, extra: 1}\n", "extra"),
    ("style: x\npassages:\n  - {id: a, title: t, specialty: s, text: '  '}\n", "has no text"),
    ("style: x\npassages:\n  - {id: a, title: t, specialty: s, text: hi}\n"
     "  - {id: a, title: t, specialty: s, text: ho}\n", "duplicate passage id 'a'"),
])
def test_bad_passage_files_are_one_clear_error(tmp_path, content, match):
    (tmp_path / "passages").mkdir()
    (tmp_path / "passages" / "p.yaml").write_text(content)
    (tmp_path / "t.yaml").write_text("id: t\nkind: reference_text\nsource: {format: qeval_passages, path: passages}\n")
    with pytest.raises(QevalInputError, match=match):
        load_task(tmp_path / "t.yaml")


def test_reference_task_must_read_passages(tmp_path):
    (tmp_path / "t.yaml").write_text("id: t\nkind: reference_text\nsource: {path: .}\n")
    with pytest.raises(QevalInputError, match="qeval_passages"):
        load_task(tmp_path / "t.yaml")


def test_bootstrap_ratio_matches_cluster_bootstrap_of_means():
    v = np.arange(20, dtype=float)
    labels = [f"c{i % 5}" for i in range(20)]
    a = stats.bootstrap_means(v, clusters=labels, n_boot=500, seed=3)
    sums = [v[[i for i in range(20) if labels[i] == c]].sum() for c in sorted(set(labels))]
    b = stats.bootstrap_ratio(sums, [4.0] * 5, n_boot=500, seed=3)
    np.testing.assert_allclose(a, b)


def test_changing_top_k_or_windows_changes_the_task_hash(tmp_path):
    (tmp_path / "passages").mkdir()
    (tmp_path / "passages" / "p.yaml").write_text(
        "style: x\npassages:\n  - {id: a, title: t, specialty: s, text: some text}\n")
    hashes = set()
    for extra in ["", "baseline_top_k: 64\n", "baseline_top_k: 256\n", "window_tokens: 512\n"]:
        (tmp_path / "t.yaml").write_text(
            "id: t\nkind: reference_text\nsource: {format: qeval_passages, path: passages}\n" + extra)
        hashes.add(load_task(tmp_path / "t.yaml").content_hash)
    assert len(hashes) == 3  # "" and 256 are the same task: 256 is the default


def test_kept_baseline_distributions_spare_the_baseline_when_a_candidate_is_added(tmp_path):
    """Opt-in (--keep-distributions): the baseline's distributions are stored, and a compare that
    adds a candidate scores only that candidate, with the numbers a recomputing run gives.
    By default nothing of them is written."""
    task = make_text_task(n=35)
    base_cfg = RunConfig(baseline=fake_variant("base"), candidates=(fake_variant("c", noise=0.5),),
                         tasks=("ref",), n_boot=500, efficiency=None)
    common = dict(model_fingerprint="fake", policy=GatePolicy(), ui=QuietUI())
    plain = RecordStore(tmp_path / "plain")
    run_compare(base_cfg, [task], factory=_CountingFactory([task]), store=plain, **common)
    assert not list((tmp_path / "plain").glob("*.dists.npz"))  # never by default

    kept = RecordStore(tmp_path / "kept")
    cfg = base_cfg.model_copy(update={"keep_distributions": True})
    run_compare(cfg, [task], factory=_CountingFactory([task]), store=kept, **common)
    assert len(list((tmp_path / "kept").glob("*.dists.npz"))) == 1
    # Records all stored but no distributions kept yet: the opt-in computes and keeps them.
    late = RecordStore(tmp_path / "plain")
    f = _CountingFactory([task])
    run_compare(cfg, [task], factory=f, store=late, **common)
    assert f.opened == ["base"] and len(list((tmp_path / "plain").glob("*.dists.npz"))) == 1
    more = cfg.model_copy(update={"candidates": (fake_variant("c2", noise=0.6),)})
    f = _CountingFactory([task])
    res = run_compare(more, [task], factory=f, store=kept, **common)
    assert f.opened == ["c2"]  # the baseline is not reopened
    recomputed = run_compare(more.model_copy(update={"keep_distributions": False}), [task],
                             factory=_CountingFactory([task]), store=RecordStore(tmp_path / "fresh"), **common)
    assert res.comparisons[0].model_dump() == recomputed.comparisons[0].model_dump()
    # A damaged file is recomputed, never trusted.
    next((tmp_path / "kept").glob("*.dists.npz")).write_bytes(b"not a zip")
    f = _CountingFactory([task])
    again = run_compare(more.model_copy(update={"candidates": (fake_variant("c3", noise=0.7),)}), [task],
                        factory=f, store=kept, **common)
    assert f.opened == ["base", "c3"] and again.comparisons
