"""KV-cache candidates (issue 22, item 2): `+kv=DTYPE` on a weight variant.

Parsing and identity (no model), then real llama.cpp on a tiny GGUF whose head size (32) is one
q8_0/q4_0 block: the cache really is quantized (its allocated bytes shrink, as llama.cpp's own log
says, and log-likelihoods move) while `+kv=f16` equals the default cache, then one end-to-end
`qeval compare` and the one-line errors of bad `+kv=` input.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from qeval.cli import app
from qeval.errors import QevalInputError
from qeval.run.config import parse_variant

from tiny_models import CORPUS, tiny_checkpoint

runner = CliRunner()


# ------------------------------------------------------------------ parsing and identity


@pytest.mark.parametrize("text,weights,kv,name", [
    ("gguf:q4_k_m+kv=q8_0", {"type": "q4_k_m"}, "q8_0", "gguf:q4_k_m+kv=q8_0"),
    ("gguf:q8_0+kv=q4_0", {"type": "q8_0"}, "q4_0", "gguf:q8_0+kv=q4_0"),
    ("gguf:q8_0+kv=f16", {"type": "q8_0"}, "f16", "gguf:q8_0+kv=f16"),
    # the suffix written before other parameters: named with it at the end, lower case
    ("gguf:q4_k_m+kv=q8_0,threads=2", {"type": "q4_k_m", "threads": 2}, "q8_0", "gguf:q4_k_m,threads=2+kv=q8_0"),
    ("gguf:q4_k_m,threads=2+kv=Q8_0", {"type": "q4_k_m", "threads": 2}, "q8_0", "gguf:q4_k_m,threads=2+kv=q8_0"),
])
def test_kv_suffix_parses_into_its_own_field(text, weights, kv, name):
    v = parse_variant(text)
    assert (v.method, v.params, v.kv_cache, v.name) == ("gguf", weights, kv, name)
    from qeval.variants.spec import split_kv

    plain = parse_variant(split_kv(text)[0])
    assert plain.kv_cache is None and plain.params == v.params
    # the cache dtype joins the record-store key only when set
    assert v.key() == plain.key() + f"+kv={kv}"

def test_kv_candidates_in_one_list():
    from qeval.variants.spec import split_variants

    assert split_variants("gguf:q4_k_m+kv=q8_0,gguf:q4_k_m,threads=2+kv=q4_0,int8+kv=q8_0,vllm:fp8+kv=fp8") == [
        "gguf:q4_k_m+kv=q8_0", "gguf:q4_k_m,threads=2+kv=q4_0", "int8+kv=q8_0", "vllm:fp8+kv=fp8"]


def test_a_brought_gguf_keeps_its_short_name(tmp_path):
    f = tmp_path / "mine.gguf"
    f.write_bytes(b"GGUF")
    v = parse_variant(f"gguf={f}+kv=q4_0")
    assert (v.name, v.params["file"], v.kv_cache) == ("gguf=mine.gguf+kv=q4_0", str(f), "q4_0")
    assert parse_variant(f"gguf={f},name=m4+kv=q8_0").name == "m4+kv=q8_0"


def test_without_kv_the_variant_dumps_and_keys_as_before():
    v = parse_variant("gguf:q4_k_m")
    assert v.key() == "llamacpp:gguf:type=q4_k_m"
    assert "kv_cache" not in v.model_dump() and "kv_cache" not in v.model_dump_json()
    assert "kv_cache" not in json.loads(v.model_dump_json())
    q = parse_variant("gguf:q4_k_m+kv=q8_0")
    assert q.key() == "llamacpp:gguf:type=q4_k_m+kv=q8_0"
    assert q.model_dump()["kv_cache"] == "q8_0"
    assert parse_variant("gguf:q4_k_m+kv=f16").key() != v.key()  # f16 named is its own run
    # a RunConfig round trip keeps it (configs are dumped and validated again)
    from qeval.run.config import RunConfig

    cfg = RunConfig(baseline=parse_variant("fp32"), candidates=(q, v), tasks=("t",))
    again = RunConfig.model_validate(cfg.model_dump())
    assert [c.kv_cache for c in again.candidates] == ["q8_0", None]
    assert "kv_cache" not in json.dumps(cfg.model_dump(mode="json")["candidates"][1])


@pytest.mark.parametrize("text,must", [
    ("gguf:q4_k_m+kv=q9", ("variant 'gguf:q4_k_m+kv=q9'", "unknown KV-cache dtype 'q9'", "f16|q8_0|q4_0")),
    ("gguf:q4_k_m+kv=", ("+kv= needs a KV-cache dtype",)),
    ("gguf:q4_k_m+kv=q8_0+kv=q4_0", ("+kv= given 2 times",)),
    ("int8+kv=q8_0", ("variant 'int8+kv=q8_0'", "cannot hold a q8_0 KV cache", "takes +kv=int8|int4")),
    ("vllm:bf16+kv=int8", ("cannot hold a int8 KV cache", "takes +kv=fp8")),
    ("gguf:q8_0+kv=q4_0,flash_attn=false", ("needs flash attention for a quantized V cache",)),
])
def test_bad_kv_suffix_is_one_clear_error(text, must):
    with pytest.raises(QevalInputError) as err:
        parse_variant(text)
    for m in must:
        assert m in str(err.value), str(err.value)


def test_cli_bad_kv_is_one_line_exit_2_before_any_model(tmp_path):
    out = tmp_path / "run"
    # The model path does not exist: the variant error comes first, before any model is looked at.
    res = runner.invoke(app, ["compare", "--out", str(out), "--model", str(tmp_path / "nothing"),
                              "--base", "fp32", "--candidates", "gguf:q4_k_m+kv=q5_1", "--no-efficiency"])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("qeval: error:"), res.stderr
    assert "gguf:q4_k_m+kv=q5_1" in lines[0] and "q8_0" in lines[0] and "q4_0" in lines[0], lines[0]
    assert not out.exists()


# ------------------------------------------------------------------ real llama.cpp on a tiny GGUF


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama whose head size is 32 (one q8_0/q4_0 block), its f32 GGUF."""
    pytest.importorskip("llama_cpp")
    from qeval.model_source import ResolvedModel, fingerprint_dir
    from qeval.quantize.gguf import export_gguf

    root = tmp_path_factory.mktemp("kv-tiny")
    tiny_checkpoint(root / "ckpt", "llama", hidden=128, intermediate=256)  # 4 heads × 32, 2 KV heads
    export_gguf(root / "ckpt", root / "m.gguf", dtype="f32", pre="gpt-2")
    return root, ResolvedModel("tiny", root / "ckpt", fingerprint_dir(root / "ckpt"), "tiny")


N_CTX = 256
LAYERS, KV_HEADS, HEAD = 2, 2, 32
# ggml's block sizes: f16 2 bytes per element; q8_0 34 bytes per 32; q4_0 18 bytes per 32.
EXPECTED_PER_CELL = {"f16": 2 * LAYERS * KV_HEADS * HEAD * 2,
                     "q8_0": 2 * LAYERS * KV_HEADS * HEAD // 32 * 34,
                     "q4_0": 2 * LAYERS * KV_HEADS * HEAD // 32 * 18}


def _scores(tiny, kv: str | None, extra: str = ""):
    """(backend info, reference-text log-probs of a passage, multiple-choice log-likelihoods)."""
    from qeval.engines.base import LoglikelihoodRequest
    from qeval.engines.llamacpp import LlamaCppBackend

    root, resolved = tiny
    text = f"gguf={root / 'm.gguf'},n_ctx={N_CTX}{extra}" + (f"+kv={kv}" if kv else "")
    backend = LlamaCppBackend(resolved, parse_variant(text), cache=root / "cache")
    try:
        passage = backend.tokenize(" ".join(CORPUS))
        ref = backend.token_logprobs(passage)
        reqs = [LoglikelihoodRequest(tuple(backend.tokenize(c)), tuple(backend.tokenize(a)), f"s{i}", j)
                for i, c in enumerate(CORPUS) for j, a in enumerate((" metformin", " 2 weeks", " eGFR 42"))]
        mc = np.array(backend.loglikelihood(reqs))
        return backend.info, ref, mc
    finally:
        backend.close()


@pytest.fixture(scope="module")
def runs(tiny):
    return {kv: _scores(tiny, kv) for kv in (None, "f16", "q8_0", "q4_0")}


def test_the_cache_is_really_quantized_bytes_shrink(runs):
    sizes = {kv: runs[kv][0].kv_cache_bytes for kv in ("f16", "q8_0", "q4_0")}
    assert runs[None][0].kv_cache_bytes is None  # no suffix: nothing new in the record
    for kv, size in sizes.items():
        assert size == EXPECTED_PER_CELL[kv] * N_CTX, (kv, size)
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    print("KV bytes (n_ctx 256):", sizes)
    for kv in ("q8_0", "q4_0"):
        info = runs[kv][0]
        assert f"KV cache {kv} (K and V), flash attention" in info.kernel
        assert any(f"{info.kv_cache_bytes:,} bytes allocated" in n for n in info.notes)
        assert "kv_cache_bytes" in info.model_dump(mode="json")
    assert "kv_cache_bytes" not in runs[None][0].model_dump(mode="json")


def test_allocated_bytes_match_llama_cpps_own_log(tiny):
    """llama.cpp prints its KV buffer as `llama_kv_cache: size = X MiB (...), K (q8_0): ...`."""
    import llama_cpp

    root, _ = tiny
    code = ("import llama_cpp, sys; llama_cpp.Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), "
            "type_k=int(sys.argv[3]), type_v=int(sys.argv[3]), flash_attn=True, verbose=True)")
    for kv, const in (("f16", "GGML_TYPE_F16"), ("q8_0", "GGML_TYPE_Q8_0"), ("q4_0", "GGML_TYPE_Q4_0")):
        n_ctx = 4096  # large enough that the log's two decimals of MiB pin the size
        proc = subprocess.run([sys.executable, "-c", code, str(root / "m.gguf"), str(n_ctx),
                               str(getattr(llama_cpp, const))], capture_output=True, text=True, timeout=300)
        m = re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells.*K \((\w+)\).*V \((\w+)\)", proc.stderr)
        assert m, proc.stderr[-2000:]
        mib, cells, k_type, v_type = float(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        assert (cells, k_type, v_type) == (n_ctx, kv, kv)
        assert abs(EXPECTED_PER_CELL[kv] * cells / 2**20 - mib) <= 0.005, (kv, mib)


def test_a_quantized_cache_changes_scores_and_f16_equals_the_default(runs, tiny):
    _, ref_default, mc_default = runs[None]
    _, ref_f16, mc_f16 = runs["f16"]
    assert np.array_equal(ref_default, ref_f16) and np.array_equal(mc_default, mc_f16)
    # Against the f16 cache under the same (flash) attention, so the change is the cache's.
    _, ref_fa, mc_fa = _scores(tiny, "f16", ",flash_attn=true")
    diffs = {}
    for kv in ("q8_0", "q4_0"):
        _, ref, mc = runs[kv]
        assert np.isfinite(ref).all() and np.isfinite(mc).all()
        d_ref, d_mc = np.abs(ref - ref_fa).max(), np.abs(mc - mc_fa).max()
        assert d_ref > 1e-4 and d_mc > 1e-4, (kv, d_ref, d_mc)
        diffs[kv] = (float(d_ref), float(d_mc))
    # coarser cache, larger damage (on the reference text's every position)
    assert np.abs(runs["q4_0"][1] - ref_fa).mean() > np.abs(runs["q8_0"][1] - ref_fa).mean()
    print("max |Δ log-prob| vs f16 cache (reference text, multiple choice):", diffs)


# ------------------------------------------------------------------ end to end


def test_compare_with_a_kv_candidate_end_to_end(tiny, tmp_path):
    root, _ = tiny
    out, n_ctx = tmp_path / "run", 1024
    res = runner.invoke(app, ["compare", "--out", str(out), "--model", str(root / "ckpt"), "--base", "fp32",
                              "--candidates", f"gguf:q8_0,n_ctx={n_ctx}+kv=q4_0", "--tasks", "clinical_core",
                              "--limit", "4", "--n-boot", "200"])
    assert res.exit_code == 3, res.output  # INCONCLUSIVE: 4 items are far too few for a verdict
    doc = json.loads((out / "results.json").read_text())
    cand = doc["candidates"][0]
    assert cand["variant"] == f"gguf:q8_0,n_ctx={n_ctx}+kv=q4_0"
    assert "KV cache q4_0 (K and V), flash attention" in cand["kernel"]
    assert cand["kv_cache_bytes"] == EXPECTED_PER_CELL["q4_0"] * n_ctx
    assert doc["config"]["candidates"][0]["kv_cache"] == "q4_0"
    assert "kv_cache" not in doc["config"]["baseline"] and "kv_cache_bytes" not in doc["baseline"]
    eff = json.loads((out / "efficiency.json").read_text())
    row = next(r for r in eff["variants"] if r["variant"] == cand["variant"])
    assert row["kv_cache_bytes"] == cand["kv_cache_bytes"]
    report = (out / "report.md").read_text()
    assert "KV cache MiB" in report


# ------------------------------------------------------------------ the planner


def test_planner_kv_line_follows_the_variants_cache_dtype():
    from qeval.vram import PRESETS, plan

    shape = PRESETS["llama-2-70b"]  # 80 layers × 8 KV heads × 128
    elements = 2 * 80 * 8 * 128  # K and V elements per token
    default = plan(shape, fmt="gguf:q4_k_m", context=4096, sequences=16)
    want = {"f16": elements * 2, "q8_0": elements * 34 // 32, "q4_0": elements * 18 // 32, "fp8": elements,
            "int8": elements * 68 // 64, "int4": elements * 36 // 64}
    for kv, per_token in want.items():
        p = plan(shape, fmt=f"gguf:q4_k_m+kv={kv}", context=4096, sequences=16)
        lines = {line.item: line for line in p.lines}
        assert (p.kv_dtype, p.kv_bytes_per_token, p.format) == (kv, per_token, "gguf:q4_k_m")
        assert lines["KV cache"].bytes == per_token * 4096 * 16 and f"({kv}" in lines["KV cache"].how
        assert lines["weights"].bytes == default.lines[0].bytes  # the cache changes only its own line
    assert default.kv_dtype == "fp16" and default.kv_bytes_per_token == want["f16"]
    assert plan(shape, fmt="gguf:q4_k_m+kv=q8_0", kv_dtype="q8_0").kv_dtype == "q8_0"
    with pytest.raises(QevalInputError, match="disagree"):
        plan(shape, fmt="gguf:q4_k_m+kv=q8_0", kv_dtype="fp8")


def test_plan_cli_reads_the_kv_suffix():
    res = runner.invoke(app, ["plan", "--model", "llama-2-70b", "--format", "gguf:q4_k_m+kv=q4_0",
                              "--context", "4096", "--sequences", "16"])
    assert res.exit_code == 0, res.output
    assert "KV q4_0" in res.output and "18 B per block of 32" in res.output
    res = runner.invoke(app, ["plan", "--model", "llama-2-70b", "--format", "gguf:q4_k_m+kv=q3"])
    assert res.exit_code == 2 and "--kv-dtype 'q3'" in res.output


# ------------------------------------------------------------------ vLLM (parameter plumbing only)


def test_vllm_kv_fp8_reaches_the_engine_settings():
    from qeval.methods import method

    v = parse_variant("vllm:fp8+kv=fp8")
    assert v.kv_cache == "fp8" and v.key().endswith("+kv=fp8")
    m = method("vllm")
    assert m.engine_settings(v, "cuda", "bfloat16")["kv_cache_dtype"] == "fp8"
    assert "kv_cache_dtype" not in m.engine_settings(parse_variant("vllm:fp8"), "cuda", "bfloat16")
    # the engine floor (what vLLM changes apart from the quantization) keeps the model's own cache
    assert m.floor_variant(v) == "vllm:bf16"
    with pytest.raises(QevalInputError, match="both set the KV cache"):
        parse_variant("vllm:fp8,kv_cache_dtype=fp8+kv=fp8")
    with pytest.raises(QevalInputError, match=r"\+kv=fp8\|fp8_e4m3\|fp8_e5m2"):
        parse_variant("vllm:bf16+kv=q8_0")


def test_the_baseline_takes_no_kv_suffix(tmp_path):
    res = runner.invoke(app, ["compare", "--out", str(tmp_path / "run"), "--base", "vllm:bf16+kv=fp8",
                              "--candidates", "vllm:fp8", "--no-efficiency"])
    assert res.exit_code == 2 and "put +kv= on a candidate" in res.stderr, res.output


def test_planner_predicts_the_measured_cache_of_the_tiny_model(tiny, runs):
    """The planner's KV line for the tiny checkpoint at the run's context equals what llama.cpp
    allocated, for each cache dtype (f16 is the planner's fp16)."""
    from qeval.vram import load_shape, plan

    root, _ = tiny
    shape = load_shape(str(root / "ckpt"))
    for kv in ("f16", "q8_0", "q4_0"):
        p = plan(shape, fmt=f"gguf:q8_0+kv={kv}", context=N_CTX, sequences=1)
        assert p.lines[1].item == "KV cache" and p.lines[1].bytes == runs[kv][0].kv_cache_bytes, kv
