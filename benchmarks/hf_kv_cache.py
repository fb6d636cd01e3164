"""`+kv=int8|int4` on transformers: qeval's append-only quantized cache vs transformers' own.

qeval scores through transformers' QuantizedCache (HQQ backend, min-max, per-token groups) but
with append-only layers (qeval/engines/hf_kv.py): each 64-token chunk is quantized once, when it
is written. The peer is transformers' own QuantizedCache layer with the same settings
(residual_length 1, the same min-max quantizer and groups), which re-quantizes the whole cache at
every chunk. Both feed the first N tokens of a clinical_long_context record (the project's own
synthetic text) through SmolLM2-135M in float32, in chunks of 64, and are timed in the same run;
a full-precision DynamicCache is the floor. Also printed: the mean per-token KL between the two
quantized caches' next-token distributions (the second rounding of transformers' layer) and each
one's KL from the full-precision cache. Nothing from the text is printed or written.

    .venv/bin/python benchmarks/hf_kv_cache.py [--tokens 512,1024,2048] [--dtype int4]
"""

from __future__ import annotations

import argparse
import time

import torch

from qeval.engines import hf_kv
from qeval.model_source import resolve_model
from qeval.run.config import parse_variant
from qeval.run.factory import EngineFactory
from qeval.settings import cache_dir, resource_dir
from qeval.tasks.registry import load_task


def transformers_cache(config, dtype: str):
    """The peer: transformers' QuantizedCache as it comes, with qeval's settings and quantizer."""
    from transformers import QuantizedCache

    cache = QuantizedCache(hf_kv.BACKEND, config, nbits=hf_kv.NBITS[dtype], axis_key=hf_kv.AXIS,
                           axis_value=hf_kv.AXIS, q_group_size=hf_kv.group_size(config, dtype),
                           residual_length=1)
    for layer in cache.layers:
        layer.quantizer = hf_kv._MinMax
    return cache


def feed(model, ids: torch.Tensor, cache) -> tuple[torch.Tensor, float]:
    """Log-probs of every position, fed in chunks of hf_kv.CHUNK; seconds."""
    out = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, ids.shape[1], hf_kv.CHUNK):
            logits = model(input_ids=ids[:, s:s + hf_kv.CHUNK], past_key_values=cache, use_cache=True).logits[0]
            out.append(torch.log_softmax(logits.float(), dim=-1))
    return torch.cat(out), time.perf_counter() - t0


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p.exp() * (p - q)).sum(-1).clamp_min(0).mean())


def main() -> None:
    from transformers import DynamicCache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="512,1024,2048")
    ap.add_argument("--dtype", default="int4", choices=hf_kv.DTYPES)
    args = ap.parse_args()
    torch.manual_seed(0)
    factory = EngineFactory(resolve_model("smollm2-135m"), device="cpu", cache=cache_dir())
    backend = factory.open(parse_variant("fp32"), None)
    model, config = backend.model, backend.model.config
    task = load_task(resource_dir("tasks") / "clinical_long_context" / "clinical_long_context.yaml")
    ids = torch.tensor([backend.tokenize(task.passages[0].text)])
    print(f"SmolLM2-135M float32, {torch.get_num_threads()} threads, +kv={args.dtype}, chunks of {hf_kv.CHUNK}")
    print("| tokens | full-precision cache s | qeval append-only s | transformers QuantizedCache s | "
          "transformers / qeval | KL qeval vs full | KL transformers vs full | KL qeval vs transformers |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.tokens.split(",")):
        part = ids[:, :n]
        full, t_full = feed(model, part, DynamicCache(config=config))
        ours, t_ours = feed(model, part, hf_kv.new_cache(config, args.dtype))
        peer, t_peer = feed(model, part, transformers_cache(config, args.dtype))
        print(f"| {part.shape[1]} | {t_full:.1f} | {t_ours:.1f} | {t_peer:.1f} | {t_peer / t_ours:.2f} | "
              f"{kl(full, ours):.2e} | {kl(full, peer):.2e} | {kl(peer, ours):.2e} |", flush=True)
    backend.close()


if __name__ == "__main__":
    main()
