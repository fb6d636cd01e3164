"""HF checkpoint → F32/F16 GGUF (llama.cpp's own converter, qeval/quantize/converter.py) → llama.cpp
quantized GGUF (llama.cpp's own quantizer through llama-cpp-python). Artefacts are cached and
fingerprinted.

Every architecture llama.cpp's converter knows is exported (its architecture is checked before
any model time). The tokenizer must come out the same: llama.cpp's tokenisation of probe text is
checked against the HF tokenizer's. The converter names the BPE pre-tokenizer by a hash of known
tokenizers; for one it does not know (a fine-tuned or home-made tokenizer), the pre-tokenizer of
the GGUF the checkpoint was materialised from, then llama.cpp's common ones, are tried on the
vocabulary alone until llama.cpp tokenises as the HF tokenizer does. The comparison itself checks
every prompt's token ids anyway.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qeval.quantize import converter
from qeval.errors import QevalInputError
from qeval.util.digest import sha256_file
from qeval.util.fileio import atomic_write_text
from qeval.util.stderr import quiet_stderr
from qeval.util.locking import build_once

RECIPE = 2  # bump when the export changes its output (2: llama.cpp's own converter)
# llama.cpp file types by the names users know (llama_ftype values).
QUANT_TYPES = {
    "f32": 0, "f16": 1, "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_k_s": 16, "q4_k_m": 15,
    "q4_k_s": 14, "q3_k_l": 13, "q3_k_m": 12, "q3_k_s": 11, "q2_k": 10, "q4_0": 2, "q4_1": 3,
    "q5_0": 8, "q5_1": 9,
}
PRE_TOKENIZERS = ("llama-bpe", "smollm", "qwen2", "gpt-2", "default", "starcoder", "falcon",
                  "deepseek-llm", "mpt", "olmo", "dbrx", "tekken", "refact", "command-r")


def _source_pre(model_dir: Path) -> str | None:
    manifest = model_dir / "qeval_manifest.json"
    if not manifest.is_file():
        return None
    src = json.loads(manifest.read_text()).get("source")
    if not src or not Path(src).is_file():
        return None
    from qeval.model_source import gguf_pre_tokenizer

    return gguf_pre_tokenizer(Path(src))


def export_gguf(model_dir: Path, out: Path, *, dtype: str = "f32", pre: str | None = None) -> str | None:
    """Write model_dir (an HF checkpoint) as a GGUF of F32 or F16 weights with llama.cpp's own
    converter; `pre` forces the BPE pre-tokenizer name, else it is found as described above.
    Returns the pre-tokenizer name forced (None: the converter's own choice)."""
    if dtype not in ("f32", "f16"):
        raise ValueError(f"export writes f32 or f16, not {dtype!r}; quantize from f32")
    converter.check_exportable(model_dir, f"gguf:{dtype}")
    candidates = [pre] if pre else [None, *dict.fromkeys(p for p in (_source_pre(model_dir), *PRE_TOKENIZERS) if p)]
    return converter.convert(model_dir, out, dtype, candidates)


def quantize(src: Path, out: Path, qtype: str, threads: int | None = None, imatrix: Path | None = None) -> None:
    """llama.cpp's quantizer; `imatrix`: a llama.cpp imatrix GGUF (qeval/quantize/imatrix.py)
    weighting each column's rounding error by its mean squared activation."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads or (os.cpu_count() or 1)
    if imatrix is not None:
        from qeval.quantize.imatrix import c_imatrix, read_imatrix

        entries, _buffers = c_imatrix(read_imatrix(imatrix))  # _buffers: alive until llama.cpp returns
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
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


def gguf_dir(fingerprint: str, cache: Path) -> Path:
    import llama_cpp

    return cache / "gguf" / f"{fingerprint[:16]}-r{RECIPE}-llamacpp{llama_cpp.__version__}"


def gguf_artefact(model_dir: Path, fingerprint: str, qtype: str, cache: Path, progress=None,
                  imatrix: tuple[Path, str] | None = None) -> Path:
    """The cached GGUF of this model at qtype (f32 and f16 exported, others quantized from f32,
    with an importance matrix when `imatrix` = (its file, its sha256) is given), made once under a
    lock into a temporary folder, then renamed (qeval/util/locking.py)."""
    if qtype not in QUANT_TYPES:
        raise QevalInputError(f"unknown GGUF type {qtype!r}; choose from {', '.join(QUANT_TYPES)}")
    if imatrix is not None and qtype in ("f32", "f16"):
        raise QevalInputError(f"GGUF {qtype} is not quantized; imatrix= applies to quantized types only")
    import llama_cpp

    folder = gguf_dir(fingerprint, cache)
    stem = qtype if imatrix is None else f"{qtype}-imatrix-{imatrix[1][:16]}"
    path = folder / f"{stem}.gguf"
    manifest = folder / f"{stem}.json"
    if path.is_file() and manifest.is_file():
        return path
    src = gguf_artefact(model_dir, fingerprint, "f32", cache, progress) if qtype not in ("f32", "f16") else None

    def build(staging: Path) -> None:
        if src is None:
            if progress:
                progress(f"Exporting the baseline to GGUF {qtype.upper()} with llama.cpp's converter (once)")
            export_gguf(model_dir, staging, dtype=qtype)
        else:
            if progress:
                progress(f"Quantizing with llama.cpp to {qtype.upper()}"
                         f"{' with the importance matrix' if imatrix else ''} (once)")
            quantize(src, staging, qtype, imatrix=imatrix[0] if imatrix else None)
        # The manifest describes the file about to be renamed into place (same bytes).
        atomic_write_text(manifest, json.dumps({
            "source_fingerprint": fingerprint, "type": qtype, "recipe": RECIPE,
            **({"imatrix_sha256": imatrix[1]} if imatrix else {}),
            "llama_cpp_python": llama_cpp.__version__, "converter": converter.source(),
            "sha256": sha256_file(staging), "bytes": staging.stat().st_size}, indent=1))

    folder.mkdir(parents=True, exist_ok=True)
    waiting = (lambda: progress(f"Waiting for another qeval making the GGUF {qtype} file")) if progress else None
    return build_once(path, build, complete=lambda p: p.is_file() and manifest.is_file(), on_wait=waiting)
