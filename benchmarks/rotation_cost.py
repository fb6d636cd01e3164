"""What rotated options cost: clinical_core's letter format scored plain, rotated one pass per
prompt, and rotated with each item's prompts sharing their common beginning, same process, same
model, interleaved, best of --repeats.

Scoring only (`score_items` on the requests `build_requests` made; loading and tokenising
excluded). The engines: transformers (qeval's HFFactory, fp32, the default model: the shared
beginning is the trunk of a tree-shaped attention mask) and, with --llamacpp, the default model's
own Q4_1 GGUF on llama.cpp (the shared beginning stays in the KV cache; each rotation's option
list continues from it).

    .venv/bin/python benchmarks/rotation_cost.py --limit 120 --repeats 2 --llamacpp \\
        --out benchmarks/results_rotation_cost.md

Writes numbers only (items, scorings, tokens, seconds, ratios), never item text.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qeval.engines.base import shared_prefix_jobs  # noqa: E402
from qeval.settings import resource_dir  # noqa: E402
from qeval.model_source import DEFAULT_MODEL, resolve_model  # noqa: E402
from qeval.kinds.choice import build_requests, score_items  # noqa: E402
from qeval.tasks.registry import TaskRegistry  # noqa: E402
from qeval.types import Method, Task, VariantSpec  # noqa: E402


def _tokens(requests, across: bool) -> int:
    return sum(len(j) for j in shared_prefix_jobs(requests, across_prompts=across))


def _time(task: Task, backend, repeats: int) -> tuple[float, list]:
    items = build_requests(task, backend.tokenize)
    best, records = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        records = score_items(task, items, backend)
        best = min(best, time.perf_counter() - t0)
    return best, records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=120, help="items of clinical_core (first N)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--llamacpp", action="store_true", help="also time the Q4_1 GGUF on llama.cpp")
    ap.add_argument("--out", type=Path, default=None)
    opts = ap.parse_args(argv)

    from qeval.engines.hf import HFFactory

    full = TaskRegistry([resource_dir("tasks")]).load("clinical_core")
    rotated = full.model_copy(update={"samples": full.samples[:opts.limit]})
    plain = rotated.model_copy(update={"spec": rotated.spec.model_copy(update={"rotations": "none"})})
    model = resolve_model(DEFAULT_MODEL)
    backend = HFFactory(model, device="cpu", batch_size=opts.batch_size).open(
        VariantSpec(name="fp32", method=Method.fp32), None)
    rows = []
    try:
        reqs_plain = [r for it in build_requests(plain, backend.tokenize) for r in it.requests]
        reqs_rot = [r for it in build_requests(rotated, backend.tokenize) for r in it.requests]
        _time(plain.model_copy(update={"samples": plain.samples[:8]}), backend, 1)  # warm-up
        t_plain, rec_plain = _time(plain, backend, opts.repeats)
        backend.across_prompts = False
        t_sep, rec_sep = _time(rotated, backend, opts.repeats)
        backend.across_prompts = True
        t_shared, rec_shared = _time(rotated, backend, opts.repeats)
        same = [a.rotation_predictions == b.rotation_predictions for a, b in zip(rec_sep, rec_shared)]
        diff = max(abs(x - y) for a, b in zip(rec_sep, rec_shared)
                   for x, y in zip(a.choice_scores, b.choice_scores))
        rows += [("transformers fp32", "plain", len(reqs_plain), _tokens(reqs_plain, False), t_plain),
                 ("transformers fp32", "rotated, a pass per prompt", len(reqs_rot), _tokens(reqs_rot, False), t_sep),
                 ("transformers fp32", "rotated, shared beginning", len(reqs_rot), _tokens(reqs_rot, True), t_shared)]
        agreement = (f"rotated scoring, shared beginning vs a pass per prompt: same pick under every "
                     f"rotation on {sum(same)}/{len(same)} items, max |Δ choice score| {diff:.1e}")
    finally:
        backend.close()
    if opts.llamacpp:
        from qeval.engines.llamacpp import LlamaCppBackend
        from qeval.run.config import parse_variant

        from qeval.model_source import ALIASES, alias_gguf_path

        gguf = alias_gguf_path(ALIASES[DEFAULT_MODEL])
        lc = LlamaCppBackend(model, parse_variant(f"gguf={gguf}"),
                             cache=Path(os.environ.get("QEVAL_CACHE", "/tmp")) / "rotation-bench")
        try:
            reqs_plain = [r for it in build_requests(plain, lc.tokenize) for r in it.requests]
            reqs_rot = [r for it in build_requests(rotated, lc.tokenize) for r in it.requests]
            t_plain, _ = _time(plain, lc, opts.repeats)
            lc.across_prompts = False
            t_rot, rec_sep = _time(rotated, lc, opts.repeats)
            lc.across_prompts = True
            t_shared, rec_shared = _time(rotated, lc, opts.repeats)
            same_lc = sum(a.rotation_predictions == b.rotation_predictions for a, b in zip(rec_sep, rec_shared))
            rows += [("llama.cpp Q4_1", "plain", len(reqs_plain), _tokens(reqs_plain, False), t_plain),
                     ("llama.cpp Q4_1", "rotated, a pass per prompt", len(reqs_rot), _tokens(reqs_rot, False), t_rot),
                     ("llama.cpp Q4_1", "rotated, shared beginning", len(reqs_rot), _tokens(reqs_rot, True), t_shared)]
            agreement += (f"; llama.cpp: same pick under every rotation on {same_lc}/{len(rec_sep)} items "
                          "(its quantized kernels round a continued batch differently from one long one)")
        finally:
            lc.close()
    lines = [f"# Rotated options: cost ({dt.date.today().isoformat()})", "",
             f"clinical_core letter format, first {opts.limit} items ({len(rotated.samples)} scored), "
             f"batch size {opts.batch_size}, best of {opts.repeats}, 2-core CPU; scoring only.", "",
             "| engine | scoring | requests | tokens through the model | seconds | × plain |",
             "|---|---|---|---|---|---|"]
    base = {}
    for engine, how, n_req, n_tok, secs in rows:
        base.setdefault(engine, secs)
        lines.append(f"| {engine} | {how} | {n_req} | {n_tok} | {secs:.1f} | {secs / base[engine]:.2f} |")
    lines += ["", agreement, ""]
    text = "\n".join(lines)
    print(text)
    if opts.out:
        opts.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
