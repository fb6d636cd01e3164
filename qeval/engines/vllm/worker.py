"""qeval's vLLM worker: run by the Python of vLLM's own virtual environment (`.venv-vllm`), never
imported by qeval. It loads one model into an in-process vLLM engine and answers the parent over
its stdin/stdout (qeval/engines/vllm/protocol.py): token ids in, log-probs and logits out. It
holds no tokenizer (`skip_tokenizer_init`), so no text exists here; it logs nothing of a request.

Prompt logits: vLLM computes the logits of every prompt position when a request asks for prompt
log-probs, and its `compute_logits` is wrapped to keep them (the rows are checked against the
log-probs vLLM itself returns for the same request, so a runner that calls it differently fails
loudly instead of scoring the wrong rows). Scores are then log-softmax over those logits.

It dies with its parent: PR_SET_PDEATHSIG, and end of input on stdin."""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def _load_protocol():
    """This folder's protocol.py (the parent's own), loaded by path: the folder is not put on
    sys.path, so nothing here can shadow a module vLLM imports."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)
    spec = importlib.util.spec_from_file_location("qeval_vllm_protocol", os.path.join(here, "protocol.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load_protocol()

CHUNK_BYTES = 64 << 20  # logits travel in messages of at most this size


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        sys.exit(0)


class Engine:
    def __init__(self, settings: dict):
        import torch
        from vllm import LLM

        self.torch = torch
        kwargs = dict(
            model=settings["model"], dtype=settings["dtype"], skip_tokenizer_init=True, seed=0,
            enable_prefix_caching=bool(settings.get("enable_prefix_caching", True)),
            enforce_eager=bool(settings.get("enforce_eager", False)),
            tensor_parallel_size=int(settings.get("tensor_parallel_size", 1)),
            pipeline_parallel_size=int(settings.get("pipeline_parallel_size", 1)),
            disable_log_stats=True, max_logprobs=1, logprobs_mode="raw_logprobs",
        )
        for key in ("quantization", "max_model_len", "kv_cache_dtype", "gpu_memory_utilization"):
            if settings.get(key) is not None:
                kwargs[key] = settings[key]
        if kwargs["tensor_parallel_size"] * kwargs["pipeline_parallel_size"] == 1:
            kwargs["distributed_executor_backend"] = "uni"
        if settings.get("emulate_fp8_matmul"):
            emulate_scaled_mm(torch)
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.load_s = time.perf_counter() - t0
        self.prefix_caching = kwargs["enable_prefix_caching"]
        self.llm.apply_model(_install_capture)

    def describe(self) -> dict:
        import vllm

        cfg = self.llm.llm_engine.vllm_config
        layers, weight_bytes = self.llm.apply_model(_kernels)[0]
        platform = vllm.platforms.current_platform
        return {
            "vllm": getattr(vllm, "__version__", "unknown"), "torch": self.torch.__version__,
            "device": str(platform.device_type), "device_name": _device_name(self.torch, platform),
            "quantization": cfg.model_config.quantization, "dtype": str(cfg.model_config.dtype).replace("torch.", ""),
            "kv_cache_dtype": str(cfg.cache_config.cache_dtype), "max_model_len": int(cfg.model_config.max_model_len),
            "vocab": int(cfg.model_config.get_vocab_size()), "layers": layers, "weight_bytes": weight_bytes, "load_seconds": self.load_s,
            "model_runner": "v2" if getattr(cfg, "use_v2_model_runner", False) else "v1",
            "block_size": int(cfg.cache_config.block_size or 0),
        }

    # ---- prompt logits

    def _prompt_logits(self, seqs: list[list[int]], first_rows: list[int]):
        """Per sequence, in turn, float32 logits of the rows first_row .. len−2 (row r predicts
        token r+1): one sequence's captured logits alive at a time."""
        for seq, first in zip(seqs, first_rows):
            yield self._rows_of(seq, first)

    def _rows_of(self, seq: list[int], first: int) -> np.ndarray:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        for skip_cache in ((False, True) if self.prefix_caching else (True,)):
            params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0.0,
                                    skip_reading_prefix_cache=skip_cache)
            self.llm.apply_model(_start_capture)
            result = self.llm.generate([TokensPrompt(prompt_token_ids=seq)], params, use_tqdm=False)[0]
            calls = [c for c in self.llm.apply_model(_stop_capture) if c is not None][0]
            cached = int(getattr(result, "num_cached_tokens", 0) or 0)
            rows = _prompt_rows(calls, result.prompt_logprobs, seq, cached)
            have = len(seq) - 1 - rows.shape[0]  # rows read from the prefix cache are not computed
            if have <= first:
                return rows[first - have:]
        raise RuntimeError("vLLM returned no logits for the requested prompt rows")

    def score(self, head: dict, arrays: dict) -> tuple[dict, dict]:
        """Log-probs of target ids at prompt rows: per sequence, rows first..len−2, each row's
        targets one row of `targets` (−1: none)."""
        torch = self.torch
        seqs = protocol.unpack_sequences(arrays["tokens"], arrays["ends"])
        firsts = arrays["first_rows"].tolist()
        targets = arrays["targets"]
        out = np.full(targets.shape, -np.inf, dtype=np.float32)
        at = 0
        for seq, first, logits in zip(seqs, firsts, self._prompt_logits(seqs, firsts)):
            n = logits.shape[0]
            lp = torch.log_softmax(torch.from_numpy(logits), dim=-1)
            ids = torch.from_numpy(targets[at:at + n].astype(np.int64))
            got = lp.gather(1, ids.clamp_min(0)).numpy()
            out[at:at + n] = np.where(targets[at:at + n] >= 0, got, -np.inf)
            at += n
        return {}, {"logprobs": out}

    def logits(self, head: dict, arrays: dict, reply) -> None:
        (logits,) = self._prompt_logits([arrays["tokens"].tolist()], [0])
        rows = max(1, CHUNK_BYTES // max(1, logits.shape[1] * 4))
        chunks = list(range(0, logits.shape[0], rows))
        reply({"ok": True, "rows": int(logits.shape[0]), "vocab": int(logits.shape[1]), "chunks": len(chunks)})
        for s in chunks:
            reply({"ok": True, "start": s}, {"logits": logits[s:s + rows]})

    # ---- generation

    def generate(self, head: dict, arrays: dict) -> tuple[dict, dict]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seqs = protocol.unpack_sequences(arrays["tokens"], arrays["ends"])
        eos = [int(t) for t in arrays["eos"]]
        params = [SamplingParams(max_tokens=int(m), temperature=0.0, detokenize=False, stop_token_ids=eos,
                                 skip_special_tokens=False) for m in arrays["max_tokens"]]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        outs = [list(r.outputs[0].token_ids) for r in results]
        return {}, protocol.pack_sequences(outs)

    def time(self, head: dict, arrays: dict) -> tuple[dict, dict]:
        """One prefill of the batch, then `new_tokens` decoding steps of all of it (the prefix
        cache not read, so the second call prefills again)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=s) for s in protocol.unpack_sequences(arrays["tokens"], arrays["ends"])]
        new = int(head["new_tokens"])

        def run(n: int) -> float:
            p = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0, detokenize=False,
                               skip_reading_prefix_cache=True)
            t0 = time.perf_counter()
            self.llm.generate(prompts, p, use_tqdm=False)
            return time.perf_counter() - t0

        run(1)  # warm-up
        prefill = run(1)
        total = run(new + 1)
        return {"prefill_s": prefill, "decode_s": max(total - prefill, 0.0)}, {}


def emulate_scaled_mm(torch) -> None:
    """On a CPU, torch's FP8 matmul (`torch._scaled_mm`) is a reference kernel, ~200× slower than
    a float matmul (a 64-token prompt of the 135M model: 121 s against 0.07 s). It is replaced
    by the same product computed in float32: e4m3 values are exact in float32, the products are
    exact, the sums accumulate in float32 as the reference kernel's do; then the scales, the bias
    and the output dtype as _scaled_mm applies them. vLLM's FP8 quantization of weights and
    activations is untouched. tests/test_vllm.py compares the two on random FP8 operands."""
    original = torch._scaled_mm

    def scaled_mm(a, b, scale_a=None, scale_b=None, bias=None, scale_result=None, out_dtype=None,
                  use_fast_accum=False):
        if a.device.type != "cpu" or out_dtype is None or scale_result is not None:
            return original(a, b, scale_a=scale_a, scale_b=scale_b, bias=bias, scale_result=scale_result,
                            out_dtype=out_dtype, use_fast_accum=use_fast_accum)
        out = a.to(torch.float32) @ b.to(torch.float32)
        if scale_a is not None:
            out = out * scale_a.to(torch.float32)
        if scale_b is not None:
            out = out * scale_b.to(torch.float32)
        if bias is not None:
            out = out + bias.to(torch.float32)
        return out.to(out_dtype)

    scaled_mm.qeval_emulated = True
    torch._scaled_mm = scaled_mm


def _device_name(torch, platform) -> str:
    try:
        if platform.device_type == "cuda":
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return platform.device_type


# ---- run inside vLLM's model worker(s) through LLM.apply_model (module-level: picklable)

def _install_capture(model) -> None:
    if getattr(model, "_qeval_capture", None) is not None:
        return
    original = model.compute_logits
    model._qeval_capture = []
    model._qeval_capturing = False

    def compute_logits(*args, **kwargs):
        logits = original(*args, **kwargs)
        if model._qeval_capturing and logits is not None:
            model._qeval_capture.append(logits.detach().float().cpu().numpy())
        return logits

    model.compute_logits = compute_logits


def _start_capture(model) -> None:
    model._qeval_capture.clear()
    model._qeval_capturing = True


def _stop_capture(model):
    model._qeval_capturing = False
    calls = list(model._qeval_capture)
    model._qeval_capture.clear()
    return calls or None


def _kernels(model) -> tuple[dict, int]:
    """Per linear layer type: its quantization method and the kernel class vLLM chose; and the
    bytes of the model's parameters and buffers as loaded."""
    counts: dict[str, int] = {}
    for _, module in model.named_modules():
        qm = getattr(module, "quant_method", None)
        if qm is None:
            continue
        kernel = getattr(qm, "kernel", None)
        name = type(qm).__name__ + (f" → {type(kernel).__name__}" if kernel is not None else "")
        counts[name] = counts.get(name, 0) + 1
    return counts, _held_bytes(model)


def _held_bytes(model) -> int:
    """Bytes of every distinct tensor the model holds: parameters, buffers and the tensors a
    kernel keeps beside them (vLLM's CPU layers repack weights into plain attributes)."""
    import torch

    seen: dict[int, int] = {}
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False),
                   *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        for t in tensors:
            try:
                key = t.untyped_storage().data_ptr()
                seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
            except (RuntimeError, NotImplementedError):
                continue
    return int(sum(seen.values()))


def _prompt_rows(calls: list, prompt_logprobs, seq: list[int], cached: int) -> np.ndarray:
    """The captured calls that are this request's prompt rows (the positions after the `cached`
    ones read from the prefix cache), checked against vLLM's own prompt log-probs of the actual
    tokens: the sampling call (one row, the last position) is not one."""
    expected = max(len(seq) - 1 - cached, 0)
    reported = [(i, d) for i, d in enumerate(prompt_logprobs or []) if d][-expected:] if expected else []
    prompt = [c for c in calls if c.shape[0] > 1 or expected == 1]
    total = sum(c.shape[0] for c in prompt)
    while total > expected and prompt:  # a one-row sampling call that looked like a prompt chunk
        total -= prompt.pop(0 if prompt[0].shape[0] == 1 else -1).shape[0]
    rows = np.concatenate(prompt) if prompt else np.zeros((0, 0), np.float32)
    if rows.shape[0] != expected:
        raise RuntimeError(f"captured {rows.shape[0]} prompt rows, vLLM reported {expected}: this vLLM "
                           "model runner computes prompt logits differently; use another vLLM version")
    if expected:
        import torch

        lp = torch.log_softmax(torch.from_numpy(rows), dim=-1).numpy()
        worst = 0.0
        for r, (pos, d) in enumerate(reported):
            worst = max(worst, abs(float(lp[r, seq[pos]]) - float(d[seq[pos]].logprob)))
        if not worst <= 1e-3:
            raise RuntimeError(f"captured prompt logits disagree with vLLM's prompt log-probs by {worst:.3g}")
    return rows


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its first line, and a validation error's reason."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    reason = next((ln for ln in lines[1:] if ln.lower().startswith("value error")), None)
    if reason:
        text += f": {reason.split('[type=')[0].strip()}"
    return f"{type(exc).__name__}: {text[:400]}"


def main() -> None:
    _die_with_parent()
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    inbox = os.fdopen(0, "rb", buffering=0)

    def reply(header: dict, arrays: dict | None = None) -> None:
        protocol.send(channel, header, arrays)

    engine = None
    while True:
        try:
            head, arrays = protocol.receive(inbox)
        except protocol.WorkerGone:
            return
        op = head.get("op")
        try:
            if op == "hello":
                if head.get("version") != protocol.VERSION:
                    reply({"ok": False, "error": f"protocol version {head.get('version')} != worker's {protocol.VERSION}"})
                    return
                reply({"ok": True, "version": protocol.VERSION, "python": sys.version.split()[0]})
            elif op == "load":
                engine = Engine(head["settings"])
                reply({"ok": True, **engine.describe()})
            elif op == "score":
                h, a = engine.score(head, arrays)
                reply({"ok": True, **h}, a)
            elif op == "logits":
                engine.logits(head, arrays, reply)
            elif op == "generate":
                h, a = engine.generate(head, arrays)
                reply({"ok": True, **h}, a)
            elif op == "time":
                h, a = engine.time(head, arrays)
                reply({"ok": True, **h}, a)
            elif op == "close":
                reply({"ok": True})
                return
            else:
                reply({"ok": False, "error": f"unknown operation {op!r}"})
        except Exception as exc:  # the parent turns it into one line; no request content is in it
            reply({"ok": False, "error": _one_line(exc)})


if __name__ == "__main__":
    main()
