"""The vLLM engine on the real embedded model, in the worker that runs in .venv-vllm (built by
scripts/setup.sh): cross-engine agreement with transformers, a compare judged wholly on vLLM,
the worker's protocol and life cycle, and its one-line errors. Few engine starts (each ~15 s):
one HF-vs-vLLM compare, one vLLM compare of three variants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qeval.engines.vllm import protocol
from qeval.engines.vllm.client import WORKER, worker_python

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent


def _python() -> Path:
    try:
        return worker_python()
    except Exception as exc:  # the set-up command builds it: a missing one is a failure, not a skip
        pytest.fail(f"{exc}")


def _qeval(*args: str, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qeval.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def _records(run: Path, variant_prefix: str, task: str) -> list[dict]:
    folder = next(p for p in (run / "records").iterdir() if p.name.startswith(variant_prefix))
    return [json.loads(x) for f in sorted(folder.glob(f"{task}*.jsonl")) for x in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def hf_vs_vllm(tmp_path_factory):
    """transformers fp32 (baseline) against vLLM fp32 (candidate) on multiple choice and
    reference text: one vLLM engine."""
    _python()
    out = tmp_path_factory.mktemp("vllm") / "hf-vs-vllm"
    proc = _qeval("compare", "--base", "fp32", "--candidates", "vllm:fp32", "--tasks",
                  "clinical_core,clinical_reference", "--limit", "12", "--n-boot", "500", "--out", str(out),
                  "--no-efficiency")
    assert proc.returncode in (0, 1, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, json.loads((out / "results.json").read_text())


def test_vllm_fp32_matches_transformers_fp32_on_reference_text(hf_vs_vllm):
    _, _, results = hf_vs_vllm
    (text,) = [c for c in results["comparisons"] if c["task"] == "clinical_reference"]
    assert text["candidate"] == "vllm:fp32"
    assert text["n_tokens"] > 1000
    assert text["kld_mean"]["estimate"] < 1e-4, text["kld_mean"]
    assert text["same_top"]["estimate"] >= 0.999, text["same_top"]


def test_vllm_fp32_matches_transformers_fp32_on_multiple_choice(hf_vs_vllm):
    out, _, results = hf_vs_vllm
    (mc,) = [c for c in results["comparisons"] if c["task"] == "clinical_core"]
    assert mc["flips_correct_to_wrong"] == mc["flips_wrong_to_correct"] == 0
    base = {r["sample_id"]: r for r in _records(out, "fp32", "clinical_core")}
    cand = {r["sample_id"]: r for r in _records(out, "vllm", "clinical_core")}
    assert set(base) == set(cand) and len(base) == 12
    worst = max(abs(a - b) for k in base for a, b in zip(base[k]["choice_logprobs"], cand[k]["choice_logprobs"]))
    assert worst <= 1e-3, worst
    assert all(base[k]["prediction"] == cand[k]["prediction"] and base[k]["prompt_hash"] == cand[k]["prompt_hash"]
               and base[k]["rotation_predictions"] == cand[k]["rotation_predictions"] for k in base)


def test_the_record_names_vllm_its_version_and_kernels(hf_vs_vllm):
    _, _, results = hf_vs_vllm
    (info,) = results["candidates"]
    assert info["variant"] == "vllm:fp32" and info["backend"] == "vllm" and info["versions"]["vllm"]
    assert "UnquantizedLinearMethod" in info["kernel"] and "vLLM" in info["kernel"]
    # What the engine holds: at least the 135M model's float32 weights (~540 MB; vLLM's CPU
    # layers keep a repacked copy beside them, which counts too).
    assert 0.5e9 < info["weight_bytes"] < 2.5e9, info["weight_bytes"]


@pytest.fixture(scope="module")
def on_vllm(tmp_path_factory):
    """The done-when command, small: a vLLM fp32 baseline against vLLM's FP8 and a GPTQ made by
    qeval (the same artefact test_real_model makes, reused from the session's cache)."""
    _python()
    out = tmp_path_factory.mktemp("vllm") / "on-vllm"
    proc = _qeval("compare", "--base", "vllm:fp32", "--candidates",
                  "vllm:fp8,vllm:gptq,samples=8,seqlen=128,calib=generic", "--tasks",
                  "clinical_core,clinical_reference,clinical_dose_calc", "--limit", "5", "--n-boot", "500",
                  "--out", str(out), "--no-efficiency")
    assert proc.returncode in (0, 1, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, json.loads((out / "results.json").read_text())


def test_a_compare_on_vllm_alone_gives_verdicts(on_vllm):
    out, proc, results = on_vllm
    assert results["verdict"] in ("GO", "NO_GO", "INCONCLUSIVE")
    assert f"Verdict: {results['verdict']}" in proc.stdout
    assert set(results["per_candidate"]) == {"vllm:fp8", "vllm:gptq,samples=8,seqlen=128,calib=generic"}
    cands = {c["variant"]: c for c in results["candidates"]}
    fp8, gptq = cands["vllm:fp8"], cands["vllm:gptq,samples=8,seqlen=128,calib=generic"]
    assert "Fp8" in fp8["kernel"] and "fp8_per_channel" in fp8["kernel"]  # what ran on this CPU, named
    assert any("emulated" in n for n in fp8["notes"]) and fp8["compute_dtype"].startswith("bfloat16")
    assert "GPTQ" in gptq["kernel"] and "LinearKernel" in gptq["kernel"], gptq["kernel"]
    assert any("made by gptqmodel" in n for n in gptq["notes"])
    tasks = {c["task"] for c in results["comparisons"]}
    assert tasks == {"clinical_core", "clinical_reference", "clinical_dose_calc"}


def test_engine_floor_is_measured_for_quantized_vllm_candidates(on_vllm):
    """vllm:fp8 computes in bfloat16: its floor (vllm:bf16 against the fp32 baseline) is
    measured, so bfloat16's share is not blamed on FP8."""
    _, _, results = on_vllm
    floors = {c["candidate"]: c["engine_floor"] for c in results["comparisons"] if c["kind"] == "reference_text"}
    assert set(floors) == {"vllm:fp8", "vllm:gptq,samples=8,seqlen=128,calib=generic"}
    assert all(f is not None for f in floors.values()), floors
    assert "vllm:bf16" in json.dumps(results["engine_floor"])


# ---------------------------------------------------------------- the worker itself


def test_protocol_round_trips_arrays_and_sequences():
    import io

    buf = io.BytesIO()
    seqs = [[1, 2, 3], [], [7]]
    protocol.send(buf, {"op": "x", "n": 3}, {**protocol.pack_sequences(seqs), "f": np.eye(2, dtype=np.float32)})
    buf.seek(0)
    head, arrays = protocol.receive(buf)
    assert head == {"op": "x", "n": 3}
    assert protocol.unpack_sequences(arrays["tokens"], arrays["ends"]) == seqs
    assert arrays["f"].dtype == np.float32 and (arrays["f"] == np.eye(2)).all()
    with pytest.raises(protocol.WorkerGone):
        protocol.receive(io.BytesIO(b"\x00\x00"))


def test_worker_refuses_another_protocol_version():
    proc = subprocess.Popen([str(_python()), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    protocol.send(proc.stdin, {"op": "hello", "version": protocol.VERSION + 1})
    head, _ = protocol.receive(proc.stdout)
    assert head["ok"] is False and "protocol version" in head["error"]
    assert proc.wait(timeout=30) == 0


def test_worker_dies_with_its_parent(tmp_path):
    """A parent killed with SIGKILL (no clean-up) takes the worker with it."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen([{str(_python())!r}, {str(WORKER)!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        print(p.pid, flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        try:  # a zombie is dead too (its reaper was the parent)
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                return
        except OSError:
            return
        time.sleep(0.2)
    pytest.fail("the vLLM worker outlived its parent")


def test_fp8_matmul_emulation_equals_torch_scaled_mm():
    """The CPU emulation of torch._scaled_mm (worker.emulate_scaled_mm) gives torch's own FP8
    product on random FP8 operands with per-row and per-column scales."""
    code = textwrap.dedent(f"""
        import runpy, torch
        w = runpy.run_path({str(WORKER)!r}, run_name="qeval_worker_test")
        g = torch.Generator().manual_seed(0)
        worst = 0.0
        for m, k, n in ((1, 32, 16), (16, 96, 48), (33, 64, 80)):
            a = (torch.randn(m, k, generator=g) * 4).to(torch.float8_e4m3fn)
            b = (torch.randn(n, k, generator=g) * 4).to(torch.float8_e4m3fn).t()
            sa, sb = torch.rand(m, 1, generator=g) + 0.5, torch.rand(1, n, generator=g) + 0.5
            one = torch.ones(1)
            ref = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32) * sa * sb
            ref16 = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            real = torch._scaled_mm
            w["emulate_scaled_mm"](torch)
            emu = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32) * sa * sb
            emu16 = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            torch._scaled_mm = real
            worst = max(worst, ((ref - emu).abs() / ref.abs().clamp_min(1)).max().item(),
                        (ref16.float() - emu16.float()).abs().max().item())
        print(worst)
    """)
    out = subprocess.run([str(_python()), "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-5


def test_missing_vllm_environment_is_one_line_and_exit_2(tmp_path):
    """Before any model time: one line naming the missing environment and how to make it."""
    proc = _qeval("compare", "--base", "vllm:fp32", "--candidates", "vllm:fp8", "--limit", "2",
                  "--out", str(tmp_path / "run"), env={"QEVAL_VLLM_PYTHON": str(tmp_path / "nowhere" / "python")})
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "QEVAL_VLLM_PYTHON" in lines[0] and "scripts/setup.sh" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variant, needle", [
    ("vllm:int3", "unknown vLLM format"),
    ("vllm:fp32,dtype=bf16", "leave dtype out"),
    ("vllm:fp8,gpu_memory_utilization=1.5", "gpu_memory_utilization must be"),
    ("vllm:fp8,kv_cache_dtype=int2", "kv_cache_dtype must be"),
    ("vllm:gptq=/nonexistent/ckpt", "not a checkpoint directory"),
    ("vllm:ct", "vllm:ct=DIR"),
    ("vllm:fp8,bits=4", "unknown parameter"),
])
def test_bad_vllm_variants_are_refused_in_one_line(variant, needle):
    """Refused while parsing (before any model); the CLI prints QevalInputError as one line, exit 2
    (as the missing environment above shows)."""
    from qeval.errors import QevalInputError
    from qeval.run.config import parse_variant

    with pytest.raises(QevalInputError) as err:
        parse_variant(variant)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_quantized_vllm_variant_cannot_be_the_baseline(tmp_path):
    proc = _qeval("compare", "--base", "vllm:fp8", "--candidates", "vllm:fp32", "--limit", "2",
                  "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "vllm:fp32|fp16|bf16" in proc.stderr, proc.stderr


def test_plan_emits_the_vllm_serve_command_and_the_matching_candidate():
    proc = _qeval("plan", "--model", "llama-3-70b", "--format", "fp8", "--context", "8192", "--sequences", "16",
                  "--kv-dtype", "fp8", "--emit", "vllm")
    assert proc.returncode == 0, proc.stderr
    serve, candidate = proc.stdout.splitlines()[:2]
    assert serve.startswith("vllm serve ")
    for arg in ("--tensor-parallel-size 2", "--gpu-memory-utilization 0.85", "--max-model-len 8192",
                "--kv-cache-dtype fp8", "--quantization fp8", "--no-enable-log-requests"):
        assert arg in serve
    assert candidate.endswith("vllm:fp8,tensor_parallel_size=2,gpu_memory_utilization=0.85,max_model_len=8192,"
                              "kv_cache_dtype=fp8")
    # The JSON plan agrees: the same numbers.
    plan = json.loads(_qeval("plan", "--model", "llama-3-70b", "--format", "fp8", "--context", "8192",
                             "--sequences", "16", "--kv-dtype", "fp8", "--json").stdout)
    assert plan["tensor_parallel"] == 2 and f"{plan['gpu_memory_utilization']:.2f}" == "0.85"
