"""HF checkpoint → F32/F16 GGUF (gguf's writer) → llama.cpp quantized GGUF (llama.cpp's own
quantizer through llama-cpp-python). Artefacts are cached and fingerprinted.

Llama-family architectures: llama and mistral (GGUF arch `llama`, whose Q and K projections are
permuted from HF's rotate-half layout to llama.cpp's interleaved one) and qwen2 (no permutation,
Q/K/V biases). The tokenizer is written from the checkpoint's tokenizer.json (byte-level BPE);
the pre-tokenizer name llama.cpp needs is taken from the GGUF the checkpoint was materialised
from, when there is one, or found by checking llama.cpp's tokenisation against the HF tokenizer
on probe text. The comparison itself checks every prompt's token ids anyway.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import QevalInputError
from .fileio import atomic_write_text

RECIPE = 1  # bump when the export changes its output
ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
PERMUTE_QK = {"llama": True, "mistral": True, "qwen2": False}
# llama.cpp file types by the names users know (llama_ftype values).
QUANT_TYPES = {
    "f32": 0, "f16": 1, "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_k_s": 16, "q4_k_m": 15,
    "q4_k_s": 14, "q3_k_l": 13, "q3_k_m": 12, "q3_k_s": 11, "q2_k": 10, "q4_0": 2, "q4_1": 3,
    "q5_0": 8, "q5_1": 9,
}
PRE_TOKENIZERS = ("llama-bpe", "smollm", "qwen2", "gpt-2", "default", "starcoder", "falcon",
                  "deepseek-llm", "mpt", "olmo", "dbrx", "tekken", "refact", "command-r")
PROBE = ("Metformin 500 mg twice daily; eGFR 42 mL/min/1.73m2 (was 58).\n\n  Indented line, "
         "tabs\tand   spaces, ALL CAPS, don't, can't, O'Brien, 3.14159, 1,000,000 and 2025-11-22."
         " Non-ASCII: café, naïve, µg, ±, ≥ 90%, —\n\n1.2 Heading after a blank line\n\n\t3 items")


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs from C to file descriptor 2; keep the terminal for qeval's own output."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _source_pre(model_dir: Path) -> str | None:
    manifest = model_dir / "qeval_manifest.json"
    if not manifest.is_file():
        return None
    src = json.loads(manifest.read_text()).get("source")
    if not src or not Path(src).is_file():
        return None
    from .models import gguf_pre_tokenizer

    return gguf_pre_tokenizer(Path(src))


def _tokenizer_fields(model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    data = json.loads((model_dir / "tokenizer.json").read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise QevalInputError(f"{model_dir}: only byte-level BPE tokenizers can be exported to "
                              f"GGUF here (found {model.get('type')!r})")
    vocab = tok.get_vocab()
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        if i < len(tokens):
            tokens[i] = text
    special = {a["id"] for a in data.get("added_tokens", []) if a.get("special")}
    added = {a["id"] for a in data.get("added_tokens", [])}
    types = [3 if i in special else 4 if i in added else 1 for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tok, tokens, types, merges


def export_gguf(model_dir: Path, out: Path, *, dtype: str = "f32", pre: str | None = None) -> None:
    """Write model_dir (a HF checkpoint with safetensors) as a GGUF file of F32 or F16 weights."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    mtype = config.get("model_type")
    if mtype not in ARCHS:
        raise QevalInputError(f"{model_dir}: GGUF export supports {', '.join(ARCHS)} models, not "
                              f"{mtype!r}; bring your own GGUF with gguf=path/to/model.gguf")
    arch = ARCHS[mtype]
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") not in ("default", None):
        raise QevalInputError(f"{model_dir}: rope scaling {rope.get('rope_type')!r} is not exported yet")
    tok, tokens, types, merges = _tokenizer_fields(model_dir)

    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(str(config.get("_name_or_path") or model_dir.name))
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_rope_freq_base(float(theta))
    w.add_rope_dimension_count(int(head_dim))
    if head_dim != config["hidden_size"] // n_head:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))
    w.add_vocab_size(len(tokens))
    w.add_file_type(QUANT_TYPES[dtype])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre or "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, adder in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                       ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        value = getattr(tok, key, None)
        if value is None:
            value = config.get(key)
        if isinstance(value, int):
            adder(value)
    w.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))

    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), int(config["num_hidden_layers"]))
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    if not tensors:
        raise QevalInputError(f"{model_dir}: no safetensors weights to export")
    for name in sorted(tensors):
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        arr = tensors[name].astype(np.float32)
        if PERMUTE_QK[mtype] and name.endswith("q_proj.weight"):
            arr = _permute(arr, n_head)
        elif PERMUTE_QK[mtype] and name.endswith("k_proj.weight"):
            arr = _permute(arr, n_kv)
        new = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise QevalInputError(f"{model_dir}: no GGUF name for tensor {name!r}")
        if dtype == "f16" and arr.ndim == 2:
            arr = arr.astype(np.float16)
        w.add_tensor(new, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tokens_match(gguf_path: Path, model_dir: Path) -> bool:
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with quiet_stderr():
        llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        return all(llm.tokenize(t.encode(), add_bos=False, special=False)
                   == tok(t, add_special_tokens=False).input_ids for t in [PROBE, *PROBE.split("\n")])
    finally:
        llm.close()


def quantize(src: Path, out: Path, qtype: str, threads: int | None = None) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads or (os.cpu_count() or 1)
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src.name} to {qtype} (code {rc})")


def tensor_type_mix(path: Path) -> tuple[dict[str, float], float]:
    """Share of the file's weights held in each ggml type (by element count), and bits per weight.
    What a type name promises and what a file holds can differ: llama.cpp falls back from k-quants
    on rows whose length is not a multiple of 256."""
    import gguf

    counts: dict[str, int] = {}
    data_bytes = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + int(t.n_elements)
        data_bytes += int(t.n_bytes)
    total = sum(counts.values()) or 1
    mix = {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return mix, 8 * data_bytes / total  # tensor data only: metadata is not weights


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_artefact(model_dir: Path, fingerprint: str, qtype: str, cache: Path, progress=None) -> Path:
    """The cached GGUF of this model at qtype (f32 and f16 exported, others quantized from f32)."""
    if qtype not in QUANT_TYPES:
        raise QevalInputError(f"unknown GGUF type {qtype!r}; choose from {', '.join(QUANT_TYPES)}")
    import llama_cpp

    folder = cache / "gguf" / f"{fingerprint[:16]}-r{RECIPE}-llamacpp{llama_cpp.__version__}"
    path = folder / f"{qtype}.gguf"
    manifest = folder / f"{qtype}.json"
    if path.is_file() and manifest.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{qtype}.partial.gguf"
    if qtype in ("f32", "f16"):
        if progress:
            progress(f"Exporting the baseline to GGUF {qtype.upper()} (once)")
        candidates = [p for p in (_source_pre(model_dir),) if p] + [p for p in PRE_TOKENIZERS]
        for pre in dict.fromkeys(candidates):
            export_gguf(model_dir, tmp, dtype=qtype, pre=pre)
            if _tokens_match(tmp, model_dir):
                break
        else:
            tmp.unlink(missing_ok=True)
            raise QevalInputError(f"{model_dir}: no llama.cpp pre-tokenizer reproduces this "
                                  "tokenizer's token ids; bring a GGUF with gguf=path/to/model.gguf")
    else:
        src = gguf_artefact(model_dir, fingerprint, "f32", cache, progress)
        if progress:
            progress(f"Quantizing with llama.cpp to {qtype.upper()} (once)")
        quantize(src, tmp, qtype)
    tmp.replace(path)
    atomic_write_text(manifest, json.dumps({
        "source_fingerprint": fingerprint, "type": qtype, "recipe": RECIPE,
        "llama_cpp_python": llama_cpp.__version__, "sha256": sha256_file(path),
        "bytes": path.stat().st_size}, indent=1))
    return path
