"""vLLM against transformers on the embedded model, 2 CPU cores: three compares, one table.

1. `--base fp32 --candidates vllm:fp32,bf16,vllm:bf16`: both engines in one run (same items,
   same process, same machine); reference-text KLD of each engine's fp32/bf16 against
   transformers' fp32, and each variant's scoring speed (reference-text tokens per second from
   timings.json; prefill tokens/s from the speed probe, efficiency.json).
2. `--base vllm:fp32 --candidates vllm:fp8,vllm:gptq,...`: the verdicts on vLLM alone.
3. `--base fp32 --candidates gptq:...,vllm:gptq,...`: the same GPTQ artefact on gptqmodel's
   transformers kernel and on vLLM's; the difference of their KLDs is the kernels' difference.

    python benchmarks/vllm_engines.py --limit 20 --out /tmp/vllm-bench   # runs the compares
    python benchmarks/vllm_engines.py --out /tmp/vllm-bench --table       # the table only

Writes benchmarks/results_vllm_engines.md (numbers only)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

GPTQ = "samples=8,seqlen=128,calib=generic"
SMALL = ["--tasks", "clinical_core,clinical_reference", "--limit", "12"]
RUNS = {  # the first on the default suite (--limit), the other two smaller (2 cores)
    "engines": ["--base", "fp32", "--candidates", "vllm:fp32,bf16,vllm:bf16"],
    "onvllm": ["--base", "vllm:fp32", "--candidates", f"vllm:fp8,vllm:gptq,{GPTQ}", *SMALL],
    "gptq-kernels": ["--base", "fp32", "--candidates", f"gptq:{GPTQ},vllm:gptq,{GPTQ}", "--no-efficiency", *SMALL],
}


def run(out: Path, limit: int) -> None:
    for name, args in RUNS.items():
        limited = args if "--limit" in args else [*args, "--limit", str(limit)]
        subprocess.run([sys.executable, "-m", "qeval.cli", "compare", *limited, "--out", str(out / name)], check=False)


def _load(run_dir: Path) -> tuple[dict, dict, dict]:
    results = json.loads((run_dir / "results.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    eff_file = run_dir / "efficiency.json"
    eff = json.loads(eff_file.read_text()) if eff_file.is_file() else {}
    return results, timings, eff


def _engine(results: dict, variant: str) -> dict:
    return next(v for v in [results["baseline"], *results["candidates"]] if v["variant"] == variant)


def _text(results: dict, candidate: str) -> dict | None:
    return next((c for c in results["comparisons"] if c["kind"] == "reference_text" and c["candidate"] == candidate), None)


def _prefill(eff: dict, variant: str) -> str:
    for row in eff.get("variants", eff.get("rows", [])):
        if row.get("variant") == variant:
            points = row.get("speed") or row.get("speed_points") or []
            best = [p.get("prefill_tok_s") for p in points if p.get("prefill_tok_s")]
            return f"{max(best):.0f}" if best else "–"
    return "–"


def table(out: Path) -> str:
    lines = ["# vLLM against transformers (embedded SmolLM2-135M, 2 CPU cores)", "",
             f"Made by `benchmarks/vllm_engines.py` from the run directories in {out.name}/.", ""]
    if not (out / "engines" / "results.json").is_file():
        lines += ["(engines run not made)", ""]
    else:
        lines += _engines_rows(out)
    lines += _rest(out)
    return "\n".join(lines) + "\n"


def _engines_rows(out: Path) -> list[str]:
    lines: list[str] = []
    results, timings, eff = _load(out / "engines")
    n_tok = {}
    lines += ["| engine | dtype | reference text tokens/s | prefill tokens/s (probe) | token KLD vs transformers fp32 | same top-1 | verdict vs transformers fp32 |",
              "|---|---|---|---|---|---|---|"]
    task_s = timings.get("task_s", {})
    present = {v["variant"] for v in [results["baseline"], *results["candidates"]]}
    n_tok = {c["candidate"]: c["n_tokens"] for c in results["comparisons"] if c["kind"] == "reference_text"}
    for variant in [v for v in ["fp32", "vllm:fp32", "bf16", "vllm:bf16"] if v in present]:
        info = _engine(results, variant)
        text = _text(results, variant)
        if text:
            n_tok[variant] = text["n_tokens"]
        tokens = next(iter(n_tok.values()), None)
        secs = task_s.get(variant, {}).get("clinical_reference")
        speed = f"{tokens / secs:.0f}" if tokens and secs else "–"
        kld = f"{text['kld_mean']['estimate']:.2e}" if text else "(baseline)"
        top = f"{text['same_top']['estimate']:.4f}" if text else "–"
        verdict = results["per_candidate"].get(variant, "(baseline)")
        lines.append(f"| {info['backend']} | {info['compute_dtype']} | {speed} | {_prefill(eff, variant)} | {kld} | {top} | {verdict} |")
    return lines


def _section(out: Path, run: str, title: str, columns: list[str], row) -> list[str]:
    """A table of one run's candidates (`row(results, candidate, text comparison)` → cells), or
    "(not run)" when its run directory is missing."""
    lines = ["", f"## {title}", ""]
    if not (out / run / "results.json").is_file():
        return [*lines, "(not run)"]
    results, _, _ = _load(out / run)
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for cand in results["candidates"]:
        cells = [cand["variant"], cand["kernel"], *row(results, cand, _text(results, cand["variant"])),
                 results["per_candidate"][cand["variant"]]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _floor_kld(text: dict) -> str:
    floor = text.get("engine_floor")
    return f"{floor['kld_mean']['estimate']:.2e}" if isinstance(floor, dict) and "kld_mean" in floor else str(floor)


def _rest(out: Path) -> list[str]:
    return [
        *_section(out, "onvllm", "On vLLM alone: `--base vllm:fp32`",
                  ["candidate", "kernel", "token KLD", "engine floor KLD", "verdict"],
                  lambda results, cand, text: [f"{text['kld_mean']['estimate']:.2e}", _floor_kld(text)]),
        *_section(out, "gptq-kernels", "One GPTQ artefact, two engines' kernels (`--base fp32`, transformers)",
                  ["candidate", "kernel", "token KLD vs fp32", "same top-1", "verdict"],
                  lambda results, cand, text: [f"{text['kld_mean']['estimate']:.4f}",
                                               f"{text['same_top']['estimate']:.4f}"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--table", action="store_true", help="only write the table from existing runs")
    args = ap.parse_args()
    if not args.table:
        run(args.out, args.limit)
    text = table(args.out)
    (Path(__file__).parent / "results_vllm_engines.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
