"""GPTQ and AWQ candidates: the baseline quantized by gptqmodel on a calibration set (cached and
fingerprinted), or a checkpoint the user brings (`gptq=PATH`, `awq=PATH`, compressed-tensors too).

An impossible configuration (a group size that does not divide a layer width, a bit width the
method has no kernel for) is refused before any model is loaded, with the valid choices listed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qeval.quantize.calibration_sets import CalibrationSet
from qeval.errors import QevalInputError
from qeval.util.fileio import atomic_write_text
from qeval.util.locking import build_once
from qeval.types import VariantSpec
from qeval.util.versions import installed_versions
from qeval.methods import method

RECIPE = 4  # bump when the way artefacts are made changes
# Parameters that choose how an artefact is scored, not how it is made.
SCORING_ONLY = frozenset({"kernel"})
GROUP_CHOICES = (16, 32, 64, 128, 256)  # -1 (one group per row) is always possible
DEFAULTS = {"bits": 4, "group": 64, "sym": True, "calib": "clinical", "samples": 64, "seqlen": 256, "seed": 0}
LIBRARIES = ("gptqmodel", "transformers", "torch", "optimum")
# What gptqmodel's loader writes into config.json for each format it can score.
CHECKPOINT_FORMATS = {"gptq": "gptq", "awq": "awq", "compressed-tensors": None}


def library_versions() -> dict[str, str]:
    return installed_versions(LIBRARIES)


def require_gptqmodel(variant: VariantSpec) -> None:
    try:
        importlib.metadata.version("gptqmodel")
        importlib.metadata.version("optimum")
    except importlib.metadata.PackageNotFoundError:
        raise QevalInputError(
            f"variant {variant.name!r} needs gptqmodel and optimum; install them with "
            "`pip install -e '.[gptq]'` (see README)") from None


def settings(variant: VariantSpec) -> dict:
    """The variant's parameters over the defaults."""
    return {**DEFAULTS, **variant.params}


def layer_widths(config: dict) -> dict[str, int]:
    """Input widths of the linear layers GPTQ/AWQ quantize (a group runs along the input)."""
    text = config.get("text_config", config)
    try:
        hidden = int(text["hidden_size"])
        inter = int(text["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        raise QevalInputError("model config.json lacks hidden_size / intermediate_size; GPTQ/AWQ "
                              "support decoder-only transformer checkpoints") from None
    heads = int(text.get("num_attention_heads", 1))
    head_dim = int(text.get("head_dim") or hidden // heads)
    return {"hidden_size (q/k/v, gate/up)": hidden, "attention output (o_proj)": heads * head_dim,
            "intermediate_size (down_proj)": inter}


def valid_groups(widths: dict[str, int]) -> list[int]:
    return [-1] + [g for g in GROUP_CHOICES if all(w % g == 0 for w in widths.values())]


def check_variant(variant: VariantSpec, config: dict | None) -> None:
    """Refuse what cannot work before minutes are spent: unknown parameters, bits without a
    kernel, a group size that does not divide every quantized layer's width."""
    p = variant.params
    if "path" in p:
        extra = sorted(set(p) - {"path", "kernel"})
        if extra:
            raise QevalInputError(f"variant {variant.name!r}: a checkpoint you bring takes no "
                                  f"parameters ({', '.join(extra)}); it is scored as it is")
        return
    m = method(variant.method)
    unknown = sorted(set(p) - m.params)
    if unknown:
        raise QevalInputError(f"variant {variant.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                              f"{m.name} takes {', '.join(sorted(m.params))}")
    s = settings(variant)
    for key in ("bits", "group", "samples", "seqlen", "seed"):
        if not isinstance(s[key], int) or isinstance(s[key], bool):
            raise QevalInputError(f"variant {variant.name!r}: {key} must be an integer, not {s[key]!r}")
    for key in ("sym", "act_order", "clip"):
        if key in s and not isinstance(s[key], bool):
            raise QevalInputError(f"variant {variant.name!r}: {key} must be true or false")
    if "damp" in s and not (isinstance(s["damp"], (int, float)) and 0 < s["damp"] < 1):
        raise QevalInputError(f"variant {variant.name!r}: damp must be a number between 0 and 1")
    if s["bits"] not in m.bits:
        raise QevalInputError(f"variant {variant.name!r}: {m.name} supports bits "
                              f"{', '.join(map(str, m.bits))}, not {s['bits']}")
    if s["samples"] < 1 or s["seqlen"] < 16:
        raise QevalInputError(f"variant {variant.name!r}: samples must be >= 1 and seqlen >= 16")
    if config is not None:
        widths = layer_widths(config)
        ok = valid_groups(widths)
        if s["group"] not in ok:
            sizes = ", ".join(f"{k} {v}" for k, v in widths.items())
            g = s["group"]
            if g > 0 and all(w % g == 0 for w in widths.values()):
                problem = (f"group={g} divides this model's layer widths ({sizes}) but is not a "
                           f"group size qeval quantizes with (-1 or {', '.join(map(str, GROUP_CHOICES))})")
            else:
                problem = f"group={g} does not divide this model's layer widths ({sizes})"
            raise QevalInputError(f"variant {variant.name!r}: {problem}; choose group from "
                                  f"{', '.join(map(str, ok))}")


def scoring_kernel(variant: VariantSpec, device: str) -> str | None:
    """gptqmodel backend that scores the artefact (None: gptqmodel's own choice). On a CPU,
    gptqmodel's fast kernels (TorchAten, TorchFused) round activations to bfloat16 inside the int4
    matmul; GPTQ's `torch` kernel dequantizes to the baseline's float32 instead, so the comparison
    measures the quantized weights alone. `kernel=auto` (or a backend name) overrides."""
    chosen = variant.params.get("kernel")
    if chosen is not None:
        return None if chosen == "auto" else str(chosen)
    if not device.startswith("cuda"):
        return method(variant.method).cpu_kernel
    return None


def loading_config(variant: VariantSpec, checkpoint: Path, device: str):
    """transformers' loading attributes for a quantized checkpoint: which gptqmodel kernel."""
    kernel = scoring_kernel(variant, device)
    qc = read_config(checkpoint).get("quantization_config") or {}
    if kernel is None or qc.get("quant_method") not in ("gptq", "awq"):
        return None
    from transformers import AwqConfig, GPTQConfig

    try:
        if qc["quant_method"] == "gptq":
            return GPTQConfig(bits=int(qc.get("bits", 4)), backend=kernel)
        return AwqConfig(bits=int(qc.get("bits", 4)), backend=kernel)
    except ValueError as exc:
        raise QevalInputError(f"variant {variant.name!r}: kernel={kernel} is not a gptqmodel backend "
                              f"for this checkpoint ({exc})") from None


def read_config(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise QevalInputError(f"{directory}/config.json: cannot read it ({exc}); is it an HF checkpoint?") from None


def checkpoint_format(directory: Path, variant: VariantSpec) -> str:
    """A checkpoint the user brings: check it exists and is quantized the way its name says."""
    if not directory.is_dir():
        raise QevalInputError(f"variant {variant.name!r}: checkpoint directory {directory} does not "
                              "exist; give a local directory (or a hub id when online)")
    qc = read_config(directory).get("quantization_config")
    fmt = str((qc or {}).get("quant_method", "")).lower()
    if fmt not in CHECKPOINT_FORMATS:
        raise QevalInputError(
            f"variant {variant.name!r}: {directory} is not a GPTQ, AWQ or compressed-tensors checkpoint "
            f"(config.json quantization_config.quant_method is {fmt or 'missing'})")
    expected = CHECKPOINT_FORMATS[fmt]
    if expected is not None and expected != variant.method:
        raise QevalInputError(f"variant {variant.name!r}: {directory} holds a {fmt} checkpoint; "
                              f"pass it as {fmt}={directory}")
    return fmt


def calibration_windows(texts: Sequence[str], tokenize: Callable[[str], list[int]], *, samples: int,
                        seqlen: int, seed: int) -> list[list[int]]:
    """`samples` windows of `seqlen` tokens drawn with `seed` from the set's texts joined end to end
    (the C4 recipe of the GPTQ paper): the seed changes which text the quantizer sees."""
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenize(t + "\n\n"))
    if len(stream) <= seqlen:
        raise QevalInputError(f"calibration text has {len(stream)} tokens, fewer than seqlen={seqlen}; "
                              "use a larger set or a smaller seqlen")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(stream) - seqlen) for _ in range(samples)]
    return [stream[s:s + seqlen] for s in starts]


def made_params(variant: VariantSpec) -> dict:
    """The settings that shape the artefact (the calibration set enters by its hash, and
    scoring-only parameters do not make another artefact)."""
    return {k: v for k, v in settings(variant).items() if k != "calib" and k not in SCORING_ONLY}


def artefact_key(model_fingerprint: str, variant: VariantSpec, calib: CalibrationSet) -> str:
    blob = json.dumps({"model": model_fingerprint, "method": variant.method, "params": made_params(variant),
                       "calib": calib.sha256, "versions": library_versions(), "recipe": RECIPE},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Artefact:
    path: Path
    manifest: dict


def _quantize_config(variant: VariantSpec):
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD

    s = settings(variant)
    if variant.method == "awq":
        return QuantizeConfig(bits=s["bits"], group_size=s["group"], sym=s["sym"],
                              quant_method=METHOD.AWQ, format=FORMAT.GEMM)
    kw = {"damp_percent": float(s["damp"])} if "damp" in s else {}
    return QuantizeConfig(bits=s["bits"], group_size=s["group"], sym=s["sym"],
                          desc_act=bool(s.get("act_order", False)), **kw)


# Quantization runs in a child process: gptqmodel's own console output (progress redraws, tables)
# stays out of qeval's, its layer counter drives qeval's progress bar, its memory is returned
# when it ends, and a crash inside it becomes one clear error instead of a dead comparison.
# The calibration windows travel on stdin, never through a file.
# The child reads its job from stdin and first takes the parent's sys.path (as multiprocessing's
# spawn does), so it imports the qeval the parent runs — installed, editable or a source tree —
# without PYTHONPATH or a checkout path.
CHILD_BOOT = "import json, sys; job = json.loads(sys.stdin.read()); sys.path[:0] = job.pop('sys_path'); "
_CHILD = CHILD_BOOT + "from qeval.quantize.gptq_awq import _quantize_main; _quantize_main(job)"


def child_job(job: dict) -> bytes:
    """The job as the child reads it: with the parent's import path, absolute (the child works in
    another folder)."""
    import sys

    return json.dumps({**job, "sys_path": [os.path.abspath(p) for p in sys.path]}).encode()
_LAYER = re.compile(rb"\[(\d+) of (\d+)\]")


def quantize_dtype(name: str, cuda: bool) -> str:
    """The dtype the quantizer works in: float16 on a GPU, the method's own choice on a CPU
    (qeval/variants/gptq.py, awq.py say why); the artefact's manifest says which."""
    if cuda:
        return "float16"
    return method(name).cpu_quantize_dtype


def _without_clip_search() -> None:
    """AWQ's weight-clipping search (after the scale search) is most of its time on a CPU; the
    `clip=false` parameter skips it, trading some accuracy for minutes."""
    from gptqmodel.looper.awq_processor import AWQProcessor

    original = AWQProcessor.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.apply_clip = False

    AWQProcessor.__init__ = init


def _quantize_main(job: dict) -> None:
    import torch
    from gptqmodel import GPTQModel

    variant = VariantSpec.model_validate(job["variant"])
    torch.manual_seed(int(settings(variant)["seed"]))
    cuda = torch.cuda.is_available()
    if variant.method == "awq" and not settings(variant).get("clip", True):
        _without_clip_search()
    qmodel = GPTQModel.load(job["model_path"], _quantize_config(variant), device="cuda:0" if cuda else "cpu",
                            dtype=getattr(torch, quantize_dtype(variant.method, cuda)))
    from gptqmodel.utils.backend import BACKEND

    # AWQ's automatic packing kernel is CUDA-only; on a CPU its portable torch kernel packs.
    backend = BACKEND.AWQ_TORCH if variant.method == "awq" and not cuda else BACKEND.AUTO
    started = time.perf_counter()
    qmodel.quantize([{"input_ids": w, "attention_mask": [1] * len(w)} for w in job["windows"]],
                    batch_size=1, backend=backend)
    seconds = time.perf_counter() - started
    qmodel.save(job["out"])
    print(f"QEVAL_QUANTIZED {seconds:.1f} {'cuda' if cuda else 'cpu'}", flush=True)


def _run_child(job: dict, layers: int, bar=None) -> tuple[float, str]:
    import subprocess
    import sys
    import tempfile
    from collections import deque
    from contextlib import nullcontext

    env = dict(os.environ)
    # gptqmodel's default on 2 cores is 1 worker, fewer than its loader pool asks for.
    env.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, (os.cpu_count() or 2) // 2)))
    # gptqmodel writes per-layer logs under ./logs: the child works in a private folder that
    # goes away with it, so nothing lands in the user's working directory.
    workdir = tempfile.mkdtemp(prefix="qeval-quantize-")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=workdir)
    tail: deque[bytes] = deque(maxlen=30)
    done, result = 0, None
    with (bar(f"quantizing {job['variant']['name']} (layers)", layers) if bar else nullcontext()) as advance:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(child_job(job))
        proc.stdin.close()
        buffer = b""
        while chunk := proc.stdout.read1(65536):
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for line in filter(None, (x.strip() for x in lines)):
                tail.append(line)
                if line.startswith(b"QEVAL_QUANTIZED"):
                    result = line.split()[1:]
                m = _LAYER.search(line)
                if m and advance and int(m.group(1)) + 1 > done and b"Quantizing" in line:
                    advance(int(m.group(1)) + 1 - done)
                    done = int(m.group(1)) + 1
    code = proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    if code != 0 or result is None:
        errors = [x.decode(errors="replace") for x in tail if b"Error" in x or b"error" in x]
        reason = (errors[-1] if errors else f"exit code {code}")[:300]
        raise QevalInputError(f"quantizing {job['variant']['name']} failed in gptqmodel: {reason}")
    return float(result[0]), result[1].decode()


def artefact_dir(model_fingerprint: str, variant: VariantSpec, calib: CalibrationSet, cache: Path) -> Path:
    """Where the artefact for (weights, method, params, calibration set, versions) lives in the cache."""
    return cache / "artefacts" / f"{variant.method}-{artefact_key(model_fingerprint, variant, calib)[:16]}"


def cached_manifest(model_fingerprint: str, variant: VariantSpec, calib: CalibrationSet, cache: Path) -> dict | None:
    """How the cached artefact was made (its manifest), or None when it is not made yet; never builds."""
    manifest_path = artefact_dir(model_fingerprint, variant, calib, cache) / "qeval_artefact.json"
    return json.loads(manifest_path.read_text()) if manifest_path.is_file() else None


def ensure_artefact(model_path: Path, model_fingerprint: str, variant: VariantSpec,
                    calib: CalibrationSet, cache: Path, progress=None, bar=None) -> Artefact:
    """The quantized checkpoint for (weights, method, params, calibration set, library versions):
    made once (under a lock, into a temporary directory then renamed: qeval/util/locking.py), so
    parallel runs make it once and a killed run never leaves a half artefact that looks whole."""
    target = artefact_dir(model_fingerprint, variant, calib, cache)
    manifest_path = target / "qeval_artefact.json"
    if manifest_path.is_file():
        return Artefact(target, json.loads(manifest_path.read_text()))
    require_gptqmodel(variant)
    made: dict = {}

    def build(staging: Path) -> None:
        from transformers import AutoTokenizer

        s = settings(variant)
        tok = AutoTokenizer.from_pretrained(model_path)
        windows = calibration_windows(calib.texts, lambda t: tok(t, add_special_tokens=False).input_ids,
                                      samples=s["samples"], seqlen=s["seqlen"], seed=s["seed"])
        if progress:
            progress(f"Quantizing {variant.name}: {variant.method} on calibration set {calib.name} "
                     f"({len(windows)} x {s['seqlen']} tokens, seed {s['seed']}); once, then cached")
        layers = int(read_config(model_path).get("num_hidden_layers", 1))
        seconds, device = _run_child({"model_path": str(model_path), "variant": variant.model_dump(mode="json"),
                                      "windows": windows, "out": str(staging)}, layers, bar)
        tok.save_pretrained(staging)
        made.update({"method": variant.method,
                     "params": made_params(variant),
                     "calibration": calib.describe(), "model_fingerprint": model_fingerprint,
                     "versions": library_versions(), "quantize_seconds": round(seconds, 1),
                     "quantize_device": device, "quantize_dtype": quantize_dtype(variant.method, device == "cuda"),
                     "recipe": RECIPE})
        atomic_write_text(staging / "qeval_artefact.json", json.dumps(made, indent=1, sort_keys=True))

    waiting = (lambda: progress(f"Waiting for another qeval making {variant.name}'s artefact")) if progress else None
    build_once(target, build, complete=lambda t: (t / "qeval_artefact.json").is_file(), on_wait=waiting)
    # made here: the manifest as written; made by another process meanwhile: theirs
    return Artefact(target, made or json.loads(manifest_path.read_text()))
