"""Permutation-robust scoring: every item under each cyclic rotation of its options.

Pure parts (how rotated scores are put back in the item's own order and averaged, the rotation
statistics) are checked on hand-made numbers; the engines (transformers, llama.cpp) are checked
against scoring each rotated item as an ordinary, unrotated item.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fake_config, fake_variant, make_task
from qeval.engines.base import LoglikelihoodRequest
from qeval.pairing import compare_task, rotation_stats
from qeval.kinds.choice import ItemRequests, build_requests, item_record, rotated, score_items
from qeval.errors import QevalInputError
from qeval.kinds import check_spec
from qeval.types import ItemRecord, PromptSpec, Risk, Sample, Task, TaskSpec

LETTERS = PromptSpec(template="{question}\n{choices}\nAnswer:", continuation="letter")


def _rotated_task(n: int = 6, n_choices: int = 4, rotations: str = "cyclic") -> Task:
    task = make_task(n, n_choices=n_choices)
    return task.model_copy(update={"spec": task.spec.model_copy(
        update={"prompt": LETTERS, "rotations": rotations})})


def _bytes(text: str) -> list[int]:
    return list(text.encode())


# ------------------------------------------------------------------ building the prompts (pure)


def test_each_rotation_lists_the_options_shifted_and_keeps_the_key():
    s = Sample(id="x", question="Q?", choices=("p", "q", "r", "s"), target=2)
    assert rotated(s, 1).choices == ("q", "r", "s", "p") and rotated(s, 1).target == 1
    assert rotated(s, 3).choices == ("s", "p", "q", "r") and rotated(s, 3).target == 3
    assert rotated(s, 0) is s


def test_rotated_requests_name_each_options_own_index_and_differ_per_rotation():
    task = _rotated_task(2, 4)
    items = build_requests(task, _bytes)
    for it in items:
        assert it.rotations == (0, 1, 2, 3) and len(it.requests) == 16
        contexts = {r.context for r in it.requests}
        assert len(contexts) == 4  # one prompt per rotation
        for b, r in enumerate(it.rotations):
            block = it.requests[4 * b:4 * b + 4]
            assert [q.choice for q in block] == [(j + r) % 4 for j in range(4)]
            shown = bytes(block[0].context).decode()
            # the option listed first in rotation r is option r of the item
            assert f"A. {it.sample.choices[r]}" in shown


def test_unrotated_tasks_keep_their_prompt_hash():
    plain = build_requests(_rotated_task(3, rotations="none"), _bytes)
    again = build_requests(make_task(3).model_copy(update={"spec": make_task(3).spec.model_copy(
        update={"prompt": LETTERS})}), _bytes)
    assert [i.prompt_hash for i in plain] == [i.prompt_hash for i in again]
    rot = build_requests(_rotated_task(3), _bytes)
    assert all(a.prompt_hash != b.prompt_hash for a, b in zip(plain, rot))
    assert all(len(i.requests) == 4 and i.rotations == (0,) for i in plain)


def test_rotations_need_a_multiple_choice_template_that_lists_the_options():
    with pytest.raises(ValueError, match="lists the options"):
        TaskSpec(id="t", source={"path": "."}, prompt=PromptSpec(template="Q: {question}\nA:",
                                                                   continuation="choice_text"),
                 rotations="cyclic")
    with pytest.raises(QevalInputError, match="applies to multiple_choice tasks, not generate"):
        check_spec(TaskSpec(id="t", kind="generate", source={"path": "."}, rotations="cyclic"))


# ------------------------------------------------------------------ records from log-probs (pure)


def _item(sample: Sample, rotations: tuple[int, ...]) -> ItemRequests:
    k = len(sample.choices)
    reqs = tuple(LoglikelihoodRequest((1,), (2,), sample.id, (j + r) % k) for r in rotations for j in range(k))
    n = len(reqs)
    return ItemRequests(sample, reqs, (1,) * n, (1,) * n, "h", rotations)


def test_a_position_biased_scorer_is_inconsistent_and_averaged_out():
    """A scorer that always prefers position A (by 3 nats) over a weak preference for the key:
    unrotated it always answers A; rotated, every option gets position A once, so the mean
    log-softmax ranks the key first and the record shows four different picks."""
    task = _rotated_task(1, 4)
    s = Sample(id="x", question="Q", choices=("a", "b", "c", "d"), target=2)
    content = np.array([0.0, 0.0, 0.5, 0.0])  # per option, in the item's own order
    lps = []
    for r in range(4):
        shown = [content[(j + r) % 4] + (3.0 if j == 0 else 0.0) for j in range(4)]
        lps += shown
    rec = item_record(task, _item(s, (0, 1, 2, 3)), lps, "v")
    assert rec.rotation_predictions == (0, 1, 2, 3)  # position A each time: four different options
    assert rec.prediction == 2 and rec.correct
    stats = rotation_stats([rec])
    assert stats.consistency.estimate == 0.0
    assert stats.position_shares == (1.0, 0.0, 0.0, 0.0)
    assert stats.mean_rotation_accuracy == 0.25 and stats.all_rotations_accuracy == 0.0
    # Without the bias every rotation picks the key: consistent, and no position stands out.
    clean = item_record(task, _item(s, (0, 1, 2, 3)),
                        [content[(j + r) % 4] for r in range(4) for j in range(4)], "v")
    st = rotation_stats([clean])
    assert clean.rotation_predictions == (2, 2, 2, 2) and st.consistency.estimate == 1.0
    assert st.position_shares == (0.25, 0.25, 0.25, 0.25) and st.all_rotations_accuracy == 1.0


def test_unrotated_record_is_the_plain_score():
    task = _rotated_task(1, 4, rotations="none")
    s = Sample(id="x", question="Q", choices=("a", "b", "c", "d"), target=1)
    rec = item_record(task, _item(s, (0,)), [-3.0, -1.0, -2.0, -4.0], "v")
    assert rec.choice_logprobs == (-3.0, -1.0, -2.0, -4.0) == rec.choice_scores
    assert rec.prediction == 1 and rec.rotation_predictions is None


def _rec(sid: str, picks: tuple[int, ...], target: int = 0, variant: str = "v") -> ItemRecord:
    k = len(picks)
    scores = tuple(float(picks.count(j)) for j in range(k))
    pred = max(range(k), key=lambda j: (scores[j], -j))
    return ItemRecord(task="t", sample_id=sid, variant=variant, prompt_hash="h", choice_logprobs=scores,
                      choice_scores=scores, prediction=pred, target=target, correct=pred == target,
                      category="all", risk=Risk.standard, rotation_predictions=picks)


def test_paired_rotation_comparison_sees_a_candidate_turn_position_biased():
    base = [_rec(f"s{i}", (0, 0, 0, 0)) for i in range(40)]  # always option 0, wherever it is shown
    cand = [_rec(f"s{i}", (0, 1, 2, 3) if i < 20 else (0, 0, 0, 0), variant="c") for i in range(40)]
    cmp = compare_task(base, cand, n_boot=200)
    rot = cmp.rotation
    assert rot is not None
    assert rot.baseline.consistency.estimate == 1.0 and rot.candidate.consistency.estimate == 0.5
    assert rot.consistency_delta.estimate == -0.5 and rot.consistency_delta.high < 0
    assert rot.candidate.position_shares[0] > 0.6  # piles up on position A
    assert rot.mean_rotation_accuracy_delta.estimate == pytest.approx(-0.375)
    # Records without rotations carry no rotation comparison.
    plain = [r.model_copy(update={"rotation_predictions": None}) for r in base]
    assert compare_task(plain, plain, n_boot=50).rotation is None


# ------------------------------------------------------------------ the pipeline (fake backend)


def test_rotated_compare_on_a_position_blind_scorer_matches_the_unrotated_one():
    """The fake backend scores options by their identity, not their position: rotating changes no
    prediction and no choice distribution, and every item is consistent."""
    from qeval.engines.fake import FakeFactory
    from qeval.report.terminal import QuietUI
    from qeval.gate import GatePolicy
    from qeval.run.pipeline import run_compare

    base, cand = fake_variant("base", skill=0.7), fake_variant("cand", skill=0.7, damage=0.1)
    out = {}
    for mode in ("none", "cyclic"):
        task = _rotated_task(60, 4, rotations=mode)
        res = run_compare(fake_config(base, cand, tasks=(task.spec.id,), n_boot=200), [task],
                          factory=FakeFactory([task]), store=None, model_fingerprint="f",
                          policy=GatePolicy(), ui=QuietUI())
        out[mode] = res.comparisons[0]
    plain, rot = out["none"], out["cyclic"]
    assert plain.rotation is None and rot.rotation is not None
    assert rot.items.candidate_correct == plain.items.candidate_correct
    assert rot.items.baseline_correct == plain.items.baseline_correct
    assert np.allclose(rot.items.choice_kl, plain.items.choice_kl, atol=1e-9)
    assert rot.rotation.baseline.consistency.estimate == 1.0
    assert rot.rotation.baseline.rotations == 240


# ------------------------------------------------------------------ real engines


def _check_against_unrotated(task: Task, backend) -> None:
    """Each rotation of each item, scored as an ordinary item, gives the rotated record's picks
    and (averaged) scores."""
    items = build_requests(task, backend.tokenize)
    records = score_items(task, items, backend)
    plain_spec = task.spec.model_copy(update={"rotations": "none"})
    for it, rec in zip(items, records):
        k = len(it.sample.choices)
        per_rotation = []
        for r in range(k):
            shown = rotated(it.sample, r).model_copy(update={"id": f"{it.sample.id}@{r}"})
            one = Task(spec=plain_spec, samples=(shown,), content_hash="x", path="<memory>")
            (single,) = score_items(one, build_requests(one, backend.tokenize), backend)
            # back to the item's own order: option j was shown at position (j − r) mod k
            own = np.array([single.choice_scores[(j - r) % k] for j in range(k)])
            per_rotation.append(own)
            assert rec.rotation_predictions[r] == int(np.argmax(own))
        logsm = [x - np.log(np.exp(x - x.max()).sum()) - x.max() for x in per_rotation]
        assert np.allclose(rec.choice_scores, np.mean(logsm, axis=0), atol=1e-4)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from qeval.model_source import resolve_model
    from tiny_models import tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny-rot")
    tiny_checkpoint(path / "ckpt", "llama")
    return path, resolve_model(str(path / "ckpt"))


def test_transformers_scores_every_rotation_as_its_own_prompt(tiny_llama):
    from qeval.engines.hf import HFBackend
    from qeval.types import Method, VariantSpec

    _, resolved = tiny_llama
    backend = HFBackend(resolved, VariantSpec(name="fp32", method=Method.fp32), device="cpu", batch_size=4)
    try:
        _check_against_unrotated(_rotated_task(5, 4), backend)
        _check_against_unrotated(_rotated_task(3, 5), backend)
    finally:
        backend.close()


def test_llama_cpp_scores_every_rotation_as_its_own_prompt(tiny_llama):
    pytest.importorskip("llama_cpp")
    from qeval.engines.llamacpp import LlamaCppBackend
    from qeval.run.config import parse_variant
    from qeval.quantize.gguf import export_gguf

    path, resolved = tiny_llama
    export_gguf(path / "ckpt", path / "m.gguf", dtype="f32", pre="gpt-2")
    backend = LlamaCppBackend(resolved, parse_variant(f"gguf={path / 'm.gguf'}"), cache=path / "cache")
    try:
        _check_against_unrotated(_rotated_task(4, 4), backend)
    finally:
        backend.close()


def test_an_items_prompts_share_their_beginning_in_one_job():
    """across_prompts: an item's contexts become one job — their common beginning once, each
    prompt's rest a branch (its lead) — and a member's first token is read at its lead's end."""
    from qeval.engines.base import shared_prefix_jobs

    reqs = [LoglikelihoodRequest((1, 2, 3, 4), (9,), "x", 0), LoglikelihoodRequest((1, 2, 3, 4), (8,), "x", 1),
            LoglikelihoodRequest((1, 2, 5), (9,), "x", 1), LoglikelihoodRequest((1, 2, 5), (7, 6), "x", 0),
            LoglikelihoodRequest((1, 2, 3, 7), (9,), "y", 0)]
    separate = shared_prefix_jobs(reqs)
    assert len(separate) == 3 and all(not j.leads for j in separate)
    jobs = shared_prefix_jobs(reqs, across_prompts=True)
    assert len(jobs) == 2
    x = next(j for j in jobs if 0 in j.members)
    assert x.context == (1, 2) and x.members == (0, 1, 2, 3)
    assert x.branches == ((3, 4), (5,), (5, 7)) and x.leads == (2, 1, 1)
    assert x.member_branch == (0, 0, 1, 2)
    assert x.tokens == (1, 2, 3, 4, 5, 5, 7) and x.positions() == [0, 1, 2, 3, 2, 2, 3]
    assert x.reads(0, 1) == [3] and x.reads(1, 1) == [3]  # the end of (3, 4)
    assert x.reads(2, 1) == [4]  # the end of (5,)
    assert x.reads(3, 2) == [5, 6]  # (5, 7): read at 5, then at 7 for the second token
    y = next(j for j in jobs if 4 in j.members)
    assert y.context == (1, 2, 3, 7) and not y.leads  # one prompt: the plain job


def test_a_context_that_is_the_shared_beginning_keeps_one_token_of_lead():
    """When one prompt is a prefix of another, the shared part stops a token short, so every
    branch has a lead whose last position gives the first continuation token."""
    from qeval.engines.base import shared_prefix_jobs

    reqs = [LoglikelihoodRequest((1, 2), (9,), "x", 0), LoglikelihoodRequest((1, 2, 3), (9,), "x", 1)]
    (job,) = shared_prefix_jobs(reqs, across_prompts=True)
    assert job.context == (1,) and job.branches == ((2,), (2, 3)) and job.leads == (1, 2)
    assert job.reads(0, 1) == [1] and job.reads(1, 1) == [3]
