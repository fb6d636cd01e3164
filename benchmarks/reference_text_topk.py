"""How much KL does keeping the baseline as top-k + tail miss, against exact full-vocabulary KL?

On the default model (SmolLM2-135M-Instruct) and the built-in clinical_reference passages: the
fp32 baseline (transformers) and GGUF candidates (llama.cpp) both produce full next-token
distributions here; exact KL(baseline ‖ candidate) is summed over all 49,152 tokens and compared
with qeval's binned KL for several k. Also prints the memory per position that each k needs
against keeping the whole distribution (the peer: llama.cpp's --kl-divergence-base file, which
stores the full logits).

    .venv/bin/python benchmarks/reference_text_topk.py [--candidates q4_k_m,q2_k] [--passages 36]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qeval.kinds import reference_text as rt
from qeval.run.factory import EngineFactory
from qeval.run.config import parse_variant
from qeval.settings import resource_dir
from qeval.model_source import resolve_model
from qeval.settings import cache_dir
from qeval.tasks.registry import load_task

KS = (8, 16, 32, 64, 128, 256)


class _Fixed:
    def __init__(self, lp):
        self.lp = lp

    def token_logprobs(self, tokens):
        return self.lp


def exact_kl(base: np.ndarray, cand: np.ndarray) -> np.ndarray:
    out = np.empty(base.shape[0])
    for s in range(0, base.shape[0], 256):
        b = base[s:s + 256].astype(np.float64)
        c = cand[s:s + 256].astype(np.float64)
        out[s:s + 256] = (np.exp(b) * (b - c)).sum(axis=1)
    return np.maximum(out, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", default="q4_k_m,q2_k")
    ap.add_argument("--passages", type=int, default=36)
    args = ap.parse_args()
    model = resolve_model("smollm2-135m")
    task = load_task(resource_dir("tasks") / "clinical_reference" / "clinical_reference.yaml")
    factory = EngineFactory(model, device="cpu", cache=cache_dir())
    base = factory.open(parse_variant("fp32"), None)
    passages = rt.tokenize_passages(task.spec, task.passages[: args.passages], base.tokenize)
    t0 = time.perf_counter()
    base_lp = {p.id: [base.token_logprobs(w) for w in p.windows] for p in passages}
    base_s = time.perf_counter() - t0
    base.close()
    vocab = next(iter(base_lp.values()))[0].shape[1]
    n_tok = sum(p.n_scored for p in passages)
    print(f"{len(passages)} passages, {n_tok} scored tokens, vocabulary {vocab}; baseline {base_s:.0f} s")
    print()
    print("| candidate | k | exact KL mean | binned KL mean | missed (relative) | max per-token miss | "
          "per-passage mean: max relative miss | bytes/position | vs full distribution |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.candidates.split(","):
        cand = factory.open(parse_variant(f"gguf:{name}"), None)
        exact_all, binned_all = [], {k: [] for k in KS}
        per_passage = {k: [] for k in KS}
        for p in passages:
            e_p, b_p = [], {k: [] for k in KS}
            for w, lp_b in zip(p.windows, base_lp[p.id]):
                lp_c = cand.token_logprobs(w)
                e_p.append(exact_kl(lp_b, lp_c))
                for k in KS:
                    dist = rt.baseline_distributions(_Fixed(lp_b), [rt.PassageTokens(
                        "x", "", None, (w,), "")], k)["x"][0]
                    b_p[k].append(rt.binned_kl(dist, lp_c))
            e = np.concatenate(e_p)
            exact_all.append(e)
            for k in KS:
                b = np.concatenate(b_p[k])
                binned_all[k].append(b)
                per_passage[k].append(1 - b.mean() / e.mean())
        cand.close()
        e = np.concatenate(exact_all)
        for k in KS:
            b = np.concatenate(binned_all[k])
            assert np.all(b <= e + 1e-6), "binned KL exceeded exact KL"
            per_pos = k * (4 + 4) + 8 + 8  # ids int32 + log-probs float32, tail and reference float64
            print(f"| gguf:{name} | {k} | {e.mean():.5f} | {b.mean():.5f} | {100 * (1 - b.mean() / e.mean()):.2f}% | "
                  f"{(e - b).max():.2e} | {100 * max(per_passage[k]):.2f}% | {per_pos} | "
                  f"{per_pos / (4 * vocab):.4f}× |")


if __name__ == "__main__":
    main()
