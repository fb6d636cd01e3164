"""llama.cpp backend: GGUF candidates scored on llama.cpp's own kernels, in process.

Teacher-forced: log-probs are read from the logits of llama.cpp's own forward passes over the
prompt's token ids (each choice continued from the context's KV-cache state) — neither the
server's echo mode nor completion log-probs, which are known to misalign positions.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qeval.util.threads import cpu_threads
from qeval.errors import QevalInputError
from qeval.quantize.gguf import gguf_artefact, tensor_type_mix
from qeval.util.stderr import quiet_stderr
from qeval.model_source import ResolvedModel
from qeval.types import BackendInfo, VariantSpec
from qeval.engines.base import (
    ForwardTiming, GenerationRequest, GenerationResult, GreedyOutput, LoglikelihoodRequest, NonFiniteScores, Progress,
    shared_prefix_jobs,
)

ENGINE = "llamacpp"  # its name in qeval/engines/registry.py
# `+kv=DTYPE` (qeval/variants/gguf.py lists them) → llama.cpp's GGML type for both K and V, as
# --cache-type-k/-v. A quantized V cache needs flash attention in llama.cpp.
KV_GGML_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}
DEFAULT_N_CTX = 2048
LOGIT_ROWS_BYTES = 256 << 20  # llama.cpp's logits buffer when every position is scored
BROKEN = ("the GGUF's weights or its quantization are numerically broken; check the file, or try "
          "another GGUF type")


def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_tile" in flags or "amx_int8" in flags


@contextlib.contextmanager
def _extra_buffer_types(enabled: bool):
    """Quantized GGUFs can crash inside llama.cpp's AMX matmul path; the model's extra (repacked)
    buffer types are what route them there. llama-cpp-python's Llama() does not expose the
    switch, so its default model parameters are wrapped while the model loads."""
    if enabled:
        yield
        return
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def without_extra_bufts():
        params = original()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = without_extra_bufts
    try:
        yield
    finally:
        low.llama_model_default_params = original


# A native crash inside llama.cpp would take the whole comparison down with a segfault. So every
# GGUF is first loaded and run on a few tokens in a child process with the settings the backend
# will use; a crash there becomes a retry (extra buffer types off) or one clear error.
_PROBE_CODE = "from qeval.engines.llamacpp import _probe_main; _probe_main()"


def _probe_main() -> None:
    import sys

    import llama_cpp

    path, extra, threads, gpu_layers = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
    with _extra_buffer_types(enabled=extra):
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, n_ubatch=64, n_threads=threads,
                              n_threads_batch=threads, n_gpu_layers=gpu_layers, logits_all=True,
                              verbose=False)
    ids = llm.tokenize(b"Metformin 500 mg twice daily; review renal function.", add_bos=False)[:16]
    llm.eval(ids or [0])
    print("ok")


@functools.lru_cache(maxsize=32)
def _probe(path: str, mtime_ns: int, extra: bool, threads: int, gpu_layers: int) -> str | None:
    """None when the child loaded and scored the file; else what went wrong."""
    import signal
    import subprocess
    import sys

    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE_CODE, path, "1" if extra else "0",
                               str(threads), str(gpu_layers)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "it did not finish loading within 10 minutes"
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return None
    if proc.returncode < 0:
        return f"it crashed ({signal.Signals(-proc.returncode).name})"
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    return f"it failed ({last[:160]})"


def safe_buffer_setting(path: Path, threads: int, gpu_layers: int) -> tuple[bool, list[str]]:
    """Whether to load with llama.cpp's extra (repacked) buffer types, checked in a child process.
    On AMX CPUs they start off (quantized GGUFs can crash in the AMX matmul path)."""
    amx = cpu_has_amx()
    tries = [False] if amx else [True, False]
    mtime = path.stat().st_mtime_ns
    problems = []
    for extra in tries:
        problem = _probe(str(path.resolve()), mtime, extra, threads, gpu_layers)
        if problem is None:
            notes = []
            if amx:
                notes.append("AMX CPU: llama.cpp extra buffer types disabled (avoids the AMX matmul crash)")
            elif not extra:
                notes.append("llama.cpp crashed with its extra buffer types on this CPU; scored with them off")
            return extra, notes
        problems.append(f"extra buffer types {'on' if extra else 'off'}: {problem}")
    raise QevalInputError(
        f"llama.cpp cannot run {path.name} on this machine ({'; '.join(problems)}); rebuild "
        "llama-cpp-python for this CPU (CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install --force-reinstall "
        "--no-binary llama-cpp-python llama-cpp-python==0.3.36) or score this variant on another machine")


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise QevalInputError(
            "GGUF variants need llama-cpp-python: pip install 'qeval[gguf]' "
            "(or llama-cpp-python==0.3.36)") from None
    return llama_cpp


def check_gpu_layers(variant: VariantSpec) -> None:
    """`gpu_layers` offloads to a GPU only in a llama-cpp-python built with GPU support; a CPU
    build ignores it silently, and the record would claim a GPU that never ran."""
    layers = int(variant.params.get("gpu_layers", 0) or 0)
    if layers > 0 and not require_llama_cpp().llama_supports_gpu_offload():
        raise QevalInputError(
            f"variant {variant.name!r}: gpu_layers={layers} needs a GPU, but this llama-cpp-python "
            "was built without GPU offload; drop gpu_layers (llama.cpp then runs on the CPU) or "
            "reinstall it with CMAKE_ARGS='-DGGML_CUDA=on' on a machine with CUDA")


def read_gguf_vocabulary(path: Path, variant: str) -> tuple[list[str], list[int]]:
    """The token list and token types of a GGUF file (its header only, no weights loaded). A file
    that is not GGUF, is cut short or is damaged is one clear error, before llama.cpp sees it."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise QevalInputError(f"variant {variant!r}: cannot read {path} ({exc.strerror}); check the path") from None
    if magic != b"GGUF":
        raise QevalInputError(f"variant {variant!r}: {path} is not a GGUF file (it does not start "
                              "with the GGUF magic); check the path")
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        tokens_field = reader.fields.get("tokenizer.ggml.tokens")
        types_field = reader.fields.get("tokenizer.ggml.token_type")
        tokens = [str(t) for t in tokens_field.contents()] if tokens_field is not None else None
        types = [int(t) for t in types_field.contents()] if types_field is not None else None
    except Exception as exc:  # gguf raises whatever numpy does on a short or damaged file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise QevalInputError(
            f"variant {variant!r}: {path} ({size} bytes) is truncated or damaged: the GGUF reader "
            f"stopped ({reason}); copy or download it again") from None
    if not reader.tensors or end > size:
        raise QevalInputError(
            f"variant {variant!r}: {path} is truncated: its tensors need {end} bytes, the file has "
            f"{size}; copy or download it again")
    if tokens is None:
        raise QevalInputError(
            f"variant {variant!r}: {path} holds no tokenizer (tokenizer.ggml.tokens), so it cannot be "
            "checked against the baseline's; convert it with its tokenizer (llama.cpp's "
            "convert_hf_to_gguf.py does)")
    return tokens, types if types is not None and len(types) == len(tokens) else [1] * len(tokens)


def llamacpp_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for lib in ("llama_cpp_python", "gguf"):
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            pass
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def _brought_hash(params: dict, path: Path) -> dict[str, str]:
    """A brought file is named by its file name in tables; its record keeps what it was."""
    if "file" not in params:
        return {}
    from qeval.util.digest import file_sha256

    return {"gguf_sha256": file_sha256(path)}


class LlamaCppBackend:
    def __init__(self, model: ResolvedModel, variant: VariantSpec, *, cache: Path,
                 progress=None, gguf: Path | None = None, method_notes: Sequence[str] = (),
                 method_versions: dict[str, str] | None = None):
        """`gguf`: the file its method made (a calibrated one), else the file is found here;
        `method_notes`, `method_versions`: what its method adds to the record (how the file was made)."""
        llama_cpp = require_llama_cpp()
        check_gpu_layers(variant)
        p = variant.params  # checked by config.parse_variant (type, file, integers)
        if "file" in p:
            path = Path(str(p["file"])).expanduser()
            qtype = "user file"
        else:
            qtype = str(p.get("type", "q4_k_m")).lower()
            path = gguf or gguf_artefact(model.path, model.fingerprint, qtype, cache, progress)
        threads = int(p.get("threads", cpu_threads()))
        n_ctx = int(p.get("n_ctx", DEFAULT_N_CTX))
        gpu_layers = int(p.get("gpu_layers", 0))
        extra, notes = safe_buffer_setting(path, threads, gpu_layers)
        notes = [*method_notes, *notes]
        kv = variant.kv_cache
        # llama-cpp-python 0.3.x: flash_attn=True sets flash_attn_type ENABLED, False DISABLED
        # (its default, kept for f16 so that +kv=f16 equals the default cache).
        cache_args = {"flash_attn": bool(p.get("flash_attn", kv not in (None, "f16")))}
        if kv is not None:
            ggml_type = getattr(llama_cpp, KV_GGML_TYPES[kv])
            cache_args.update(type_k=ggml_type, type_v=ggml_type)
        try:
            # Not logits_all: llama-cpp-python would keep an (n_ctx × vocabulary) float32 copy
            # of every position's logits (2 GB at Gemma-3's 262k vocabulary). Positions whose
            # logits are needed are asked for batch by batch (_decode), and read from llama.cpp's
            # own output buffer, which holds one batch's.
            with quiet_stderr(), _extra_buffer_types(enabled=extra):
                self.llm = llama_cpp.Llama(
                    model_path=str(path), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_ubatch=min(512, n_ctx),
                    n_threads=threads, n_threads_batch=threads, logits_all=False, n_gpu_layers=gpu_layers,
                    verbose=False, seed=0, **cache_args)
        except (ValueError, RuntimeError) as exc:
            if kv is not None:
                raise QevalInputError(
                    f"variant {variant.name!r}: llama.cpp could not make a {kv} KV cache for {path.name} "
                    f"({exc}); a quantized cache needs the model's head size to be a multiple of 32 "
                    "(the q8_0/q4_0 block); try +kv=f16 or leave the suffix out") from None
            raise QevalInputError(f"llama.cpp could not load {path}: {exc}") from None
        self.n_ctx = n_ctx
        # An item's several prompts (rotated options) share their beginning in the KV cache;
        # False: each prompt from scratch (benchmarks/rotation_cost.py measures both).
        self.across_prompts = True
        self.n_vocab = self.llm.n_vocab()
        # Positions per decode when every position's logits are kept: llama.cpp's output buffer
        # (rows × vocabulary float32) stays near LOGIT_ROWS_BYTES.
        self.logit_rows = max(16, min(self.llm.n_batch, LOGIT_ROWS_BYTES // (4 * self.n_vocab)))
        self.path = path
        self.checkpoint = model.path  # the baseline's checkpoint: its tokenizer and generation config
        if qtype == "user file":
            from qeval.quantize.gguf import QUANT_TYPES

            ftype = self.llm.metadata.get("general.file_type")
            names = {str(v): k for k, v in QUANT_TYPES.items()}
            qtype = f"{names.get(str(ftype), f'file type {ftype}')} (user file)"
        mix, bpw = tensor_type_mix(path)
        mix_text = ", ".join(f"{k} {100 * v:.0f}%" for k, v in mix.items() if v >= 0.005)
        k_share = sum(v for k, v in mix.items() if k.endswith("_K"))
        if qtype.startswith(("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")) and k_share < 0.5:
            fallback = ", ".join(k for k in mix if not k.endswith("_K") and k != "F32")
            notes.append(
                f"{qtype}: only {100 * k_share:.0f}% of the weights are k-quants — rows whose length is "
                f"not a multiple of 256 fell back to {fallback} (llama.cpp's rule) — so this file "
                f"holds {bpw:.2f} bits per weight; compare GGUF variants by bits per weight, not by name")
        kernel = f"llama.cpp ggml kernels ({mix_text})"
        if kv is None and "flash_attn" in p:
            kernel += f"; flash attention {'on' if cache_args['flash_attn'] else 'off'}"
        kv_bytes = None
        if kv is not None:
            per_cell = self._kv_bytes_per_cell(cache_args["type_k"], variant.name)
            cells = llama_cpp.llama_n_ctx(self.llm._ctx.ctx)
            kv_bytes = per_cell * cells
            attention = "flash attention" if cache_args["flash_attn"] else "flash attention off"
            kernel += f"; KV cache {kv} (K and V), {attention}"
            notes.append(
                f"KV cache {kv} for K and V (llama.cpp type_k/type_v), {attention}"
                + (" (llama.cpp needs it for a quantized V cache)" if kv != "f16" else "")
                + f": {kv_bytes:,} bytes allocated ({per_cell:,} bytes per cell — ggml's row size of "
                f"each layer's K and V, checked against llama.cpp's state size — × {cells} cells); "
                "every score reads keys and values back from this cache")
        self.info = BackendInfo(
            variant=variant.name, backend=ENGINE, device="cuda" if gpu_layers else "cpu",
            requested_dtype=qtype, compute_dtype=f"llama.cpp {qtype}, {bpw:.2f} bits per weight",
            # Not the thread count: it changes no number (the local and Ray executors, at 2 and
            # 1 threads, give the same results.json) and is not in the record-store key; each
            # job's threads are in timings.json.
            kernel=kernel,
            weight_bytes=path.stat().st_size, versions={**llamacpp_versions(), **_brought_hash(p, path), **(method_versions or {})},
            notes=tuple(notes), kv_cache_bytes=kv_bytes,
        )

    def _kv_bytes_per_cell(self, ggml_type: int, variant: str) -> int:
        """Bytes one cache cell (one position: K and V of every layer) takes in a KV cache of
        `ggml_type`: ggml's own row size (block scales included) of each layer's K and V rows,
        at llama.cpp's own layer, KV-head and head sizes. Checked against llama.cpp's state size of
        sequence 0 after 1 and after 9 positions (the state writes each cell's rows in the cache's
        own type, plus a small per-cell header); the cache is emptied again afterwards.
        tests/test_kv_cache.py also checks the allocation against llama.cpp's own log line."""
        import ctypes

        import llama_cpp
        from llama_cpp._ggml import libggml

        row_size = libggml.ggml_row_size
        row_size.restype, row_size.argtypes = ctypes.c_size_t, [ctypes.c_int, ctypes.c_int64]
        model = self.llm._model.model
        layers = llama_cpp.llama_model_n_layer(model)
        heads, kv_heads = llama_cpp.llama_model_n_head(model), llama_cpp.llama_model_n_head_kv(model)
        meta = self.llm.metadata
        arch = meta.get("general.architecture", "")
        default_head = llama_cpp.llama_model_n_embd(model) // heads
        k_dim = int(meta.get(f"{arch}.attention.key_length", default_head))
        v_dim = int(meta.get(f"{arch}.attention.value_length", default_head))
        per_cell = layers * (row_size(ggml_type, kv_heads * k_dim) + row_size(ggml_type, kv_heads * v_dim))

        llm = self.llm
        sizes = []
        for n in (1, 9):
            llm.reset()
            for _ in self._decode([0] * n, every=False):
                pass
            sizes.append(int(llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0)))
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        self.kv_state_cell_header = (sizes[1] - sizes[0]) / 8 - per_cell
        if not 0 <= self.kv_state_cell_header <= 64:
            raise RuntimeError(f"{variant}: llama.cpp's state grows by {(sizes[1] - sizes[0]) / 8} "
                               f"bytes per position, not the {per_cell} its KV rows take")
        return per_cell

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _check_fits(self, n_tokens: int) -> None:
        if n_tokens > self.n_ctx:
            raise QevalInputError(f"{self.info.variant}: a sequence of {n_tokens} tokens exceeds "
                                  f"n_ctx={self.n_ctx}; pass the variant parameter n_ctx=")

    def _decode(self, tokens: Sequence[int], every: bool):
        """Evaluate `tokens` after the KV cache's first n_tokens (the rest is dropped), as
        llama-cpp-python's eval does, and yield llama.cpp's logits after each decode: of every
        position of that batch (`every`, `logit_rows` positions per decode) or of its last
        position only. Each array is a view of llama.cpp's buffer, valid until the next decode."""
        llm = self.llm
        self._check_fits(llm.n_tokens + len(tokens))
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        step = self.logit_rows if every else llm.n_batch
        for i in range(0, len(tokens), step):
            batch = list(tokens[i:i + step])
            llm._batch.set_batch(batch=batch, n_past=llm.n_tokens, logits_all=every)
            with quiet_stderr():
                llm._ctx.decode(llm._batch)
            llm.input_ids[llm.n_tokens:llm.n_tokens + len(batch)] = batch
            llm.n_tokens += len(batch)
            rows = len(batch) if every else 1
            yield np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(rows, self.n_vocab))

    def _last_logits(self) -> np.ndarray:
        return np.array(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)),
                        dtype=np.float32)

    def _eval_last(self, tokens: Sequence[int]) -> np.ndarray:
        """Evaluate `tokens` after the cache's first n_tokens; a copy of the last logits."""
        for _ in self._decode(tokens, every=False):
            pass
        return self._last_logits()

    def logit_slices(self, tokens: Sequence[int]):
        """(first position, float32 logits) for the positions that predict tokens[1:], one decode
        of `logit_rows` positions at a time (see HFBackend.logit_slices)."""
        import torch

        self.llm.reset()
        at = 0
        for logits in self._decode(tokens[:-1], every=True):
            yield at, torch.from_numpy(logits)
            at += logits.shape[0]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      advance: Progress | None = None) -> list[float]:
        """Shared prefix: the context is evaluated once per item (last position's logits only);
        each multi-token continuation then runs from that KV-cache state (the cache is cut back to
        the context before each choice), with logits at its own positions."""
        out = [0.0] * len(requests)
        for job in shared_prefix_jobs(requests, across_prompts=self.across_prompts):
            c = len(job.context)
            self._check_fits(c + max(len(b) for b in job.branches))
            self.llm.reset()
            first = _log_softmax(self._eval_last(job.context)[None, :])[0]
            if job.leads:  # an item's several prompts (rotated options): their beginning once
                self._score_leads(job, requests, first, out)
                if advance:
                    advance(len(job.members))
                continue
            for branch, i in zip(job.branches, job.members):
                r = requests[i]
                lp = float(first[r.continuation[0]])
                if branch:
                    self.llm.n_tokens = c  # _decode drops the cache beyond n_tokens first
                    targets = list(r.continuation[1:])
                    at = 0
                    for logits in self._decode(branch, every=True):
                        rows = _log_softmax(logits)
                        lp += float(rows[np.arange(len(rows)), targets[at:at + len(rows)]].sum())
                        at += len(rows)
                if not math.isfinite(lp):
                    raise NonFiniteScores(f"{self.info.variant}: non-finite log-prob for item "
                                          f"{r.sample_id} choice {r.choice}; {BROKEN}")
                out[i] = lp
            if advance:
                advance(len(job.members))
        return out

    def _score_leads(self, job, requests: Sequence[LoglikelihoodRequest], first: np.ndarray,
                     out: list[float]) -> None:
        """A job whose branches finish different prompts after a shared beginning (the context,
        already in the cache): each branch from that state; one-token continuations read at the
        end of their branch's lead (last logits only), longer ones at every position after it."""
        c = len(job.context)
        starts = job.branch_starts()
        members = {}
        for m, i in enumerate(job.members):
            members.setdefault(job.branch_of(m), []).append((m, i))
        for b, branch in enumerate(job.branches):
            owned = members.get(b, [])
            rows: dict[int, np.ndarray] = {}  # position in `tokens` → log-softmax of its logits
            if branch:
                self.llm.n_tokens = c  # _decode drops the cache beyond n_tokens first
                if all(len(requests[i].continuation) == 1 for _, i in owned):
                    rows[starts[b] + len(branch) - 1] = _log_softmax(self._eval_last(branch)[None, :])[0]
                else:
                    at = starts[b]
                    for logits in self._decode(branch, every=True):
                        for row in _log_softmax(logits):
                            rows[at] = row
                            at += 1
            for m, i in owned:
                r = requests[i]
                reads = job.reads(m, len(r.continuation))
                lp = float(sum((first if p == c - 1 else rows[p])[t] for p, t in zip(reads, r.continuation)))
                if not math.isfinite(lp):
                    raise NonFiniteScores(f"{self.info.variant}: non-finite log-prob for item "
                                          f"{r.sample_id} choice {r.choice}; {BROKEN}")
                out[i] = lp

    @functools.cached_property
    def eos_ids(self) -> frozenset[int]:
        """The baseline checkpoint's end-of-sequence ids, the ones its transformers baseline stops
        at. Not llama.cpp's own end-of-generation set: that one adds tokens by name (SmolLM2:
        <|endoftext|> and <reponame> besides <|im_end|>), and variants must share one stopping
        rule. The prompt-hash check has already shown that the vocabularies agree."""
        from qeval.engines.hf import checkpoint_eos_ids

        return checkpoint_eos_ids(self.checkpoint)

    def decode(self, ids: list[int]) -> str:
        # Control tokens are not rendered (as transformers' skip_special_tokens); bytes of a
        # character still incomplete become U+FFFD, as in transformers' decode.
        return self.llm.detokenize(ids, special=False).decode("utf-8", errors="replace")

    def generate(self, requests: Sequence[GenerationRequest], advance: Progress | None = None
                 ) -> list[GenerationResult]:
        """Greedy decoding driven token by token from the prompt's ids (not a text completion
        API, which would re-tokenise the prompt): argmax over each step's logits, ties to the
        lowest id, llama.cpp's KV cache carrying the sequence."""
        out = []
        for r in requests:
            if not r.prompt:
                raise ValueError(f"item {r.sample_id}: empty prompt")
            need = len(r.prompt) + r.max_tokens
            if need > self.n_ctx:
                raise QevalInputError(
                    f"{self.info.variant}: item {r.sample_id} needs {need} positions (prompt "
                    f"{len(r.prompt)} + max_tokens {r.max_tokens}) but n_ctx is {self.n_ctx}; pass "
                    "the variant parameter n_ctx= or lower the task's generation.max_tokens")
            state = GreedyOutput(r, self.decode, self.eos_ids)
            self.llm.reset()
            step = list(r.prompt)
            while True:
                logits = self._eval_last(step)
                if not np.isfinite(logits).all():
                    raise NonFiniteScores(f"{self.info.variant}: non-finite logits while generating "
                                          f"item {r.sample_id}; {BROKEN}")
                token = int(np.argmax(logits))  # first maximum: ties to the lowest id
                if state.push(token):
                    break
                step = [token]
            out.append(state.result)
            if advance:
                advance(1)
        return out

    def time_forward(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> ForwardTiming | None:
        """Batch 1 only: this backend runs one sequence at a time (llama-server batches several;
        that is its scheduler, not a kernel qeval measures)."""
        import time

        if len(prompts) != 1:
            return None
        prompt = list(prompts[0])
        if len(prompt) + new_tokens > self.n_ctx:
            return None
        # Timed the server's way: logits of the last position only.
        try:
            self.llm.reset()
            t0 = time.perf_counter()
            token = int(np.argmax(self._eval_last(prompt)))
            t1 = time.perf_counter()
            for _ in range(new_tokens):
                token = int(np.argmax(self._eval_last([token])))
            t2 = time.perf_counter()
        finally:
            self.llm.reset()
        return ForwardTiming(t1 - t0, t2 - t1)

    def token_logprobs(self, tokens: Sequence[int]) -> np.ndarray:
        """Log-softmax over the vocabulary at every position that predicts tokens[1:]."""
        return np.concatenate([_log_softmax(x.numpy()) for _, x in self.logit_slices(tokens)]).astype(np.float32)

    def close(self) -> None:
        self.llm.close()


class LlamaCppFactory:
    """Opens llama.cpp backends for one model (each GGUF made by its method's prepare, or brought)."""

    def __init__(self, settings):
        self.model = settings.model
        self.cache = settings.cache
        self.progress = settings.progress

    def identity(self, variant: VariantSpec | None = None) -> dict:
        gpu = variant is not None and variant.params.get("gpu_layers")
        return {"device": "cuda" if gpu else "cpu", "versions": llamacpp_versions()}

    def open(self, variant: VariantSpec, baseline_compute: str | None, *, gguf: Path | None = None,
             notes: Sequence[str] = (), versions: dict[str, str] | None = None, **loading) -> "LlamaCppBackend":
        return LlamaCppBackend(self.model, variant, cache=self.cache, progress=self.progress, gguf=gguf,
                               method_notes=notes, method_versions=versions)


def make_factory(settings) -> LlamaCppFactory:
    return LlamaCppFactory(settings)
