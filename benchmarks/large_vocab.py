"""Reference-text scoring at a large vocabulary: where time and memory go, on both engines.

A tiny random Llama with Gemma-3's vocabulary (262,144 tokens) and hidden size (640) — built
here from a config, with a synthetic byte-level BPE tokenizer of exactly that many tokens, and
exported to an F32 GGUF by qeval's exporter — scores the first passages of
tasks/clinical_reference the way a compare does: the baseline's bounded distributions
(`baseline_distributions`: top-k + tail mass), then a candidate's records against them
(`score_passages`, here the same model on the same engine).

Each engine runs in a child process of its own, so its peak resident memory is its own. Per
engine: tokens/s of the baseline pass and of the candidate pass, the forward ceiling (a bare
pass over the same windows producing the logits of every scored position: `model(input_ids)` on
transformers, a decode with every position's logits on llama.cpp, nothing reduced), resident
memory after loading and at its peak, and the numbers produced (saved, to compare two versions
of qeval: `--compare OTHER.npz`).

Imported by bench_scoring.py (`--large-vocab`); runnable alone:

    PYTHONPATH=. .venv/bin/python benchmarks/large_vocab.py --work /tmp/lv --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 262_144  # Gemma-3's
HIDDEN = 640  # Gemma-3-270M's
SHAPE = dict(hidden_size=HIDDEN, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=1, max_position_embeddings=4096)
TOP_K = 256


def synthetic_tokenizer(path: Path, vocab: int = VOCAB):
    """A byte-level BPE of exactly `vocab` tokens: <|endoftext|>, the 256 byte symbols, every
    pair of them, then pairs followed by a byte, merged in that order (no training corpus
    reaches 262k tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    table = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    merges = []

    def add(a: str, b: str) -> bool:
        if len(table) >= vocab:
            return False
        table[a + b] = len(table)
        merges.append((a, b))
        return True

    pairs = [a + b for a in alphabet for b in alphabet]
    for a in alphabet:
        for b in alphabet:
            add(a, b)
    for p in pairs:
        if not all(add(p, b) for b in alphabet):
            break
    tok = Tokenizer(models.BPE(vocab=table, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(path)
    assert len(fast) == vocab, len(fast)
    return fast


def build(work: Path) -> tuple[Path, Path]:
    """The checkpoint and its F32 GGUF, made once under `work`."""
    ckpt, gguf_file = work / "ckpt", work / "model-f32.gguf"
    if gguf_file.is_file():
        return ckpt, gguf_file
    import torch
    import transformers

    from qeval.quantize.gguf import export_gguf

    synthetic_tokenizer(ckpt)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, tie_word_embeddings=True, rms_norm_eps=1e-6,
                                   eos_token_id=0, bos_token_id=0, **SHAPE)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(ckpt)
    export_gguf(ckpt, gguf_file, dtype="f32", pre="gpt-2")
    return ckpt, gguf_file


def rss() -> tuple[int, int]:
    """(resident now, peak resident) of this process, bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def passages(tokenize, n: int):
    from qeval.kinds import reference_text as rt
    from qeval.settings import resource_dir
    from qeval.tasks.registry import load_task

    task = load_task(resource_dir("tasks") / "clinical_reference" / "clinical_reference.yaml")
    return task, rt.tokenize_passages(task.spec, task.passages[:n], tokenize)


def _ceiling_hf(backend, windows) -> float:
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        for w in windows:
            backend.model(input_ids=torch.tensor([list(w)])).logits
        return time.perf_counter() - t0


def _ceiling_llamacpp(backend, windows) -> float:
    """llama.cpp's own decode of each window, every position's logits produced, none read."""
    llm = backend.llm
    t0 = time.perf_counter()
    for w in windows:
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        for i in range(0, len(w) - 1, llm.n_batch):
            batch = list(w[i:min(i + llm.n_batch, len(w) - 1)])
            llm._batch.set_batch(batch=batch, n_past=llm.n_tokens, logits_all=True)
            llm._ctx.decode(llm._batch)
            llm.n_tokens += len(batch)
    return time.perf_counter() - t0


def worker(engine: str, work: Path, n_passages: int, out: Path, repeats: int = 1) -> None:
    """One engine in this process: time the baseline and candidate passes and the ceiling,
    record memory, save the numbers produced."""
    import numpy as np
    import torch

    from qeval.kinds import reference_text as rt
    from qeval.run.config import parse_variant
    from qeval.model_source import resolve_model

    torch.manual_seed(0)
    ckpt, gguf_file = build(work)
    model = resolve_model(str(ckpt))
    before_load = rss()[0]
    if engine == "hf":
        from qeval.engines.hf import HFFactory

        backend = HFFactory(model, device="cpu", batch_size=8).open(parse_variant("fp32"), None)
        ceiling = _ceiling_hf
    else:
        from qeval.engines.llamacpp import LlamaCppBackend

        backend = LlamaCppBackend(model, parse_variant(f"gguf={gguf_file}"), cache=work / "cache")
        ceiling = _ceiling_llamacpp
    loaded = rss()[0]
    task, tokens = passages(backend.tokenize, n_passages)
    windows = [w for p in tokens for w in p.windows]
    scored = sum(p.n_scored for p in tokens)
    ceiling(backend, windows[:1])  # warm-up
    # Window by window, the ceiling and both passes back to back (the best of the repeats per
    # window): on a shared machine the load changes by the minute, and so would a ratio of
    # passes timed minutes apart.
    t_base, t_cand, t_ceil = ({}, {}, {})
    dists, records = {}, {}
    for _ in range(repeats):
        for p in tokens:
            for n, w in enumerate(p.windows):
                one = rt.PassageTokens(f"{p.id}#{n}", p.category, p.cluster, (w,), p.prompt_hash)
                key = one.id
                t_ceil[key] = min(t_ceil.get(key, float("inf")), ceiling(backend, [w]))
                t0 = time.perf_counter()
                dists.update(rt.baseline_distributions(backend, [one], TOP_K))
                t_base[key] = min(t_base.get(key, float("inf")), time.perf_counter() - t0)
                t0 = time.perf_counter()
                records[key] = rt.score_passages(task.spec.id, [one], dists, backend)[0]
                t_cand[key] = min(t_cand.get(key, float("inf")), time.perf_counter() - t0)
    t_base, t_cand, t_ceil = (sum(t.values()) for t in (t_base, t_cand, t_ceil))
    records = list(records.values())
    peak = rss()[1]
    arrays = {}
    for pid, ds in dists.items():
        for w, d in enumerate(ds):
            for field in ("top_ids", "top_logprobs", "tail_mass", "reference_logprob"):
                arrays[f"{pid}.{w}.{field}"] = np.asarray(getattr(d, field))
    for r in records:
        arrays[f"{r.sample_id}.kl"] = np.asarray(r.kl)
        arrays[f"{r.sample_id}.nll"] = np.asarray([r.nll_baseline, r.nll_candidate, r.same_top])
    np.savez(out.with_suffix(".npz"), **arrays)
    out.write_text(json.dumps({
        "engine": engine, "tokens": scored, "windows": len(windows), "vocab": VOCAB,
        "baseline_s": t_base, "candidate_s": t_cand, "ceiling_s": t_ceil,
        "baseline_tok_s": scored / t_base, "candidate_tok_s": scored / t_cand,
        "ceiling_tok_s": scored / t_ceil, "rss_before_load": before_load, "rss_loaded": loaded,
        "rss_peak": peak, "torch_threads": torch.get_num_threads(),
        "qeval": str(Path(rt.__file__).resolve().parent.parent),
    }, indent=1))


def run(work: Path, n_passages: int, label: str, engines=("hf", "llamacpp"), repeats: int = 1) -> list[dict]:
    """Each engine in a child process (this file, `--worker`), with qeval as found on
    PYTHONPATH; returns their results."""
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for engine in engines:
        result = work / f"{label}-{engine}.json"
        subprocess.run([sys.executable, __file__, "--worker", engine, "--work", str(work),
                        "--passages", str(n_passages), "--repeats", str(repeats), "--out", str(result)],
                       check=True)
        out.append(json.loads(result.read_text()))
    return out


def differences(a: Path, b: Path) -> dict[str, float]:
    """Largest |difference| per kind of number between two saved runs (top-k ids: share equal)."""
    import numpy as np

    x, y = np.load(a), np.load(b)
    worst: dict[str, float] = {}
    for key in x.files:
        kind = key.rsplit(".", 1)[-1]
        if kind == "top_ids":
            worst["top_ids_equal_share"] = min(worst.get("top_ids_equal_share", 1.0),
                                               float((x[key] == y[key]).mean()))
            continue
        d = float(np.max(np.abs(x[key].astype(np.float64) - y[key].astype(np.float64)), initial=0.0))
        worst[kind] = max(worst.get(kind, 0.0), d)
    return worst


NOTES = """\
*baseline*: `baseline_distributions` (top-k ids and log-probs, tail mass, the reference token's
log-prob, every position); *candidate*: `score_passages` against them (log-probs at the
baseline's top-k ids, tail mass, top token, reference log-prob). *ceiling*: the same windows
through the engine with every scored position's logits produced and nothing reduced
(transformers: `model(input_ids)`; llama.cpp: a decode with every position's logits, n_batch at a
time). *RSS*: the engine's process, after loading and at its peak (VmHWM). Timings on a shared
machine vary; compare numbers of one run only."""


def table(rows: list[dict]) -> list[str]:
    lines = ["| engine | tokens | baseline tok/s | candidate tok/s | ceiling tok/s | baseline / ceiling | "
             "candidate / ceiling | RSS loaded MiB | RSS peak MiB | peak − loaded MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['tokens']} | {r['baseline_tok_s']:.0f} | {r['candidate_tok_s']:.0f} | "
            f"{r['ceiling_tok_s']:.0f} | {r['baseline_tok_s'] / r['ceiling_tok_s']:.0%} | "
            f"{r['candidate_tok_s'] / r['ceiling_tok_s']:.0%} | {r['rss_loaded'] / 2**20:.0f} | "
            f"{r['rss_peak'] / 2**20:.0f} | {(r['rss_peak'] - r['rss_loaded']) / 2**20:.0f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/qeval-large-vocab"))
    p.add_argument("--passages", type=int, default=1, help="first N clinical_reference passages")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per engine; the best counts")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--label", default="run")
    p.add_argument("--engines", default="hf,llamacpp")
    p.add_argument("--worker", choices=("hf", "llamacpp"), default=None)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker, a.work, a.passages, a.out, a.repeats)
        return 0
    rows = run(a.work, a.passages, a.label, tuple(a.engines.split(",")), a.repeats)
    print("\n".join(table(rows)))
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
