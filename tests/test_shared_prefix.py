"""Shared-prefix multiple-choice scoring equals naive per-choice scoring.

The reference here is independent of qeval's scoring code: every (context, continuation) pair run
alone through the model, unpadded, with no cache, and the continuation's log-probs summed. qeval
scores the context once per item and each choice from it (a tree-shaped attention mask on
transformers; the KV-cache state cut back to the context on llama.cpp), in padded batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_task
from qeval.engines.base import LoglikelihoodRequest, shared_prefix_jobs
from qeval.engines.hf import HFBackend
from qeval.model_source import ResolvedModel, fingerprint_dir, resolve_model
from qeval.kinds.choice import build_requests, score_items
from qeval.types import Method, PromptSpec, VariantSpec

from tiny_models import CORPUS, naive_loglikelihood, tiny_checkpoint

TOLERANCE = 1e-4  # fp32, |Δ log-prob| per choice

# ------------------------------------------------------------------ the plan (pure)


def _req(ctx, cont, item="x", choice=0):
    return LoglikelihoodRequest(tuple(ctx), tuple(cont), item, choice)


def test_one_job_per_context_with_each_choice_as_a_branch():
    reqs = [_req([1, 2, 3], [7], "a", 0), _req([1, 2, 3], [8, 9, 10], "a", 1),
            _req([4, 5], [6, 6], "b", 0), _req([1, 2, 3], [11, 12], "a", 2)]
    jobs = shared_prefix_jobs(reqs)
    assert [j.members for j in jobs] == [(0, 1, 3), (2,)]  # longest first
    a = jobs[0]
    assert a.tokens == (1, 2, 3, 8, 9, 11) and len(a) == 6
    assert a.branch_starts() == [3, 3, 5]
    assert a.positions() == [0, 1, 2, 3, 4, 3]  # each branch restarts after the context
    # Choice 1 (" 8 9 10"): 8 from the context's last position, 9 and 10 from its own branch.
    assert a.reads(1, 3) == [2, 3, 4]
    assert a.reads(0, 1) == [2] and a.reads(2, 2) == [2, 5]
    naive = sum(len(r.context) + len(r.continuation) - 1 for r in reqs)
    assert sum(len(j) for j in jobs) == 6 + 3 < naive == 15


def test_the_plan_is_deterministic_and_refuses_empty_parts():
    reqs = [_req([i % 3 + 1] * (i % 4 + 1), [5, 6][: i % 2 + 1], f"s{i}", 0) for i in range(12)]
    assert shared_prefix_jobs(reqs) == shared_prefix_jobs(list(reqs))
    with pytest.raises(ValueError, match="item e: empty context"):
        shared_prefix_jobs([_req([], [1], "e")])
    with pytest.raises(ValueError, match="item e choice 0: empty continuation"):
        shared_prefix_jobs([_req([1], [], "e")])


# ------------------------------------------------------------------ transformers


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    tiny_checkpoint(path, request.param)
    return resolve_model(str(path))


def _naive(model, req: LoglikelihoodRequest) -> float:
    return naive_loglikelihood(model, req.context, req.continuation)


def _mixed_requests(tokenize) -> list[LoglikelihoodRequest]:
    """Items of different context lengths, each with one-token and multi-token choices."""
    reqs = []
    for i, text in enumerate(CORPUS + [CORPUS[0] + " " + CORPUS[2], "Dose?"]):
        ctx = tokenize(text)
        conts = [tokenize(" A")[:1]] + [tokenize(c) for c in (" metformin", " 2 weeks", " eGFR 42, creatinine")]
        for j, cont in enumerate(conts):
            reqs.append(_req(ctx, cont, f"s{i}", j))
    return reqs


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_shared_prefix_equals_naive_scoring_in_fp32(tiny, batch_size):
    backend = HFBackend(tiny, VariantSpec(name="fp32", method=Method.fp32), device="cpu", batch_size=batch_size)
    try:
        reqs = _mixed_requests(backend.tokenize)
        lengths = {len(r.continuation) for r in reqs}
        assert 1 in lengths and len(lengths) >= 3
        got = backend.loglikelihood(reqs)
        want = [_naive(backend.model, r) for r in reqs]
        assert max(abs(g - w) for g, w in zip(got, want)) <= TOLERANCE
    finally:
        backend.close()


@pytest.mark.parametrize("plain_head,bool_mask", [(False, True), (True, False), (False, False)])
def test_every_readout_and_mask_path_equals_naive(tiny, plain_head, bool_mask):
    """The fast path (own vocabulary projection, boolean mask for SDPA) is the default on these
    architectures; the model's own head with `logits_to_keep` and the additive mask (eager
    attention, other architectures) must give the same numbers."""
    backend = HFBackend(tiny, VariantSpec(name="fp32", method=Method.fp32), device="cpu", batch_size=3)
    try:
        assert backend._plain_head and backend._bool_mask
        backend._plain_head, backend._bool_mask = plain_head, bool_mask
        reqs = _mixed_requests(backend.tokenize)
        got = backend.loglikelihood(reqs)
        want = [_naive(backend.model, r) for r in reqs]
        assert max(abs(g - w) for g, w in zip(got, want)) <= TOLERANCE
    finally:
        backend.close()


@pytest.mark.parametrize("continuation", ["letter", "choice_text"])
def test_letter_and_cloze_tasks_score_as_naive(tiny, continuation):
    task = make_task(10, n_choices=4)
    task = task.model_copy(update={"spec": task.spec.model_copy(
        update={"prompt": PromptSpec(continuation=continuation)})})
    backend = HFBackend(tiny, VariantSpec(name="fp32", method=Method.fp32), device="cpu", batch_size=4)
    try:
        items = build_requests(task, backend.tokenize)
        records = score_items(task, items, backend)
        for it, rec in zip(items, records):
            want = [_naive(backend.model, r) for r in it.requests]
            assert np.allclose(rec.choice_logprobs, want, atol=TOLERANCE, rtol=0)
        lengths = {len(r.continuation) for it in items for r in it.requests}
        # (This tiny tokenizer spells " A" with two tokens; the choices' texts are longer.)
        assert max(lengths) <= 2 if continuation == "letter" else max(lengths) > 2
    finally:
        backend.close()


def test_bf16_packed_scoring_stays_close_to_naive_bf16(tiny):
    backend = HFBackend(tiny, VariantSpec(name="bf16", method=Method.bf16), device="cpu", batch_size=4)
    try:
        reqs = _mixed_requests(backend.tokenize)
        got = np.array(backend.loglikelihood(reqs))
        want = np.array([_naive(backend.model, r) for r in reqs])
        assert np.isfinite(got).all()
        # bf16 rounds differently with other matmul shapes; a wrong mask moves whole nats.
        assert np.abs(got - want).max() < 0.1 * max(1.0, np.abs(want).max() / 10)
    finally:
        backend.close()


# ------------------------------------------------------------------ llama.cpp


def test_llama_cpp_state_reuse_equals_full_passes(tmp_path):
    pytest.importorskip("llama_cpp")
    from qeval.engines.llamacpp import LlamaCppBackend
    from qeval.run.config import parse_variant
    from qeval.quantize.gguf import export_gguf

    tiny_checkpoint(tmp_path / "ckpt", "llama")
    export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32", pre="gpt-2")
    resolved = ResolvedModel("tiny", tmp_path / "ckpt", fingerprint_dir(tmp_path / "ckpt"), "tiny")
    backend = LlamaCppBackend(resolved, parse_variant(f"gguf={tmp_path / 'm.gguf'}"), cache=tmp_path / "cache")
    try:
        reqs = _mixed_requests(backend.tokenize)
        got = backend.loglikelihood(reqs)
        want = []
        for r in reqs:  # one full pass per choice, every position's logits
            lp = backend.token_logprobs(list(r.context) + list(r.continuation))
            n = len(r.context)
            want.append(float(sum(lp[n - 1 + k, t] for k, t in enumerate(r.continuation))))
        assert max(abs(g - w) for g, w in zip(got, want)) <= TOLERANCE
    finally:
        backend.close()


def test_llama_cpp_quantized_state_reuse_is_llama_cpps_own_two_step_evaluation(tmp_path):
    """On a quantized GGUF, a choice evaluated after the cached context can differ from one long
    pass (llama.cpp's kernels round differently for another batch split); it must equal llama.cpp
    evaluating the same sequence in those two steps, so the cache holds exactly the context."""
    pytest.importorskip("llama_cpp")
    from qeval.engines.llamacpp import LlamaCppBackend, _log_softmax
    from qeval.run.config import parse_variant

    tiny_checkpoint(tmp_path / "ckpt", "llama")
    resolved = ResolvedModel("tiny", tmp_path / "ckpt", fingerprint_dir(tmp_path / "ckpt"), "tiny")
    backend = LlamaCppBackend(resolved, parse_variant("gguf:q8_0"), cache=tmp_path / "cache")
    try:
        reqs = _mixed_requests(backend.tokenize)
        got = backend.loglikelihood(reqs)
        llm = backend.llm
        # llama-cpp-python's own eval, every position's logits copied into llm.scores (the
        # backend does not ask for that; its n_batch rows hold these short items)
        llm._logits_all = True
        for r, g in zip(reqs, got):
            llm.reset()
            llm.eval(list(r.context))
            llm.eval(list(r.continuation[:-1]))
            n = len(r.context)
            rows = _log_softmax(np.asarray(llm.scores[n - 1: n + len(r.continuation) - 1], dtype=np.float32))
            assert g == pytest.approx(float(rows[np.arange(len(r.continuation)), list(r.continuation)].sum()),
                                      abs=1e-9)
    finally:
        backend.close()
