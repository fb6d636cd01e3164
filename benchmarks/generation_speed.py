"""Greedy generation speed of the engines on the default model, on clinical_core_cot prompts.

Tokens per second of generated output (prompt processing included in the time, as a user
waits for it) for: transformers fp32 one sequence at a time, transformers fp32 batched (left
padding, KV cache), and llama.cpp on GGUF files made from the same weights. Also checks that the
engines agree: llama.cpp's F32 GGUF should produce the transformers baseline's greedy text.

    .venv/bin/python benchmarks/generation_speed.py [--items 4] [--max-tokens 64] [--batch 4]
                                                    [--gguf f32,q8_0] [--threads 1]

`--threads` sets both torch's and llama.cpp's CPU threads. On a CPU shared with other busy
processes, one thread was 7-10x faster than two for both engines here (their worker threads spin
at barriers and lose whole scheduler slices when the cores are oversubscribed).
"""

from __future__ import annotations

import argparse
import time

from qeval.engines.base import GenerationRequest
from qeval.run.factory import EngineFactory
from qeval.run.config import parse_variant
from qeval.settings import resource_dir
from qeval.kinds.generate import build_generation_items
from qeval.model_source import resolve_model
from qeval.settings import cache_dir
from qeval.tasks.registry import TaskRegistry, first_n


def timed(backend, requests):
    start = time.perf_counter()
    results = backend.generate(requests)
    seconds = time.perf_counter() - start
    return results, seconds, sum(r.n_tokens for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gguf", default="f32,q8_0")
    ap.add_argument("--threads", type=int, default=0, help="0: each engine's default")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    task = first_n(TaskRegistry([resource_dir("tasks")]).load("clinical_core_cot"), args.items)
    model = resolve_model("smollm2-135m")
    factory = EngineFactory(model, device="cpu", batch_size=args.batch, cache=cache_dir())
    rows, outputs = [], {}
    base = factory.open(parse_variant("fp32"), None)
    items = build_generation_items(task, base.tokenize)
    requests = [GenerationRequest(it.request.prompt, args.max_tokens, it.request.stop, it.sample.id)
                for it in items]
    for batch in (1, args.batch):
        base.batch_size = batch
        results, seconds, tokens = timed(base, requests)
        rows.append((f"transformers fp32, batch {batch}", tokens, seconds))
        outputs[f"hf{batch}"] = results
    base.close()
    for qtype in filter(None, args.gguf.split(",")):
        threads = f",threads={args.threads}" if args.threads else ""
        backend = factory.open(parse_variant(f"gguf:{qtype}{threads}"), "float32")
        results, seconds, tokens = timed(backend, requests)
        rows.append((f"llama.cpp {qtype} ({backend.info.kernel.split('; ')[-1].rstrip(')')})", tokens, seconds))
        outputs[qtype] = results
        backend.close()
    prompt_tokens = sum(len(r.prompt) for r in requests)
    print(f"{len(requests)} clinical_core_cot prompts ({prompt_tokens} prompt tokens), up to "
          f"{args.max_tokens} generated tokens each\n")
    print("| engine | generated tokens | seconds | tokens/s |\n|---|---|---|---|")
    for name, tokens, seconds in rows:
        print(f"| {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} |")
    ref = outputs["hf1"]
    for key, results in outputs.items():
        same = sum(a.text == b.text for a, b in zip(ref, results))
        print(f"{key}: {same}/{len(ref)} outputs identical to transformers fp32 batch 1")


if __name__ == "__main__":
    main()
