"""llama.cpp's own HF → GGUF converter, the one that knows every architecture llama.cpp runs.

Where it comes from: the sdist of llama-cpp-python (the pinned version, checked by sha256) vendors
the llama.cpp source it builds, and with it `convert_hf_to_gguf.py`, its `conversion` package and
`gguf-py`. `python -m qeval.quantize.converter install` (scripts/setup.sh runs it) unpacks those three into
the environment, so the converter, the gguf writer it uses and the engine that runs the file are
one llama.cpp commit. No other package ships that converter in a maintained form: PyPI's `gguf`
is gguf-py alone (its release trails llama.cpp's converter), and third-party repackagings of the
script are not tied to the llama.cpp that llama-cpp-python builds.

It runs offline in a child process (its own gguf-py first on the path, never the `gguf` that
qeval imports), so a converter failure is one error line, never a crash of the comparison.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from qeval.errors import QevalInputError

LLAMA_CPP_PYTHON = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_VENDOR = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
SETUP_FIX = ("install it with `python -m qeval.quantize.converter install` (scripts/setup.sh does), or "
             "bring a GGUF with gguf=path/to/model.gguf")


def converter_dir() -> Path:
    env = os.environ.get("QEVAL_LLAMACPP_CONVERTER")
    if env:
        return Path(env).expanduser()
    return Path(sys.prefix) / "share" / "qeval" / f"llama.cpp-convert-{LLAMA_CPP_PYTHON}"


def installed() -> Path:
    """The converter's folder, or one error line naming the fix."""
    folder = converter_dir()
    if not (folder / "convert_hf_to_gguf.py").is_file() or not (folder / "SOURCE.json").is_file():
        raise QevalInputError(f"llama.cpp's GGUF converter is not installed ({folder}); {SETUP_FIX}")
    return folder


def source() -> dict:
    """Where the installed converter came from (for artefact manifests)."""
    return json.loads((installed() / "SOURCE.json").read_text())


def install(dest: Path | None = None, sdist: Path | None = None) -> Path:
    """Unpack the converter from the pinned llama-cpp-python sdist (downloaded with pip, or the
    file given) into `dest`; verified by sha256, replaced atomically. Idempotent."""
    dest = dest or converter_dir()
    if (dest / "SOURCE.json").is_file() and json.loads((dest / "SOURCE.json").read_text()).get(
            "sdist_sha256") == SDIST_SHA256:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp],
                           check=True)
            sdist = Path(tmp) / SDIST
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{sdist.name}: sha256 {digest} is not the pinned {SDIST_SHA256}")
        staging = dest.with_name(dest.name + f".partial{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                rel = m.name[len(_VENDOR):] if m.name.startswith(_VENDOR) else None
                if rel and rel.startswith(_MEMBERS) and (m.isfile() or m.isdir()):
                    m.name = rel
                    tar.extract(m, staging, filter="data")
        (staging / "SOURCE.json").write_text(json.dumps({
            "from": f"llama-cpp-python {LLAMA_CPP_PYTHON} sdist, vendor/llama.cpp", "sdist": SDIST,
            "sdist_sha256": SDIST_SHA256, "gguf_py": _gguf_py_version(staging)}, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        staging.replace(dest)
    return dest


def _gguf_py_version(folder: Path) -> str:
    for line in (folder / "gguf-py" / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


@functools.lru_cache(maxsize=4)
def _text_architectures(init_file: str) -> frozenset[str]:
    """The HF architecture names the converter maps to a text model class (its TEXT_MODEL_MAP),
    read from its source without importing it (that would import torch and its gguf-py)."""
    for node in ast.parse(Path(init_file).read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "TEXT_MODEL_MAP" for t in targets):
                return frozenset(ast.literal_eval(node.value))
    raise RuntimeError(f"{init_file}: no TEXT_MODEL_MAP; the converter's layout changed")


def architecture(config: dict) -> str | None:
    """The architecture name the converter dispatches on (its get_model_architecture rule: the
    text_config's own architectures win over the top-level ones)."""
    arches = (config.get("text_config") or {}).get("architectures") or config.get("architectures") or []
    return str(arches[0]) if arches else None


def check_exportable(model_dir: Path, variant: str) -> None:
    """Before any model time: the converter knows this checkpoint's architecture."""
    conv = installed()
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise QevalInputError(f"variant {variant!r}: {model_dir} has no readable config.json to export "
                              "to GGUF; bring a GGUF with gguf=path/to/model.gguf") from None
    arch = architecture(config)
    if arch is None or arch not in _text_architectures(str(conv / "conversion" / "__init__.py")):
        raise QevalInputError(
            f"variant {variant!r}: llama.cpp's converter (llama-cpp-python {LLAMA_CPP_PYTHON}) cannot "
            f"export architecture {arch or 'unknown (config.json names none)'} of {model_dir}; "
            "bring a GGUF with gguf=path/to/model.gguf or drop the variant")


PROBE = ("Metformin 500 mg twice daily; eGFR 42 mL/min/1.73m2 (was 58).\n\n  Indented line, "
         "tabs\tand   spaces, ALL CAPS, don't, can't, O'Brien, 3.14159, 1,000,000 and 2025-11-22."
         " Non-ASCII: café, naïve, µg, ±, ≥ 90%, —\n\n1.2 Heading after a blank line\n\n\t3 items")


def convert(model_dir: Path, out: Path, outtype: str, pre_candidates: list[str | None]) -> str | None:
    """Run convert_hf_to_gguf.py on model_dir, with the first BPE pre-tokenizer setting of
    `pre_candidates` under which llama.cpp tokenises probe text as the HF tokenizer does (None:
    the converter's own choice by its hash of the tokenizer; a name: that one, forced). Each is
    tried on a vocabulary-only file first, in one child process. Returns the setting used."""
    conv = installed()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("NO_LOCAL_GGUF", None)
    code = "from qeval.quantize.converter import _child_main; _child_main()"
    request = {"converter": str(conv), "model": str(model_dir.resolve()), "out": str(out.resolve()),
               "outtype": outtype, "candidates": pre_candidates}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(request)],
                          capture_output=True, text=True, env=env, cwd=str(conv))
    chosen = [line for line in proc.stdout.splitlines() if line.startswith("QEVAL_PRE=")]
    if proc.returncode == 0 and chosen:
        value = chosen[-1].removeprefix("QEVAL_PRE=")
        return value or None
    if proc.returncode == 3:
        raise QevalInputError(f"{model_dir}: no llama.cpp pre-tokenizer reproduces this tokenizer's token "
                              "ids; bring a GGUF with gguf=path/to/model.gguf")
    log = (proc.stderr + proc.stdout).strip().splitlines()
    last = next((line.strip() for line in reversed(log) if line.strip()), f"exit code {proc.returncode}")
    raise QevalInputError(f"llama.cpp's converter could not convert {model_dir} to GGUF "
                          f"({last[:200]}); bring a GGUF with gguf=path/to/model.gguf")


def tokens_match(gguf_path: Path, model_dir: Path) -> bool:
    """llama.cpp (the file's vocabulary) and the HF tokenizer give the same ids on probe text."""
    import llama_cpp
    from transformers import AutoTokenizer

    from qeval.util.stderr import quiet_stderr

    tok = AutoTokenizer.from_pretrained(model_dir)
    with quiet_stderr():
        llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        return all(llm.tokenize(t.encode(), add_bos=False, special=False)
                   == tok(t, add_special_tokens=False).input_ids for t in [PROBE, *PROBE.split("\n")])
    finally:
        llm.close()


def _child_main() -> None:
    """In the child: the converter's own folder and gguf-py first on the path; each
    pre-tokenizer setting tried on a vocabulary-only file, then the whole model converted with
    the first that tokenises as the HF tokenizer does. Exit 3: none does."""
    req = json.loads(sys.argv[1])
    conv, model, out = req["converter"], Path(req["model"]), Path(req["out"])
    sys.path[:0] = [conv, str(Path(conv) / "gguf-py")]
    import conversion.base as base
    import convert_hf_to_gguf

    own = base.TextModel.get_vocab_base_pre

    def run(pre: str | None, target: Path, *extra: str) -> None:
        base.TextModel.get_vocab_base_pre = own if pre is None else (lambda self, tokenizer: pre)
        sys.argv = ["convert_hf_to_gguf.py", str(model), "--outfile", str(target), "--outtype",
                    req["outtype"], *extra]
        convert_hf_to_gguf.main()

    scratch = out.with_name(f".{out.name}.vocab.gguf")
    try:
        for pre in req["candidates"]:
            try:
                run(pre, scratch, "--vocab-only")
            except NotImplementedError:  # the converter does not know this tokenizer's hash
                continue
            try:
                same, whole = tokens_match(scratch, model), False
            except ValueError:  # some architectures' vocabulary-only files do not load (phi3)
                run(pre, out)
                same, whole = tokens_match(out, model), True
            if same:
                if not whole:
                    run(pre, out)
                print(f"QEVAL_PRE={pre or ''}")
                return
    finally:
        scratch.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    sys.exit(3)


if __name__ == "__main__":
    if sys.argv[1:2] != ["install"]:
        sys.exit("usage: python -m qeval.quantize.converter install")
    print(f"llama.cpp converter installed in {install()}")
