"""Calibrated GGUF (issue 22 item 4): the importance matrix qeval computes in transformers is
llama.cpp's statistic (mean x² per input column of every block linear), written in llama.cpp's
GGUF imatrix format, reaches llama.cpp's real quantizer (the quantized bytes change), and a
`gguf:q4_k_m,imatrix=clinical` candidate loads, scores and records what ran. Tiny random model
whose rows are multiples of 256, so k-quants apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from qeval.errors import QevalInputError  # noqa: E402
from qeval.model_source import fingerprint_dir  # noqa: E402
from qeval.quantize.calibration_sets import load_calibration  # noqa: E402
from qeval.quantize.gguf import gguf_artefact, quantize  # noqa: E402
from qeval.quantize.imatrix import (DEFAULTS, imatrix_artefact, imatrix_key, read_imatrix,  # noqa: E402
                                    write_imatrix)
from qeval.run.config import parse_variant  # noqa: E402

from tiny_models import tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {**DEFAULTS, "samples": 4}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("imatrix")
    ckpt = root / "ckpt"
    _, model = tiny_checkpoint(ckpt, "llama", hidden=256, intermediate=512, initializer_range=0.08)
    fp = fingerprint_dir(ckpt)
    cache = root / "cache"
    f32 = gguf_artefact(ckpt, fp, "f32", cache)
    calib = load_calibration("clinical", ROOT / "calibration")
    path, manifest = imatrix_artefact(ckpt, fp, f32, calib, SETTINGS, cache)
    return {"root": root, "ckpt": ckpt, "fp": fp, "cache": cache, "f32": f32, "calib": calib,
            "imatrix": path, "manifest": manifest, "model": model}


def _tensors(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def test_the_imatrix_is_the_mean_square_of_each_linear_input(made):
    """Every block linear is covered, under its GGUF name, with llama.cpp's statistic: checked
    against the first attention block's input (input_layernorm's output) computed here."""
    from transformers import AutoTokenizer

    from qeval.quantize.gptq_awq import calibration_windows

    values = read_imatrix(made["imatrix"])
    expected = {f"blk.{i}.{n}.weight" for i in range(2) for n in
                ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(values) == expected and made["manifest"]["unmapped_linear_layers"] == []
    assert len(values["blk.0.ffn_down.weight"]) == 512 and len(values["blk.0.attn_q.weight"]) == 256
    tok = AutoTokenizer.from_pretrained(made["ckpt"])
    windows = calibration_windows(made["calib"].texts, lambda t: tok(t, add_special_tokens=False).input_ids,
                                  samples=4, seqlen=256, seed=0)
    model = made["model"].float()
    seen = []
    h = model.model.layers[0].input_layernorm.register_forward_hook(lambda m, a, out: seen.append(out[0]))
    with torch.no_grad():
        for w in windows:
            model(input_ids=torch.tensor([w]), use_cache=False)
    h.remove()
    x = torch.cat(seen).double()
    ref = (x * x).mean(0).numpy()
    np.testing.assert_allclose(values["blk.0.attn_q.weight"], ref, rtol=1e-5)
    np.testing.assert_array_equal(values["blk.0.attn_q.weight"], values["blk.0.attn_k.weight"])  # same input
    assert not np.allclose(values["blk.0.attn_q.weight"], values["blk.0.attn_output.weight"])
    meta = gguf.GGUFReader(str(made["imatrix"])).fields
    assert meta["imatrix.chunk_count"].contents() == 4 and meta["imatrix.chunk_size"].contents() == 256
    assert made["manifest"]["sha256"] and made["manifest"]["tensors"] == 14


@pytest.mark.parametrize("qtype", ["q4_k_m", "q2_k"])
def test_the_imatrix_changes_llama_cpp_quantized_weights(made, qtype, tmp_path):
    """llama.cpp's quantizer really reads it: every block tensor's bytes change, the others not.
    A uniform imatrix (all ones) is not 'no imatrix' for llama.cpp: its imatrix code path weighs
    rounding errors differently (observed: every block tensor differs from the plain file)."""
    plain = _tensors(gguf_artefact(made["ckpt"], made["fp"], qtype, made["cache"]))
    calibrated = _tensors(gguf_artefact(made["ckpt"], made["fp"], qtype, made["cache"],
                                        imatrix=(made["imatrix"], made["manifest"]["sha256"])))
    changed = {k for k in plain if plain[k] != calibrated[k]}
    assert changed == set(read_imatrix(made["imatrix"]))  # the 14 block linears, not embeddings/norms
    ones = tmp_path / "ones.imatrix.gguf"
    write_imatrix(ones, {k: (np.ones_like(v), 1) for k, v in read_imatrix(made["imatrix"]).items()},
                  dataset="ones", chunk_count=1, chunk_size=1)
    out = tmp_path / "uniform.gguf"
    quantize(made["f32"], out, qtype, imatrix=ones)
    uniform = _tensors(out)
    assert {k for k in plain if plain[k] != uniform[k]} == changed
    assert all(uniform[k] != calibrated[k] for k in changed)


def test_q8_0_has_no_imatrix_path(made, tmp_path):
    """q8_0 rounds each block to its max: llama.cpp ignores the imatrix (same bytes)."""
    plain, out = tmp_path / "plain.gguf", tmp_path / "imx.gguf"
    quantize(made["f32"], plain, "q8_0")
    quantize(made["f32"], out, "q8_0", imatrix=made["imatrix"])
    assert _tensors(plain) == _tensors(out)


def test_the_imatrix_key_follows_what_makes_it(made):
    generic = load_calibration("generic", ROOT / "calibration")
    key = imatrix_key(made["fp"], made["calib"], SETTINGS)
    assert key == imatrix_key(made["fp"], made["calib"], dict(SETTINGS))
    assert key != imatrix_key(made["fp"], generic, SETTINGS)
    assert key != imatrix_key(made["fp"], made["calib"], {**SETTINGS, "seed": 1})
    assert key != imatrix_key("0" * 64, made["calib"], SETTINGS)


def test_the_variant_identity_changes_with_the_imatrix(made):
    """The record-store key of a calibrated GGUF names its calibration texts and how its matrix
    was made: another set, another seed, or none is another identity."""
    from qeval.model_source import ResolvedModel
    from qeval.run.factory import EngineFactory

    factory = EngineFactory(ResolvedModel("tiny", made["ckpt"], made["fp"], "tiny"), device="cpu",
                            cache=made["cache"], calibration_root=ROOT / "calibration")
    ids = [factory.identity(parse_variant(t)) for t in (
        "gguf:q4_k_m", "gguf:q4_k_m,imatrix=clinical", "gguf:q4_k_m,imatrix=generic",
        "gguf:q4_k_m,imatrix=clinical,seed=1")]
    assert "imatrix_key" not in ids[0]["versions"]
    assert ids[1]["versions"]["imatrix_calib_sha256"] == made["calib"].sha256
    assert len({json.dumps(i, sort_keys=True) for i in ids}) == 4


@pytest.mark.parametrize("text, params", [
    ("gguf:q4_k_m,imatrix=clinical", {"type": "q4_k_m", "imatrix": "clinical"}),
    ("gguf:q2_k,imatrix=generic,seed=1,samples=16", {"type": "q2_k", "imatrix": "generic", "seed": 1, "samples": 16}),
])
def test_imatrix_variant_parsing(text, params):
    assert parse_variant(text).params == params


@pytest.mark.parametrize("text, match", [
    ("gguf:f32,imatrix=clinical", "not quantized"),
    ("gguf:q4_k_m,seed=1", "add imatrix="),
    ("gguf:q4_k_m,imatrix=clinical,seqlen=8", "seqlen >= 16"),
    ("gguf:q4_k_m,imatrix=clinical,samples=x", "samples must be a non-negative integer"),
])
def test_bad_imatrix_variants_are_one_line(text, match):
    with pytest.raises(QevalInputError, match=match):
        parse_variant(text)


def test_a_brought_gguf_takes_no_imatrix(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(QevalInputError, match="quantized already"):
        parse_variant(f"gguf={f},imatrix=clinical")


def test_calibrated_candidate_loads_scores_and_records_its_imatrix(made):
    """The CLI end to end: the calibrated candidate scores, its KLD differs from the plain one's,
    and its record names the calibration set and the imatrix file's sha256."""
    out = made["root"] / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "qeval.cli", "compare", "--model", str(made["ckpt"]), "--base", "fp32",
         "--candidates", "gguf:q4_k_m,gguf:q4_k_m,imatrix=clinical,samples=4", "--tasks", "clinical_reference",
         "--limit", "4", "--n-boot", "200", "--no-efficiency", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "QEVAL_CACHE": str(made["cache"])})
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    plain, calibrated = results["candidates"]
    assert "imatrix_sha256" not in plain["versions"]
    assert calibrated["versions"]["imatrix_sha256"] == made["manifest"]["sha256"]  # the cached one, reused
    assert calibrated["versions"]["imatrix_calib"] == "clinical"
    assert any("importance matrix" in n and made["manifest"]["sha256"][:12] in n for n in calibrated["notes"])
    art = results["artefacts"]["gguf:q4_k_m,imatrix=clinical,samples=4"]
    assert art["imatrix"]["calibration"]["sha256"] == made["calib"].sha256
    assert art["contamination"][0]["overlapping"] == 0
    kld = [c["kld_mean"]["estimate"] for c in results["comparisons"]]
    assert kld[0] != kld[1] and all(k > 0 for k in kld)
    # Run again: every record is reused, nothing is opened, and results.json still says how the
    # artefact was made (as the first run's does).
    rerun = made["root"] / "rerun"
    proc = subprocess.run([*proc.args[:-1], str(rerun)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "QEVAL_CACHE": str(made["cache"])})
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr
    again = json.loads((rerun / "results.json").read_text())
    assert again["artefacts"] == results["artefacts"] and again["comparisons"] == results["comparisons"]


def test_calibrate_sweeps_gguf_arms_like_gptq():
    from qeval.run.app import CalibrateOptions, _arms

    arms, names = _arms(CalibrateOptions(methods="gguf:q4_k_m,gptq", sets="generic,clinical", seeds=2,
                                         params="samples=8"))
    assert names[:4] == ["gguf:q4_k_m,imatrix=generic,seed=0,samples=8", "gguf:q4_k_m,imatrix=generic,seed=1,samples=8",
                         "gguf:q4_k_m,imatrix=clinical,seed=0,samples=8", "gguf:q4_k_m,imatrix=clinical,seed=1,samples=8"]
    assert [(a.method, a.calib) for a in arms][:2] == [("gguf:q4_k_m", "generic"), ("gguf:q4_k_m", "clinical")]
    assert names[4] == "gptq:calib=generic,seed=0,samples=8"
    for bad, match in [("gguf:f16", "choose from gptq, awq, gguf:<type>"), ("gguf:q9", "gguf:<type>")]:
        with pytest.raises(QevalInputError, match=match):
            _arms(CalibrateOptions(methods=bad))
    with pytest.raises(QevalInputError, match="imatrix for gguf"):
        _arms(CalibrateOptions(methods="gguf:q4_k_m", params="imatrix=clinical"))


def test_qeval_calibrate_sweeps_an_imatrix_gguf(made):
    """`qeval calibrate --methods gguf:q4_k_m --sets generic,clinical --seeds 2` runs end to end
    with the two-level bootstrap; each seed's imatrix is another file."""
    out = made["root"] / "calibrate"
    proc = subprocess.run(
        [sys.executable, "-m", "qeval.cli", "calibrate", "--model", str(made["ckpt"]), "--base", "fp32",
         "--methods", "gguf:q4_k_m", "--sets", "generic,clinical", "--seeds", "2", "--params", "samples=4",
         "--tasks", "clinical_reference", "--limit", "4", "--n-boot", "200", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "QEVAL_CACHE": str(made["cache"])})
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr
    summary = json.loads((out / "calibrate.json").read_text())
    assert [(a["method"], a["calib"]) for a in summary["arms"]] == [("gguf:q4_k_m", "generic"), ("gguf:q4_k_m", "clinical")]
    assert all(len(s["per_seed"]) == 2 for a in summary["arms"] for s in a["stats"])
    shas = {c["versions"]["imatrix_sha256"] for c in json.loads((out / "results.json").read_text())["candidates"]}
    assert len(shas) == 4 and made["manifest"]["sha256"] in shas  # clinical seed 0: the fixture's


@pytest.mark.parametrize("case", ["missing", "contaminated"])
def test_a_bad_imatrix_set_is_one_line_before_model_time(made, tmp_path, case):
    """A set that does not exist, or one holding the evaluated passages, stops the run with
    exit 2 and one line, before the baseline is loaded."""
    from qeval.settings import resource_dir
    from qeval.tasks.registry import load_task

    calib = tmp_path / "mine.jsonl"
    if case == "contaminated":
        task = load_task(resource_dir("tasks") / "clinical_reference" / "clinical_reference.yaml")
        calib.write_text("".join(json.dumps({"text": p.text}) + "\n" for p in task.passages[:4]))
    proc = subprocess.run(
        [sys.executable, "-m", "qeval.cli", "compare", "--model", str(made["ckpt"]), "--base", "fp32",
         "--candidates", f"gguf:q4_k_m,imatrix={calib}", "--tasks", "clinical_reference", "--limit", "4",
         "--no-efficiency", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "QEVAL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert ("not found" in text) if case == "missing" else ("overlaps task 'clinical_reference'" in text)
    assert "Loading fp32" not in text and not (tmp_path / "cache" / "imatrix").exists()
