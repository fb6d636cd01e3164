"""llama.cpp importance matrix (imatrix) from a calibration set, computed in transformers.

llama.cpp's `llama-imatrix` is not shipped by llama-cpp-python, so qeval computes the same
statistic itself: the calibration windows (drawn as for GPTQ/AWQ, qeval/quantize/gptq_awq.py
calibration_windows) run through the baseline in float32, and for every linear layer of the
transformer blocks the per-input-column sum of squared activations and the number of tokens are
accumulated (llama-imatrix's `in_sum2` and `counts`; the quantizer uses their ratio, the mean of
x² per column, as each column's weight in the rounding error it minimises). HF layer names become
GGUF tensor names by gguf-py's TensorNameMap (the map llama.cpp's converter names tensors with),
checked against the F32 GGUF's own tensors and row lengths.

The result is written in llama.cpp's GGUF imatrix format (`general.type = imatrix`,
`imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`, `<tensor>.in_sum2`,
`<tensor>.counts`), so `llama-quantize --imatrix FILE` can reuse it, and cached by the inputs
that make it; its sha256 names it in the quantized artefact and the record. The quantizer gets
it through llama.h's `llama_model_imatrix_data` array (llama-cpp-python 0.3.36: a plain C struct
{name, data, size} list ended by a NULL name, so no C++ is needed; llama.cpp copies it into its
own map).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from qeval.errors import QevalInputError
from qeval.quantize.calibration_sets import CalibrationSet
from qeval.util.digest import sha256_file
from qeval.util.fileio import atomic_write_text
from qeval.util.locking import build_once
from qeval.util.versions import installed_versions

RECIPE = 1  # bump when the statistic or the file changes
DEFAULTS = {"samples": 64, "seqlen": 256, "seed": 0}
LIBRARIES = ("transformers", "torch")


def collect_device() -> str:
    """Where the activations are computed: the first GPU when there is one (float32 either way)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def imatrix_key(model_fingerprint: str, calib: CalibrationSet, settings: dict) -> str:
    blob = json.dumps({"model": model_fingerprint, "calib": calib.sha256,
                       "settings": {k: settings[k] for k in DEFAULTS}, "recipe": RECIPE,
                       "device": collect_device(), "versions": installed_versions(LIBRARIES)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def collect(model_dir: Path, windows: list[list[int]]) -> dict[str, tuple[np.ndarray, int]]:
    """HF linear layer name → (per-column sum of x², tokens) over the windows, float32 model.
    The output head is left out, as llama-imatrix leaves it out by default."""
    import torch
    from transformers import AutoModelForCausalLM

    device = collect_device()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)
    stats: dict[str, list] = {}
    hooks = []
    head = model.get_output_embeddings()

    def hook(name):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64 if device == "cpu" else torch.float32)
            entry = stats.setdefault(name, [torch.zeros(x.shape[-1], dtype=torch.float64), 0])
            entry[0] += (x * x).sum(0).to("cpu", torch.float64)  # one window in the GPU's float32
            entry[1] += x.shape[0]
        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            hooks.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            for w in windows:
                model(input_ids=torch.tensor([w], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v[0].numpy(), int(v[1])) for k, v in stats.items()}


def gguf_tensor_names(f32_gguf: Path, hf_stats: dict[str, tuple[np.ndarray, int]]) -> dict[str, str]:
    """HF linear name → the GGUF weight tensor it became, for those the F32 file holds with rows of
    the same length (the imatrix is per input column)."""
    import gguf

    reader = gguf.GGUFReader(str(f32_gguf))
    arch_name = str(reader.fields["general.architecture"].contents())
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    if arch is None:
        raise QevalInputError(f"{f32_gguf}: gguf-py does not know architecture {arch_name!r}; "
                              "imatrix= needs it to name the tensors")
    blocks = int(reader.fields[f"{arch_name}.block_count"].contents())
    name_map = gguf.get_tensor_name_map(arch, blocks)
    row_len = {t.name: int(t.shape[0]) for t in reader.tensors}  # ggml ne[0]: the row length
    out = {}
    for hf_name, (sum2, _) in hf_stats.items():
        name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:  # e.g. "model.language_model.layers.0..." in a multimodal wrapper
            name = name_map.get_name(hf_name.split(".", 1)[-1], try_suffixes=(".weight",))
        if name is not None and row_len.get(f"{name}.weight") == len(sum2):
            out[hf_name] = f"{name}.weight"
    return out


def write_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, int]], *, dataset: str,
                  chunk_count: int, chunk_size: int) -> None:
    """llama.cpp's GGUF imatrix file (tools/imatrix/imatrix.cpp save_imatrix): per tensor
    `<name>.in_sum2` (F32, ne = [columns, 1]) and `<name>.counts` (F32, ne = [1, 1])."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", [dataset])
    writer.add_uint32("imatrix.chunk_count", chunk_count)
    writer.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(entries):
        sum2, count = entries[name]
        writer.add_tensor(f"{name}.in_sum2", np.asarray(sum2, dtype=np.float32).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[count]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """A GGUF imatrix file → tensor name → mean x² per column (sum / count per expert), what
    llama-quantize hands the quantizer (tools/quantize/quantize.cpp load_imatrix)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    if str(reader.fields.get("general.type").contents() if "general.type" in reader.fields else "") != "imatrix":
        raise QevalInputError(f"{path} is not a llama.cpp imatrix GGUF (general.type is not 'imatrix')")
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    out = {}
    for key, sums in tensors.items():
        if not key.endswith(".in_sum2"):
            continue
        name = key.removesuffix(".in_sum2")
        counts = tensors.get(f"{name}.counts")
        if counts is None:
            raise QevalInputError(f"{path}: {name} has sums but no counts")
        counts = counts.reshape(-1)
        sums = sums.reshape(len(counts), -1)
        out[name] = (sums / np.maximum(counts, 1)[:, None]).reshape(-1).astype(np.float32)
    return out


def _imatrix_paths(model_fingerprint: str, calib: CalibrationSet, settings: dict, cache: Path) -> tuple[Path, Path]:
    key = imatrix_key(model_fingerprint, calib, settings)
    return cache / "imatrix" / f"{key[:16]}.imatrix.gguf", cache / "imatrix" / f"{key[:16]}.json"


def cached_imatrix_manifest(model_fingerprint: str, calib: CalibrationSet, settings: dict, cache: Path) -> dict | None:
    """The cached importance matrix's manifest, or None when it is not computed yet; never builds."""
    path, manifest = _imatrix_paths(model_fingerprint, calib, settings, cache)
    return json.loads(manifest.read_text()) if path.is_file() and manifest.is_file() else None


def imatrix_artefact(model_dir: Path, model_fingerprint: str, f32_gguf: Path, calib: CalibrationSet,
                     settings: dict, cache: Path, progress=None) -> tuple[Path, dict]:
    """The cached imatrix GGUF for (weights, calibration texts, samples/seqlen/seed, versions) and
    its manifest (sha256, tensors covered, seconds); made once under a lock."""
    from qeval.quantize.gptq_awq import calibration_windows

    path, manifest = _imatrix_paths(model_fingerprint, calib, settings, cache)
    folder = path.parent
    if path.is_file() and manifest.is_file():
        return path, json.loads(manifest.read_text())

    def build(staging: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        windows = calibration_windows(calib.texts, lambda t: tok(t, add_special_tokens=False).input_ids,
                                      samples=settings["samples"], seqlen=settings["seqlen"], seed=settings["seed"])
        if progress:
            progress(f"Computing the importance matrix on calibration set {calib.name} ({len(windows)} x "
                     f"{settings['seqlen']} tokens, seed {settings['seed']}) in transformers; once, then cached")
        started = time.perf_counter()
        stats = collect(model_dir, windows)
        names = gguf_tensor_names(f32_gguf, stats)
        if not names:
            raise QevalInputError(f"{model_dir}: no linear layer maps to a GGUF tensor; imatrix= cannot "
                                  "calibrate this architecture")
        entries = {names[k]: v for k, v in stats.items() if k in names}
        write_imatrix(staging, entries, dataset=f"{calib.name} (sha256 {calib.sha256[:12]})",
                      chunk_count=len(windows), chunk_size=settings["seqlen"])
        atomic_write_text(manifest, json.dumps({
            "sha256": sha256_file(staging), "calibration": calib.describe(), "model_fingerprint": model_fingerprint,
            "settings": {k: settings[k] for k in DEFAULTS}, "tensors": len(entries), "device": collect_device(),
            "unmapped_linear_layers": sorted(set(stats) - set(names)), "versions": installed_versions(LIBRARIES),
            "seconds": round(time.perf_counter() - started, 1), "recipe": RECIPE}, indent=1, sort_keys=True))

    folder.mkdir(parents=True, exist_ok=True)
    waiting = (lambda: progress("Waiting for another qeval computing the same importance matrix")) if progress else None
    build_once(path, build, complete=lambda p: p.is_file() and manifest.is_file(), on_wait=waiting)
    return path, json.loads(manifest.read_text())


def c_imatrix(values: dict[str, np.ndarray]):
    """llama.h's `llama_model_imatrix_data` array ended by a NULL name, and the buffers it points
    into (keep them alive while llama.cpp reads it)."""
    import ctypes

    import llama_cpp

    keep = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
    for i, (name, v) in enumerate(sorted(values.items())):
        buf = np.ascontiguousarray(v, dtype=np.float32)
        keep.append(buf)
        arr[i].name = name.encode()
        arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = buf.size
    arr[len(values)].name = None
    return arr, keep
