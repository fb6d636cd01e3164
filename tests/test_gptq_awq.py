"""GPTQ and AWQ with the real quantizer (gptqmodel) on tiny random models built here: the
artefact is made, cached by content, loaded with gptqmodel's kernel and scored; a checkpoint
brought as gptq=PATH scores identically to the in-tool variant."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gptqmodel")

from qeval.run.factory import EngineFactory  # noqa: E402
from qeval.quantize.calibration_sets import texts_sha256  # noqa: E402
from qeval.run.config import parse_variant  # noqa: E402
from qeval.errors import QevalInputError  # noqa: E402
from qeval.model_source import ResolvedModel, fingerprint_dir  # noqa: E402

from tiny_models import CORPUS, tiny_checkpoint  # noqa: E402

SMALL = "bits=4,group=32,samples=8,seqlen=32"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    tok, model = tiny_checkpoint(root / "ckpt", "llama", hidden=128, intermediate=256,
                                 initializer_range=0.05)
    resolved = ResolvedModel("tiny", root / "ckpt", fingerprint_dir(root / "ckpt"), "tiny")
    calib_dir = root / "calibration"
    texts = [c + " " + c for c in CORPUS * 4]
    calib_dir.mkdir()
    (calib_dir / "tiny.txt").write_text("\n\n".join(texts))
    ids = tok(" ".join(CORPUS), add_special_tokens=False).input_ids
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1).numpy()
    return resolved, root, ids, ref, str(calib_dir / "tiny.txt")


def _factory(resolved, root):
    return EngineFactory(resolved, device="cpu", cache=root / "cache", calibration_root=root / "calibration")


def _score(factory, variant, ids):
    backend = factory.open(variant, "float32")
    try:
        return backend.info, backend.token_logprobs(ids)
    finally:
        backend.close()


def _kl(ref, lp):
    p = np.exp(ref)
    return float((p * (ref - lp)).sum(-1).mean())


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantized_artefact_is_made_cached_scored_and_brought_back(tiny, method, tmp_path, monkeypatch):
    resolved, root, ids, ref, calib = tiny
    monkeypatch.chdir(tmp_path)  # the quantizer's own logs must not land in the working directory
    factory = _factory(resolved, root)
    variant = parse_variant(f"{method}:{SMALL},calib={calib}")
    factory.preflight([variant], [])
    info, lp = _score(factory, variant, ids)
    assert "gptqmodel." in info.kernel and info.compute_dtype.startswith("float32")
    if method == "gptq":  # on a CPU: the float32 dequantizing kernel, the weights' error alone
        assert "gptqmodel.TorchLinear" in info.kernel and info.compute_dtype == "float32"
        # qeval dequantizes once at load: the same numbers as the kernel's own forward
        from transformers import AutoModelForCausalLM, GPTQConfig

        path, _ = factory.checkpoint(variant)
        own = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map={"": "cpu"},
                                                   quantization_config=GPTQConfig(bits=4, backend="torch"))
        with torch.no_grad():
            ref_kernel = torch.log_softmax(own(torch.tensor([ids])).logits[0, :-1].float(), -1).numpy()
        np.testing.assert_allclose(lp, ref_kernel, atol=1e-4)
    else:  # AWQ has no float32 CPU kernel; the record says what its kernel does to activations
        assert "bfloat16 activations" in info.compute_dtype
    assert any("made by gptqmodel" in n for n in info.notes)
    made = factory.artefacts[variant.name]
    assert made["params"]["group"] == 32 and made["calibration"]["sha256"] == texts_sha256(
        (root / "calibration" / "tiny.txt").read_text().split("\n\n"))
    kl = _kl(ref, lp)
    # Quantized (not the float weights) and sound: here GPTQ 0.0025, AWQ 0.0045; an AWQ packed
    # through float32 (a broken model on the real one, NLL 14.8 vs 4.3) measured 0.06.
    assert 0 < kl < 0.02, kl

    # Cached: a second factory finds the artefact without quantizing again, and says how it was
    # made before opening it (a rerun whose records are all cached opens nothing).
    again = _factory(resolved, root)
    assert again.made_artefact(variant) == made and again.artefacts == {}
    assert again.made_artefact(parse_variant(f"{method}:{SMALL},calib={calib},seed=7")) is None  # not made
    path, _ = again.checkpoint(variant)
    assert path.name.startswith(method) and again.artefacts[variant.name] == made

    # The same checkpoint brought by path scores identically.
    brought = parse_variant(f"{method}={path}")
    again.preflight([brought], [])
    _, lp2 = _score(again, brought, ids)
    np.testing.assert_array_equal(lp, lp2)
    # Its identity is its content: another calibration seed makes another artefact.
    other = parse_variant(f"{method}:{SMALL},calib={calib},seed=1")
    assert again.identity(other)["versions"]["calib_sha256"] == again.identity(variant)["versions"]["calib_sha256"]
    from qeval.quantize.gptq_awq import artefact_key

    c = again.calibration(variant)
    assert artefact_key(resolved.fingerprint, other, c) != artefact_key(resolved.fingerprint, variant, c)
    assert list(tmp_path.iterdir()) == []


def test_preflight_refuses_misfits_before_any_work(tiny):
    resolved, root, _, _, calib = tiny
    factory = _factory(resolved, root)
    with pytest.raises(QevalInputError, match=r"group=256 does not divide.*choose group from -1, 16, 32, 64, 128"):
        factory.preflight([parse_variant(f"gptq:group=256,calib={calib}")], [])
    with pytest.raises(QevalInputError, match="is not a GPTQ, AWQ or compressed-tensors checkpoint"):
        factory.preflight([parse_variant(f"gptq={resolved.path}")], [])
    with pytest.raises(QevalInputError, match="does not exist"):
        factory.preflight([parse_variant(f"awq={root / 'nope'}")], [])
    assert not (root / "cache" / "artefacts").exists() or not any(
        p.name.startswith("gptq") and "256" in p.name for p in (root / "cache" / "artefacts").iterdir())


def test_calibrate_cli_on_a_tiny_model_writes_the_experiment(tiny, tmp_path):
    """The whole `qeval calibrate` flow: 2 methods x 2 sets x 2 seeds quantized by gptqmodel,
    scored against one baseline, summarised with per-seed values, a ranking and contrasts."""
    import json
    import os
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    resolved, root, _, _, calib = tiny
    other = root / "calibration" / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"Unrelated text number {i}: " + "the river bank and "
                                         "the old mill by the bridge. " * 3}) + "\n" for i in range(12)))
    out = tmp_path / "calib-run"
    proc = subprocess.run(
        [sys.executable, "-m", "qeval.cli", "calibrate", "--model", str(resolved.path), "--base", "fp32",
         "--methods", "gptq,awq", "--sets", f"{calib},{other}", "--seeds", "2",
         "--params", "bits=4,group=32,samples=4,seqlen=32", "--tasks", "clinical_core", "--limit", "24",
         "--n-boot", "200", "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, env={**os.environ, "QEVAL_CACHE": str(root / "cache")}, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "calibrate.json").read_text())
    arms = {(a["method"], a["calib"]) for a in summary["arms"]}
    assert arms == {(m, s) for m in ("gptq", "awq") for s in ("tiny", "other")}
    for a in summary["arms"]:
        assert {s["metric"] for s in a["stats"]} == {"delta_accuracy", "choice_kl"}
        assert all(len(s["per_seed"]) == 2 for s in a["stats"])
    assert set(summary["ranking"]) == {"gptq", "awq"} and len(summary["quantize_seconds"]) == 8
    assert len(summary["contrasts"]) == 2 * 2  # per method: one pair of sets x two metrics
    ET.fromstring((out / "calibrate.svg").read_text())
    assert "Are the sets distinguishable?" in (out / "calibrate.md").read_text()
    assert "best calibration set" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert len(results["candidates"]) == 8 and results["config"]["baseline"]["method"] == "fp32"


def _compressed_tensors_checkpoint(src, out):
    """A W4A16 pack-quantized checkpoint in llm-compressor's format, made here with the
    compressed-tensors library (round-to-nearest scales; llm-compressor itself pins an older
    transformers and stays out of this environment)."""
    import transformers
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    scheme = preset_name_to_scheme("W4A16", ["Linear"])
    scheme.weights.group_size = 32
    apply_quantization_config(model, QuantizationConfig(config_groups={"g": scheme}, ignore=["lm_head"],
                                                        format="pack-quantized"))
    for m in model.modules():
        if getattr(m, "quantization_scheme", None) is None or not hasattr(m, "weight_scale"):
            continue
        w = m.weight.data.reshape(m.weight.shape[0], -1, 32)
        scale, zero = calculate_qparams(w.amin(-1), w.amax(-1), m.quantization_scheme.weights)
        m.weight_scale.data.copy_(scale.reshape(m.weight_scale.shape))
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data.copy_(zero.reshape(m.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    transformers.AutoTokenizer.from_pretrained(src).save_pretrained(out)


def test_llm_compressor_checkpoint_is_scored_as_brought(tiny, tmp_path):
    pytest.importorskip("compressed_tensors")
    resolved, root, ids, ref, _ = tiny
    _compressed_tensors_checkpoint(resolved.path, tmp_path / "ct")
    factory = _factory(resolved, root)
    variant = parse_variant(f"awq={tmp_path / 'ct'}")
    factory.preflight([variant], [])
    info, lp = _score(factory, variant, ids)
    assert "compressed_tensors.Linear[w4, group 32]" in info.kernel
    assert 0 < _kl(ref, lp) < 0.25
    # Multiple-choice scoring takes the same whole-model path (compressed-tensors' forward hook).
    from qeval.engines.base import LoglikelihoodRequest

    backend = factory.open(variant, "float32")
    try:
        (got,) = backend.loglikelihood([LoglikelihoodRequest(tuple(ids[:10]), tuple(ids[10:12]), "x", 0)])
    finally:
        backend.close()
    assert np.isclose(got, lp[9, ids[10]] + lp[10, ids[11]], atol=1e-4)


def test_record_keys_follow_the_artefact_recipe(tiny, monkeypatch):
    """Records scored on an artefact made another way (a new recipe) are never reused."""
    import qeval.quantize.gptq_awq as cal

    resolved, root, _, _, calib = tiny
    factory = _factory(resolved, root)
    variant = parse_variant(f"awq:{SMALL},calib={calib}")
    before = factory.identity(variant)
    monkeypatch.setattr(cal, "RECIPE", cal.RECIPE + 1)
    assert factory.identity(variant) != before
