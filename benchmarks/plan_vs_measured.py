"""`qeval plan`'s weight-memory prediction against what each variant of a real model holds.

For every variant: the planner's weight bytes for that format (from the model's config.json), the
resident weight bytes the loaded backend reports (its tensors, quantization scales included), and
for GGUF files the file size. Prints a markdown table and writes it to
benchmarks/results_plan_vs_measured.md.

    .venv/bin/python benchmarks/plan_vs_measured.py [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qeval.run.factory import EngineFactory
from qeval.run.config import parse_variant
from qeval.model_source import resolve_model
from qeval.settings import cache_dir
from qeval.vram import load_shape, plan

# qeval variant → the planner's format for it
VARIANTS = {"fp32": "fp32", "bf16": "bf16", "int8": "int8", "int8wo": "int8", "nf4": "nf4",
            "gguf:q8_0": "gguf:q8_0", "gguf:q4_k_m": "gguf:q4_k_m"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    resolved = resolve_model(args.model)
    shape = load_shape(args.model)
    # strict dtype: a bf16 variant holds bf16 weights even on a CPU
    factory = EngineFactory(resolved, device="cpu", strict_dtype=True, cache=cache_dir())
    rows = []
    for name in args.variants.split(","):
        variant = parse_variant(name)
        predicted = plan(shape, fmt=VARIANTS[name], context=1, gpu="T4").lines[0].bytes
        t0 = time.perf_counter()
        backend = factory.open(variant, "float32")
        load_s = time.perf_counter() - t0
        info = backend.info
        file_bytes = None
        if variant.method == "gguf":
            gguf = next(iter(sorted(cache_dir().glob(f"gguf/*/{variant.params['type']}.gguf"))), None)
            file_bytes = gguf.stat().st_size if gguf else None
        backend.close()
        measured = file_bytes if file_bytes is not None else info.weight_bytes
        rows.append((name, VARIANTS[name], predicted, info.weight_bytes, file_bytes, measured / predicted,
                     info.kernel.split(";")[0], load_s))
        print(rows[-1], flush=True)
    lines = [f"# Planner weight bytes vs measured ({args.model}, CPU)", "",
             "Measured: resident weight bytes the backend reports (tensors + quantization scales), or the "
             "GGUF file size for llama.cpp variants. Ratio = measured / predicted.", "",
             "| variant | plan format | predicted MiB | resident MiB | GGUF file MiB | ratio | kernel | load s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, fmt, pred, res, fb, ratio, kernel, load_s in rows:
        lines.append(f"| {name} | {fmt} | {pred / 2**20:.1f} | {res / 2**20:.1f} | "
                     f"{fb / 2**20:.1f} |" if fb else f"| {name} | {fmt} | {pred / 2**20:.1f} | {res / 2**20:.1f} | – |")
        lines[-1] += f" {ratio:.3f} | {kernel} | {load_s:.1f} |"
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).with_name("results_plan_vs_measured.md").write_text(text)
    print(json.dumps({"model": args.model, "shape": shape.model_dump()}))


if __name__ == "__main__":
    main()
