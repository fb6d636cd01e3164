"""GGUF export and llama.cpp scoring on tiny random models built here (no download): the exported
file must compute what transformers computes, for each supported architecture; quantized
artefacts are cached by content."""

from __future__ import annotations

import json

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from qeval.engines.base import LoglikelihoodRequest  # noqa: E402
from qeval.engines.llamacpp import LlamaCppBackend, _extra_buffer_types  # noqa: E402
from qeval.run.config import parse_variant  # noqa: E402
from qeval.errors import QevalInputError  # noqa: E402
from qeval.quantize.gguf import export_gguf, gguf_artefact, sha256_file  # noqa: E402
from qeval.model_source import ResolvedModel, fingerprint_dir  # noqa: E402

from tiny_models import CORPUS, tiny_checkpoint as _tiny_checkpoint  # noqa: E402

ARCHS = ["llama", "qwen2", "qwen3", "gemma3", "phi3"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Per architecture, once per module: a tiny random checkpoint (rows of 256, so k-quants
    apply), transformers' fp32 log-probs on a passage, and the GGUF cache qeval fills."""
    root = tmp_path_factory.mktemp("gguf-archs")
    built = {}

    def get(arch):
        if arch not in built:
            ckpt = root / arch / "ckpt"  # not named after the architecture: llama.cpp reads names
            _, model = _tiny_checkpoint(ckpt, arch, hidden=256, intermediate=512)
            # The tokenizer qeval's baseline uses: transformers picks it by model type (Qwen2's
            # splits digits one by one, whatever tokenizer.json says).
            tok = transformers.AutoTokenizer.from_pretrained(ckpt)
            ids = tok(" ".join(CORPUS), add_special_tokens=False).input_ids
            with torch.no_grad():
                ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1).numpy()
            resolved = ResolvedModel("tiny", ckpt, fingerprint_dir(ckpt), "tiny")
            built[arch] = (resolved, tok, ids, ref, root / arch / "cache")
        return built[arch]

    return get


def _scored(made, arch, qtype):
    resolved, tok, ids, ref, cache = made(arch)
    backend = LlamaCppBackend(resolved, parse_variant(f"gguf:{qtype}"), cache=cache)
    try:
        assert backend.tokenize(CORPUS[3]) == tok(CORPUS[3], add_special_tokens=False).input_ids
        return backend, backend.token_logprobs(ids), ref
    finally:
        backend.close()


def _mean_kld(ref, lp):
    return float((np.exp(ref.astype(np.float64)) * (ref.astype(np.float64) - lp)).sum(-1).mean())


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_gguf_from_llama_cpp_converter_matches_transformers(made, arch):
    """llama.cpp's own converter, run by qeval, on each architecture: the F32 GGUF on llama.cpp
    computes what transformers computes in fp32 (a wrong norm convention, permutation or lost
    bias moves these by whole nats), with identical token ids."""
    backend, lp, ref = _scored(made, arch, "f32")
    assert lp.shape == ref.shape
    assert _mean_kld(ref, lp) < 1e-4
    np.testing.assert_allclose(lp, ref, atol=5e-3)
    assert "F32 100%" in backend.info.kernel
    manifest = json.loads(backend.path.with_suffix(".json").read_text())
    assert manifest["converter"]["sdist_sha256"] and manifest["recipe"] >= 2


def test_gemma3_gguf_read_back_by_transformers_computes_what_llama_cpp_computes(made, monkeypatch, tmp_path):
    """`--model file.gguf` de-quantizes the file into a transformers checkpoint. For Gemma-3 the
    file carries no query_pre_attn_scalar: transformers assumed 256, llama.cpp uses head_dim
    (64 here), which made the same weights disagree across engines by ~0.013 nats per token
    (issue 23). Read back, the F32 file must compute what the original checkpoint computes."""
    from qeval.model_source import _materialise_gguf

    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path))
    resolved, tok, ids, ref, cache = made("gemma3")
    path = gguf_artefact(resolved.path, resolved.fingerprint, "f32", cache)
    back, _ = _materialise_gguf(path)
    assert json.loads((back / "config.json").read_text())["query_pre_attn_scalar"] == 64
    model = transformers.AutoModelForCausalLM.from_pretrained(back, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1).numpy()
    assert _mean_kld(ref, lp) < 1e-6


@pytest.mark.parametrize("qtype,ggml_type,bound", [("q8_0", "Q8_0", 1e-3), ("q4_k_m", "Q4_K", 0.2)])
@pytest.mark.parametrize("arch", ["gemma3", "qwen3", "phi3"])
def test_quantized_gguf_types_on_new_architectures(made, arch, qtype, ggml_type, bound):
    backend, lp, ref = _scored(made, arch, qtype)
    kld = _mean_kld(ref, lp)
    assert 0 < kld < bound, kld  # quantized (not the F32 file again), and not broken
    assert ggml_type in backend.info.kernel
    assert "only" not in " ".join(backend.info.notes)  # rows of 256: no k-quant fallback


def test_scoring_through_the_shared_prefix_path_matches_transformers(made):
    resolved, tok, ids, ref, cache = made("llama")
    backend = LlamaCppBackend(resolved, parse_variant("gguf:f32"), cache=cache)
    try:
        req = LoglikelihoodRequest(tuple(ids[:5]), tuple(ids[5:8]), "x", 0)
        (lp,) = backend.loglikelihood([req])
    finally:
        backend.close()
    assert lp == pytest.approx(float(ref[np.arange(4, 7), ids[5:8]].sum()), abs=5e-3)


def test_an_architecture_the_converter_does_not_know_is_one_line(tmp_path):
    from qeval.quantize.converter import check_exportable

    _tiny_checkpoint(tmp_path / "ckpt", "llama")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(QevalInputError, match=r"variant 'gguf:q8_0': llama.cpp's converter \(llama-cpp-python "
                       r"0.3.36\) cannot export architecture NoSuchForCausalLM .*gguf=path/to/model.gguf"):
        check_exportable(tmp_path / "ckpt", "gguf:q8_0")


def test_a_missing_converter_names_the_fix(tmp_path, monkeypatch):
    from qeval.quantize.converter import check_exportable

    _tiny_checkpoint(tmp_path / "ckpt", "llama")
    monkeypatch.setenv("QEVAL_LLAMACPP_CONVERTER", str(tmp_path / "none"))
    with pytest.raises(QevalInputError, match=r"converter is not installed .*python -m qeval.quantize.converter install"):
        check_exportable(tmp_path / "ckpt", "gguf:q8_0")


def test_converter_install_refuses_an_sdist_that_is_not_the_pinned_one(tmp_path):
    import tarfile

    from qeval.quantize.converter import install

    fake = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(fake, "w:gz"):
        pass
    with pytest.raises(RuntimeError, match="is not the pinned"):
        install(tmp_path / "dest", sdist=fake)
    assert not (tmp_path / "dest").exists()


def test_quantized_artefacts_are_cached_and_fingerprinted(tmp_path):
    _tiny_checkpoint(tmp_path / "ckpt", "llama")
    cache = tmp_path / "cache"
    fp = fingerprint_dir(tmp_path / "ckpt")
    q8 = gguf_artefact(tmp_path / "ckpt", fp, "q8_0", cache)
    f32 = q8.with_name("f32.gguf")
    manifest = json.loads(q8.with_suffix(".json").read_text())
    assert manifest["sha256"] == sha256_file(q8) and manifest["type"] == "q8_0"
    assert q8.stat().st_size < 0.5 * f32.stat().st_size
    before = q8.stat().st_mtime_ns
    assert gguf_artefact(tmp_path / "ckpt", fp, "q8_0", cache) == q8 and q8.stat().st_mtime_ns == before
    # Another model fingerprint never shares the artefact.
    assert gguf_artefact(tmp_path / "ckpt", "0" * 64, "f16", cache).parent != q8.parent


def test_extra_buffer_types_switch_reaches_llama_cpp_defaults():
    import llama_cpp.llama_cpp as low

    assert low.llama_model_default_params().use_extra_bufts
    with _extra_buffer_types(enabled=False):
        assert not low.llama_model_default_params().use_extra_bufts
    assert low.llama_model_default_params().use_extra_bufts


@pytest.mark.parametrize("text,params", [
    ("gguf:q4_k_m", {"type": "q4_k_m"}),
    ("gguf:Q8_0,threads=2", {"type": "q8_0", "threads": 2}),
    ("gguf", {"type": "q4_k_m"}),
])
def test_gguf_variant_parsing(text, params):
    v = parse_variant(text)
    assert v.backend == "llamacpp" and v.params == params and v.name == text


@pytest.mark.parametrize("text,match", [
    ("gguf:q9_k", "unknown GGUF type 'q9_k'"),
    ("gguf:q4_k_m,layers=3", "unknown parameter(s) layers"),
    ("gguf:q4_k_m,threads=two", "threads must be a non-negative integer"),
    ("gguf=/no/such/model.gguf", "does not exist"),
    ("gguf=", "gguf= needs a path"),
])
def test_bad_gguf_variants_are_one_clear_error(text, match):
    with pytest.raises(QevalInputError, match=match.replace("(", r"\(").replace(")", r"\)")):
        parse_variant(text)


@pytest.mark.parametrize("text,expected", [
    ("gguf:q4_k_m,threads=8,int8", ["gguf:q4_k_m,threads=8", "int8"]),
    ("gguf:q8_0,gguf:q2_k", ["gguf:q8_0", "gguf:q2_k"]),
    ("nf4:double_quant=true,gguf=/m.gguf,int8wo", ["nf4:double_quant=true", "gguf=/m.gguf", "int8wo"]),
    (" int8 , ,nf4", ["int8", "nf4"]),
])
def test_candidate_lists_keep_parameters_with_their_variant(text, expected):
    from qeval.run.config import split_variants

    assert split_variants(text) == expected


def test_a_crashing_llama_cpp_becomes_one_clear_error_not_a_segfault(tmp_path, monkeypatch):
    """A native crash inside llama.cpp (seen: AMX matmul path; a toolchain fault in
    llama_model::print_info on one Xeon image) happens in a probe child, never in qeval."""
    import qeval.engines.llamacpp as lc

    _tiny_checkpoint(tmp_path / "ckpt", "llama")
    path = tmp_path / "m.gguf"
    export_gguf(tmp_path / "ckpt", path, dtype="f32", pre="gpt-2")
    assert lc.safe_buffer_setting(path, 1, 0)[0] in (True, False)  # the real probe passes here
    lc._probe.cache_clear()
    monkeypatch.setattr(lc, "_PROBE_CODE", "import ctypes; ctypes.string_at(0)")  # a real SIGSEGV
    with pytest.raises(QevalInputError, match=r"cannot run m.gguf on this machine.*crashed \(SIGSEGV\)"):
        lc.safe_buffer_setting(path, 1, 0)
    lc._probe.cache_clear()


def test_a_crash_with_extra_buffer_types_retries_without_them(tmp_path, monkeypatch):
    import qeval.engines.llamacpp as lc

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setattr(lc, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(lc, "_PROBE_CODE",
                        "import sys, ctypes; ctypes.string_at(0) if sys.argv[2] == '1' else print('ok')")
    lc._probe.cache_clear()
    extra, notes = lc.safe_buffer_setting(path, 1, 0)
    assert extra is False and "crashed with its extra buffer types" in notes[0]
    monkeypatch.setattr(lc, "cpu_has_amx", lambda: True)  # AMX: never tries them on
    lc._probe.cache_clear()
    extra, notes = lc.safe_buffer_setting(path, 1, 0)
    assert extra is False and "AMX" in notes[0]
    lc._probe.cache_clear()


def test_quantization_ladder_is_monotone_where_k_quants_apply(tmp_path):
    """On a model whose rows are multiples of 256 (so every type means what its name says) and
    whose weights are not already on a quantization grid, mean KL to the F32 file grows down the
    ladder. (The default model meets neither condition: see the README and issue 4's note.)"""
    from qeval.kinds import reference_text as rt
    tok, _ = _tiny_checkpoint(tmp_path / "ckpt", "llama", hidden=256, intermediate=512,
                              initializer_range=0.08)
    fp = fingerprint_dir(tmp_path / "ckpt")
    resolved = ResolvedModel("tiny", tmp_path / "ckpt", fp, "tiny")
    ids = tok(" ".join(CORPUS * 3), add_special_tokens=False).input_ids
    passage = rt.PassageTokens("p", "all", None, (tuple(ids),), "h")

    def scores(qtype):
        b = LlamaCppBackend(resolved, parse_variant(f"gguf:{qtype}"), cache=tmp_path / "cache")
        try:
            return b, b.token_logprobs(ids)
        finally:
            b.close()

    base_backend, base = scores("f32")
    dist = rt.baseline_distributions(_FixedTable(base), [passage], 64)["p"][0]
    ladder = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
    kl, bpw = [], []
    for q in ladder:
        b, lp = scores(q)
        assert "only" not in " ".join(b.info.notes)  # no k-quant fallback here
        kl.append(float(rt.binned_kl(dist, lp).mean()))
        bpw.append(float(b.info.compute_dtype.split(", ")[1].split()[0]))
    assert kl == sorted(kl) and kl[0] > 0, dict(zip(ladder, kl))
    assert bpw == sorted(bpw, reverse=True), dict(zip(ladder, bpw))


class _FixedTable:
    def __init__(self, lp):
        self.lp = lp

    def token_logprobs(self, tokens):
        return self.lp


def test_gguf_records_carry_the_engine_floor(tmp_path):
    """A compare with a GGUF candidate on reference text also scores the unquantized (F32) GGUF of
    the baseline on llama.cpp, and reports its KLD beside the candidate's: the engine's share."""
    import os
    import subprocess
    import sys

    _tiny_checkpoint(tmp_path / "ckpt", "llama", hidden=256, intermediate=512, initializer_range=0.08)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "qeval.cli", "compare", "--model", str(tmp_path / "ckpt"), "--base", "fp32",
         "--candidates", "gguf:q4_k_m", "--tasks", "clinical_reference", "--limit", "4", "--n-boot", "200",
         "--no-efficiency", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "QEVAL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    (c,) = results["comparisons"]
    floor = c["engine_floor"]
    assert floor["variant"] == "gguf:f32" and results["engine_floor"]["backend"] == "llamacpp"
    assert 0 <= floor["kld_mean"]["estimate"] < 1e-4 < c["kld_mean"]["estimate"]
    assert "engine floor" in proc.stdout and "Engine floor of the GGUF candidates" in (out / "report.md").read_text()
