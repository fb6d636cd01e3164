"""Calibration sets for GPTQ / AWQ, and the contamination guard.

A set is named (a built-in folder under calibration/ with a manifest), a text or JSONL file the
user brings, or `hf:<dataset>` when the hub is reachable. A set is known by the sha256 of its texts,
so editing a file makes new artefacts. Calibrating on the exam hides the damage the exam should
show: before quantizing, every calibration set is checked for word n-gram overlap with every task
being evaluated.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from qeval.errors import QevalInputError
from qeval.types import Task
from qeval.util.yamlio import read_yaml

MANIFEST = "manifest.yaml"
# 13-word n-grams: the length GPT-3 and lm-eval's decontamination use; shorter n-grams match
# stock clinical phrases ("twice daily with food for seven days") that are not leakage.
NGRAM = 13
# Refuse when more than this share of a task's items (or passages) share an n-gram with the set.
MAX_CONTAMINATED_SHARE = 0.01


class CalibrationManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    source: str
    licence: str
    file: str = "samples.jsonl"
    n_samples: int
    n_words: int
    n_tokens: int
    tokenizer: str  # what n_tokens was counted with
    sha256: str  # of the texts (see texts_sha256), not of the file's bytes


@dataclass(frozen=True)
class CalibrationSet:
    name: str
    texts: tuple[str, ...]
    sha256: str
    source: str
    licence: str = "unknown"

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "source": self.source, "licence": self.licence,
                "n_samples": len(self.texts), "n_words": sum(len(t.split()) for t in self.texts)}


def texts_sha256(texts: Iterable[str]) -> str:
    """Content identity: the same texts give the same hash whatever file format held them."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def builtin_sets(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob(f"*/{MANIFEST}"))


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise QevalInputError(f"{path} line {n}: not valid JSON; each line must be an object "
                                  'with a "text" field') from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise QevalInputError(f'{path} line {n}: needs a non-empty string field "text"')
        texts.append(row["text"])
    return texts


def _read_text(path: Path) -> list[str]:
    """A plain text file: samples are separated by blank lines."""
    return [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]


def _from_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        texts = _read_jsonl(path)
    elif path.suffix in (".txt", ".md"):
        texts = _read_text(path)
    else:
        raise QevalInputError(f"calibration file {path}: use .jsonl (one {{\"text\": ...}} per line) "
                              "or .txt (samples separated by blank lines)")
    if not texts:
        raise QevalInputError(f"calibration file {path} holds no text samples")
    return texts


def load_builtin(directory: Path) -> CalibrationSet:
    path = directory / MANIFEST
    try:
        manifest = CalibrationManifest.model_validate(read_yaml(path))
    except ValidationError as exc:
        e = exc.errors()[0]
        raise QevalInputError(f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    texts = _from_file(directory / manifest.file)
    digest = texts_sha256(texts)
    if digest != manifest.sha256 or len(texts) != manifest.n_samples:
        raise QevalInputError(
            f"{directory / manifest.file}: its texts no longer match {path} (sha256 or sample count); "
            "restore the file or regenerate the manifest with `qeval calibration-manifest`")
    return CalibrationSet(manifest.name, tuple(texts), digest, manifest.source, manifest.licence)


def load_calibration(spec: str, root: Path) -> CalibrationSet:
    """`clinical` (built-in), `path/to/file.jsonl|txt`, or `hf:<dataset>[:<split>]` (online)."""
    if (root / spec / MANIFEST).is_file():
        return load_builtin(root / spec)
    if spec.startswith("hf:"):
        return _from_hub(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        texts = _from_file(path)
        return CalibrationSet(path.stem, tuple(texts), texts_sha256(texts), f"file {path}")
    raise QevalInputError(f"calibration set {spec!r} not found; use a built-in set "
                          f"({', '.join(builtin_sets(root)) or 'none'}), a .jsonl/.txt file or hf:<dataset>")


def _from_hub(spec: str) -> CalibrationSet:
    _, name, *rest = spec.split(":")
    split = rest[0] if rest else "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown dataset, missing package: one clear line
        raise QevalInputError(f"calibration set {spec!r}: the hub could not provide it "
                              f"({type(exc).__name__}); save it as a .jsonl file and pass the path") from None
    if "text" not in ds.column_names:
        raise QevalInputError(f"calibration set {spec!r} has no `text` column (has {', '.join(ds.column_names)})")
    texts = [t for t in ds["text"] if isinstance(t, str) and t.strip()]
    return CalibrationSet(name, tuple(texts), texts_sha256(texts), f"hub dataset {name} ({split})")


def write_manifest(directory: Path, *, name: str, description: str, source: str, licence: str,
                   tokenizer_name: str, count_tokens) -> CalibrationManifest:
    """(Re)write a built-in set's manifest from its samples file."""
    texts = _from_file(directory / "samples.jsonl")
    manifest = CalibrationManifest(
        name=name, description=description, source=source, licence=licence, n_samples=len(texts),
        n_words=sum(len(t.split()) for t in texts), n_tokens=sum(count_tokens(t) for t in texts),
        tokenizer=tokenizer_name, sha256=texts_sha256(texts))
    (directory / MANIFEST).write_text(yaml.safe_dump(manifest.model_dump(), sort_keys=False))
    return manifest


# ---------------------------------------------------------------- contamination guard

_WORD = re.compile(r"[a-z0-9]+")


def word_ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def task_units(task: Task) -> list[tuple[str, str]]:
    """(id, text) of every item or passage a task scores: question and options, or the passage."""
    if task.passages:
        return [(p.id, p.text) for p in task.passages]
    return [(s.id, " ".join([s.question, *s.choices])) for s in task.samples]


@dataclass(frozen=True)
class Overlap:
    task: str
    units: int
    contaminated: int
    examples: tuple[str, ...]  # ids only: never text

    @property
    def share(self) -> float:
        return self.contaminated / self.units if self.units else 0.0


def contamination(calib: CalibrationSet, tasks: Sequence[Task], n: int = NGRAM) -> list[Overlap]:
    grams: set[tuple[str, ...]] = set()
    for t in calib.texts:
        grams |= word_ngrams(t, n)
    out = []
    for task in tasks:
        hits = [uid for uid, text in task_units(task) if not grams.isdisjoint(word_ngrams(text, n))]
        out.append(Overlap(task.spec.id, task.size(), len(hits), tuple(hits[:5])))
    return out


def check_contamination(calib: CalibrationSet, tasks: Sequence[Task], *,
                        max_share: float = MAX_CONTAMINATED_SHARE, allow: bool = False) -> list[Overlap]:
    """Refuse a calibration set that shares n-grams with too many evaluated items."""
    overlaps = contamination(calib, tasks)
    bad = [o for o in overlaps if o.share > max_share]
    if bad and not allow:
        o = max(bad, key=lambda x: x.share)
        raise QevalInputError(
            f"calibration set {calib.name!r} overlaps task {o.task!r}: {o.contaminated}/{o.units} items "
            f"share a {NGRAM}-word sequence with it (e.g. {', '.join(o.examples[:3])}; limit "
            f"{max_share:.0%}); calibrating on the test hides the damage. Use another set, or pass "
            "--allow-contamination to proceed anyway")
    return overlaps
