"""Issue 23 part 6: reference text reduced slice by slice, on both engines, gives the numbers of
the whole (positions × vocabulary) table, and llama.cpp keeps no n_ctx × vocabulary logits copy.
(The speed and memory at Gemma-3's vocabulary: benchmarks/large_vocab.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from qeval.kinds import reference_text as rt
from tiny_models import tiny_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TEXT = ("Metformin 500 mg twice daily; review renal function in 2 weeks. Chest pain radiating to "
        "the left arm, sweating and nausea. Blood pressure 142/88 mmHg.")


def _gemma3(path):
    """A tiny random Gemma-3 text model with the tiny Llama's tokenizer (no soft-capping)."""
    import transformers

    tok, _ = tiny_checkpoint(path, "llama")
    cfg = transformers.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        sliding_window=8, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    transformers.Gemma3ForCausalLM(cfg).save_pretrained(path)


def _reference_dist(lp: np.ndarray, window, k: int) -> rt.BaselineDist:
    """The bounded distribution computed the plain way, in float64 numpy, from a whole table."""
    ids = np.argsort(-lp, axis=1, kind="stable")[:, :k]
    p = np.exp(lp.astype(np.float64))
    np.put_along_axis(p, ids, 0.0, axis=1)
    return rt.BaselineDist(ids.astype(np.int32), np.take_along_axis(lp, ids, axis=1), p.sum(axis=1),
                           lp[np.arange(len(lp)), np.asarray(window[1:])].astype(np.float64))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hf_slices_give_the_whole_tables_numbers(tmp_path, monkeypatch, arch):
    from qeval.engines import hf
    from qeval.run.config import parse_variant
    from qeval.model_source import resolve_model

    if arch == "llama":
        tiny_checkpoint(tmp_path / "m", "llama")
    else:
        _gemma3(tmp_path / "m")
    monkeypatch.setattr(hf, "TEXT_SLICE_BYTES", 16 * 4 * 320)  # 16 rows a slice: several slices
    backend = hf.HFFactory(resolve_model(str(tmp_path / "m")), device="cpu").open(parse_variant("fp32"), None)
    assert backend._plain_head  # Gemma-3 does not cap its logits: the sliced head applies
    window = backend.tokenize(TEXT)
    assert len(window) > 40
    with torch.inference_mode():
        whole = torch.log_softmax(backend.model(input_ids=torch.tensor([window])).logits[0, :-1].float(), -1).numpy()
    slices = list(backend.logit_slices(window))
    assert [s for s, _ in slices] == list(range(0, len(window) - 1, 16))
    want = _reference_dist(whole, window, 32)
    got = rt.baseline_window(backend.logit_slices(window), window, 32)
    np.testing.assert_array_equal(got.top_ids, want.top_ids)
    np.testing.assert_allclose(got.top_logprobs, want.top_logprobs, atol=2e-5)
    np.testing.assert_allclose(got.tail_mass, want.tail_mass, rtol=1e-4)
    np.testing.assert_allclose(got.reference_logprob, want.reference_logprob, atol=2e-5)
    # a candidate read against it: the same model gives KL 0 exactly and the same top tokens
    view = rt.candidate_window(backend.logit_slices(window), window, got)
    assert np.all(rt.view_kl(got, view) == 0.0)
    np.testing.assert_array_equal(view.argmax, whole.argmax(axis=1))
    np.testing.assert_allclose(view.reference_logprob, want.reference_logprob, atol=2e-5)
    backend.close()


def test_llama_cpp_keeps_one_decode_of_logits_not_the_context(tmp_path):
    """No logits_all: llama-cpp-python's (n_ctx × vocabulary) scores table is never allocated
    in full, and every position's logits come a bounded number of rows at a time, equal to what
    llama-cpp-python's own eval with logits_all gives."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from qeval.engines import llamacpp as lc
    from qeval.run.config import parse_variant
    from qeval.quantize.gguf import export_gguf
    from qeval.model_source import resolve_model

    tiny_checkpoint(tmp_path / "m", "llama")
    export_gguf(tmp_path / "m", tmp_path / "m.gguf", dtype="f32", pre="gpt-2")
    backend = lc.LlamaCppBackend(resolve_model(str(tmp_path / "m")), parse_variant(f"gguf={tmp_path / 'm.gguf'}"),
                                 cache=tmp_path / "cache")
    try:
        assert backend.llm.scores.shape[0] < backend.n_ctx and not backend.llm._logits_all
        backend.logit_rows = 16
        window = backend.tokenize(TEXT)
        slices = [(s, x.numpy().copy()) for s, x in backend.logit_slices(window)]
        assert [s for s, _ in slices] == list(range(0, len(window) - 1, 16))
        ours = np.concatenate([x for _, x in slices])
        plain = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=256, n_batch=256, logits_all=True,
                                verbose=False)
        plain.eval(window[:-1])
        np.testing.assert_allclose(ours, plain.scores[: len(window) - 1], atol=1e-4)
        plain.close()
    finally:
        backend.close()
