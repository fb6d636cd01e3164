"""`+kv=int8|int4` on the transformers engine (issue 22, item 2): transformers' QuantizedCache with
the HQQ backend, real (no mocks), on a tiny random Llama whose head size (64) is one HQQ group.

The cache really is quantized: its measured bytes (codes, scales, zeros) shrink against the same
K/V in float32, and log-likelihoods move (int4 more than int8), while the same cache-driven path
through an unquantized cache gives the default path's numbers, and a variant without `+kv=` is
untouched. Bad input is one line (exit 2) before any model time; one end-to-end `qeval compare`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from qeval.cli import app
from qeval.errors import QevalInputError
from qeval.run.config import parse_variant

from tiny_models import CORPUS, tiny_checkpoint

pytest.importorskip("hqq")
runner = CliRunner()

LAYERS, KV_HEADS, HEAD, MAX_POS = 2, 2, 64, 256  # hidden 256, 4 heads of 64, 2 KV heads
ELEMENTS = 2 * LAYERS * KV_HEADS * HEAD  # K and V values per position
# HQQ's codes (int8: a byte each; int4: two per byte) plus a float32 scale and zero per group of 64
EXPECTED_PER_POSITION = {"int8": ELEMENTS + ELEMENTS // 64 * 2 * 4,
                         "int4": ELEMENTS // 2 + ELEMENTS // 64 * 2 * 4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from qeval.model_source import ResolvedModel, fingerprint_dir

    root = tmp_path_factory.mktemp("hfkv-tiny")
    tiny_checkpoint(root / "ckpt", "llama", hidden=256, intermediate=256)
    return root, ResolvedModel("tiny", root / "ckpt", fingerprint_dir(root / "ckpt"), "tiny")


def _requests(backend):
    from qeval.engines.base import LoglikelihoodRequest

    return [LoglikelihoodRequest(tuple(backend.tokenize(" ".join(CORPUS[i:] + CORPUS[:i]))),
                                 tuple(backend.tokenize(a)), f"s{i}", j)
            for i in range(len(CORPUS)) for j, a in enumerate((" metformin", " 2 weeks", " eGFR 42"))]


def _scores(backend):
    """(reference-text log-probs of a 200-token passage, multiple-choice log-likelihoods)."""
    passage = backend.tokenize(" ".join(CORPUS * 4))[:200]
    return backend.token_logprobs(passage), np.array(backend.loglikelihood(_requests(backend)))


@pytest.fixture(scope="module")
def runs(tiny):
    from qeval.engines.hf import HFBackend

    _, resolved = tiny
    out = {}
    for kv in (None, "int8", "int4"):
        backend = HFBackend(resolved, parse_variant("fp32" + (f"+kv={kv}" if kv else "")), device="cpu")
        try:
            out[kv] = (backend.info, *_scores(backend))
        finally:
            backend.close()
    return out


def test_the_cache_is_really_quantized_bytes_shrink(runs):
    full = ELEMENTS * 4  # the same K and V in float32
    sizes = {}
    for kv in ("int8", "int4"):
        info = runs[kv][0]
        sizes[kv] = info.kv_cache_bytes
        assert info.kv_cache_bytes == EXPECTED_PER_POSITION[kv] * MAX_POS, (kv, info.kv_cache_bytes)
        bits = 8 if kv == "int8" else 4
        assert (f"KV cache {kv} (K and V; transformers QuantizedCache, hqq {bits}-bit min-max, group 64, "
                "append-only, chunks of 64)") in info.kernel
        note = next(n for n in info.notes if n.startswith(f"KV cache {kv}"))
        assert f"{EXPECTED_PER_POSITION[kv]:,} bytes per position ({full:,} in float32)" in note
        assert "hqq" in info.versions
        assert "kv_cache_bytes" in info.model_dump(mode="json")
    assert sizes["int4"] < sizes["int8"] < full * MAX_POS
    print("KV bytes (256 positions):", sizes, "float32:", full * MAX_POS)


def test_stored_bytes_are_the_caches_own_tensors(tiny):
    """hf_kv.stored_bytes counts what the cache holds: after a prefill its int4 codes are HQQ's
    packed uint8 (half a byte per value) and no full-precision residual is left."""
    import torch
    from transformers import AutoModelForCausalLM

    from qeval.engines import hf_kv

    root, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(root / "ckpt", dtype=torch.float32).eval()
    cache = hf_kv.new_cache(model.config, "int4")
    with torch.inference_mode():
        for s in range(0, 96, hf_kv.CHUNK):
            model(input_ids=torch.arange(s + 1, min(96, s + hf_kv.CHUNK) + 1)[None], past_key_values=cache,
                  use_cache=True)
    layer = cache.layers[0]
    assert len(layer.chunks) == 2 and layer.cumulative_length == 96  # a 64-token chunk and a 32-token one
    codes = [k for (k, _), _ in layer.chunks]
    assert all(c.dtype == torch.uint8 for c in codes)
    assert [c.numel() for c in codes] == [KV_HEADS * n * HEAD // 2 for n in (64, 32)]
    assert layer.keys.numel() == 0  # nothing kept in full precision
    assert hf_kv.stored_bytes(cache) == EXPECTED_PER_POSITION["int4"] * 96


def test_appending_chunks_gives_the_codes_of_quantizing_the_whole_sequence(tiny):
    """Groups hold one token's values, so quantizing each chunk once when written (the append-only
    layer) reads back exactly what quantizing all positions at once reads back."""
    import torch

    from qeval.engines import hf_kv

    root, _ = tiny
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(root / "ckpt")
    gen = torch.Generator().manual_seed(0)
    for dtype in ("int8", "int4"):
        k = torch.randn(1, KV_HEADS, 100, HEAD, generator=gen) * 3
        v = torch.randn(1, KV_HEADS, 100, HEAD, generator=gen)
        whole, parts = hf_kv.new_cache(config, dtype), hf_kv.new_cache(config, dtype)
        whole.layers[0].update(k, v)
        for s in (0, 64, 96):
            parts.layers[0].update(k[:, :, s:s + {0: 64, 64: 32, 96: 4}[s]], v[:, :, s:s + {0: 64, 64: 32, 96: 4}[s]])
        # the next pass reads every earlier position back from its codes
        probe = torch.zeros(1, KV_HEADS, 1, HEAD)
        read_whole, _ = whole.layers[0].update(probe, probe)
        read_parts, _ = parts.layers[0].update(probe, probe)
        assert torch.equal(read_whole, read_parts), dtype
        assert not torch.equal(read_whole[:, :, :100], k), dtype  # and they are not the full-precision K
        assert float((read_whole[:, :, :100] - k).abs().max()) < (0.1 if dtype == "int8" else 2.0)


def test_a_quantized_cache_changes_scores_int4_more_than_int8(runs):
    _, ref0, mc0 = runs[None]
    diffs = {}
    for kv in ("int8", "int4"):
        _, ref, mc = runs[kv]
        assert ref.shape == ref0.shape and np.isfinite(ref).all() and np.isfinite(mc).all()
        d_ref, d_mc = np.abs(ref - ref0), np.abs(mc - mc0)
        assert d_ref.max() > 1e-5 and d_mc.max() > 1e-5, (kv, d_ref.max(), d_mc.max())
        # the first chunk of a passage attends only to itself: nothing quantized is read yet
        assert d_ref[:63].max() < 1e-5
        diffs[kv] = (float(d_ref.max()), float(d_mc.max()), float(d_ref[63:].mean()), float(d_mc.mean()))
    assert diffs["int4"][2] > diffs["int8"][2] and diffs["int4"][3] > diffs["int8"][3], diffs
    print("max |Δ| ref, max |Δ| mc, mean |Δ| ref after chunk 1, mean |Δ| mc:", diffs)


def test_the_cache_path_through_an_unquantized_cache_equals_the_default(tiny, runs):
    """The chunked, cache-driven path itself changes nothing: fed a full-precision DynamicCache
    it gives the default path's numbers, so the moves above are the quantization's."""
    from transformers import DynamicCache

    from qeval.engines.hf import HFBackend

    _, resolved = tiny
    backend = HFBackend(resolved, parse_variant("fp32+kv=int8"), device="cpu")
    try:
        object.__setattr__(backend.kv, "new_cache", lambda: DynamicCache(config=backend.model.config))
        ref, mc = _scores(backend)
    finally:
        backend.close()
    _, ref0, mc0 = runs[None]
    assert np.abs(ref - ref0).max() < 1e-5 and np.abs(mc - mc0).max() < 1e-5


def test_without_kv_the_engine_is_untouched(runs):
    info = runs[None][0]
    assert info.kv_cache_bytes is None and "KV cache" not in info.kernel and "hqq" not in info.versions
    assert "kv_cache_bytes" not in info.model_dump(mode="json")
    assert not any("KV cache" in n for n in info.notes)
    v = parse_variant("fp32")
    assert parse_variant("fp32+kv=int4").key() == v.key() + "+kv=int4" and "+kv" not in v.key()


# ------------------------------------------------------------------ bad input, before any model


@pytest.mark.parametrize("text,must", [
    ("fp32+kv=q8_0", ("variant 'fp32+kv=q8_0'", "cannot hold a q8_0 KV cache", "takes +kv=int8|int4")),
    ("int8wo+kv=fp8", ("cannot hold a fp8 KV cache", "takes +kv=int8|int4")),
    ("fp16+kv=int3", ("unknown KV-cache dtype 'int3'", "int8|int4")),
    ("gguf:q4_k_m+kv=int8", ("cannot hold a int8 KV cache", "f16|q8_0|q4_0")),
])
def test_bad_combos_are_one_clear_error(text, must):
    with pytest.raises(QevalInputError) as err:
        parse_variant(text)
    for m in must:
        assert m in str(err.value), str(err.value)


def test_a_missing_backend_is_named_before_any_model(monkeypatch):
    from qeval.engines import hf_kv
    from qeval.methods import method

    monkeypatch.setattr(hf_kv, "BACKEND", "hqq_is_not_installed_here")
    v = parse_variant("int8wo+kv=int4")
    with pytest.raises(QevalInputError, match=r"needs hqq .* pip install -e '\.\[kv\]'"):
        method(v.method).check_ready(v)
    method("int8wo").check_ready(parse_variant("int8wo"))  # without +kv= nothing is asked


def test_cli_bad_kv_is_one_line_exit_2(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", "--out", str(out), "--model", str(tmp_path / "nothing"),
                              "--base", "fp32", "--candidates", "fp32+kv=q4_0", "--no-efficiency"])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("qeval: error:") and "int8|int4" in lines[0], res.stderr
    assert not out.exists()


def test_a_sliding_window_model_is_refused_before_scoring(tmp_path):
    """transformers' quantized cache takes only full-attention layers (not Gemma-3's sliding
    window): one line at preflight, before the baseline is scored."""
    tiny_checkpoint(tmp_path / "g3", "gemma3")
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", "--out", str(out), "--model", str(tmp_path / "g3"), "--base", "fp32",
                              "--candidates", "fp32+kv=int8", "--tasks", "clinical_core", "--limit", "2",
                              "--no-efficiency"])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.stderr.strip().splitlines() if x.strip() and x.startswith("qeval: error:")]
    assert len(lines) == 1 and "quantized KV cache cannot hold" in lines[0] and "sliding" in lines[0], res.stderr
    assert not (out / "results.json").exists()


# ------------------------------------------------------------------ end to end


def test_compare_with_an_hf_kv_candidate_end_to_end(tiny, tmp_path):
    root, _ = tiny
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", "--out", str(out), "--model", str(root / "ckpt"), "--base", "fp32",
                              "--candidates", "fp32+kv=int4", "--tasks", "clinical_core", "--limit", "4",
                              "--n-boot", "200"])
    assert res.exit_code in (0, 1, 3), res.output
    doc = json.loads((out / "results.json").read_text())
    cand = doc["candidates"][0]
    assert cand["variant"] == "fp32+kv=int4"
    assert "KV cache int4 (K and V; transformers QuantizedCache, hqq 4-bit min-max" in cand["kernel"]
    assert cand["kv_cache_bytes"] == EXPECTED_PER_POSITION["int4"] * MAX_POS
    assert doc["config"]["candidates"][0]["kv_cache"] == "int4"
    assert "kv_cache" not in doc["config"]["baseline"] and "kv_cache_bytes" not in doc["baseline"]
    eff = json.loads((out / "efficiency.json").read_text())
    row = next(r for r in eff["variants"] if r["variant"] == cand["variant"])
    assert row["kv_cache_bytes"] == cand["kv_cache_bytes"]
    assert "KV cache MiB" in (out / "report.md").read_text()


def test_planner_predicts_the_measured_cache_in_a_16_bit_model(tiny):
    """In bfloat16 HQQ keeps its scales and zeros in bfloat16: the bytes the engine measures per
    position are the planner's int8/int4 (1 + 4/64 and 0.5 + 4/64 bytes per value)."""
    from qeval.engines.hf import HFBackend
    from qeval.vram import kv_bytes_per_token, load_shape

    root, resolved = tiny
    shape = load_shape(str(root / "ckpt"))
    for kv in ("int8", "int4"):
        backend = HFBackend(resolved, parse_variant(f"bf16+kv={kv}"), device="cpu", strict_dtype=True)
        try:
            assert backend.info.compute_dtype == "bfloat16"
            assert backend.info.kv_cache_bytes == kv_bytes_per_token(shape, kv) * MAX_POS, kv
        finally:
            backend.close()


def test_int4_packs_at_odd_lengths_with_an_odd_number_of_kv_heads(tmp_path):
    """HQQ packs two 4-bit rows per byte row: with 3 KV heads × one group each, an odd length
    would leave an odd row count, so the group is halved (int8 keeps 64)."""
    import torch
    from transformers import AutoModelForCausalLM

    from qeval.engines import hf_kv

    tiny_checkpoint(tmp_path / "c", "llama", hidden=384, intermediate=128, num_attention_heads=6,
                    num_key_value_heads=3)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "c", dtype=torch.float32).eval()
    assert (hf_kv.group_size(model.config, "int4"), hf_kv.group_size(model.config, "int8")) == (32, 64)
    cache = hf_kv.new_cache(model.config, "int4")
    with torch.inference_mode():
        for ids in (torch.arange(1, 8), torch.arange(8, 13)):  # 7 positions, then 12
            model(input_ids=ids[None], past_key_values=cache, use_cache=True)
    assert cache.layers[0].cumulative_length == 12
