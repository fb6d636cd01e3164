"""Render each prompt once, tokenise it, score it with each variant, store per-item records.

The record store is content-addressed: a variant's records for a task are keyed by the model's
fingerprint, the variant, the device and dtype policy, the library versions, the batch size and
the task's content hash. A later compare with the same baseline finds them and skips the model.

Items are scored in chunks of fixed size, by item order, always: batch composition (and so every
floating-point number) is then the same whether a run went through in one go or was killed and
resumed. After each chunk its records are appended to the key's journal; a rerun keeps the whole
chunks the journal holds and scores the rest. While a process scores a key it holds an exclusive
lock on it, so two processes sharing one cache never write the same entry at once.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from qeval.engines.base import Backend, LoglikelihoodRequest, NonFiniteScores, Progress
from qeval.errors import QevalInputError
from qeval.util.fileio import append_durably, atomic_write_bytes, atomic_write_text
from qeval.util.locking import locked
from qeval.kinds.reference_text import BaselineDist
from qeval.types import (
    BackendInfo, GenerationRecord, ItemRecord, RECORD_SCHEMA, Sample, Task, TaskSpec, TextRecord,
    VariantSpec,
)

if TYPE_CHECKING:
    from qeval.kinds.generate import GenerationItem

BASELINE_DIST_FIELDS = tuple(f.name for f in fields(BaselineDist))
R = TypeVar("R", ItemRecord, TextRecord, GenerationRecord)
W = TypeVar("W")  # one item's work: ItemRequests, GenerationItem or PassageTokens
AnyRecord = ItemRecord | TextRecord | GenerationRecord

# Items (multiple_choice, generate) scored together between journal writes, at batch sizes up to
# 16; larger batch sizes get four batches per chunk so that their batches stay full.
CHUNK_ITEMS = 64
# Reference passages per chunk: each window is scored on its own, so this sets only how much
# work a kill can lose (a passage is hundreds of tokens), never a number.
CHUNK_PASSAGES = 8


def chunk_items(batch_size: int) -> int:
    return max(CHUNK_ITEMS, 4 * batch_size)


def render_prompt(spec: TaskSpec, sample: Sample) -> tuple[str, list[str]]:
    """The context text and each choice's continuation text. Identical for every variant."""
    if sample.prompt_text is not None:  # rendered by the task's own code (lm-eval bridge)
        return sample.prompt_text, list(sample.continuations or ())
    letters = spec.prompt.letters
    if len(sample.choices) > len(letters):
        raise QevalInputError(f"item {sample.id}: more choices than letters in the prompt spec")
    block = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(sample.choices))
    try:
        context = spec.prompt.template.format(question=sample.question, choices=block,
                                              passage=sample.passage)
    except (KeyError, IndexError) as exc:
        raise QevalInputError(
            f"task {spec.id}: prompt template uses unknown field {exc}; use {{question}}, "
            "{choices} and {passage}"
        ) from None
    if spec.prompt.continuation == "letter":
        conts = [f" {letters[i]}" for i in range(len(sample.choices))]
    else:
        conts = [f" {c}" for c in sample.choices]
    return context, conts


@dataclass(frozen=True)
class ItemRequests:
    """Every request that scores one item: its k choices once, or, with rotated options, k
    choices under each rotation (rotation-major; `rotations` holds each block's offset r: block r
    shows option (j + r) mod k at position j)."""

    sample: Sample
    requests: tuple[LoglikelihoodRequest, ...]
    byte_lengths: tuple[int, ...]
    char_lengths: tuple[int, ...]  # of each choice's own text, without the leading delimiter
    prompt_hash: str
    rotations: tuple[int, ...] = (0,)


def rotation_offsets(spec: TaskSpec, sample: Sample) -> tuple[int, ...]:
    """The rotations an item is scored under: every cyclic one when the task asks for it (items
    rendered by their own code keep their one prompt)."""
    if spec.rotations == "cyclic" and sample.prompt_text is None:
        return tuple(range(len(sample.choices)))
    return (0,)


def rotated(sample: Sample, r: int) -> Sample:
    """The item with its options rotated left by `r` (option r shown first); the key follows."""
    if r == 0:
        return sample
    k = len(sample.choices)
    return sample.model_copy(update={"choices": sample.choices[r:] + sample.choices[:r],
                                     "target": (sample.target - r) % k})


def _split_continuation(tokenize, context: str, ctx: list[int], continuation: str) -> list[int]:
    """Token ids of the continuation as the model sees it after `context` (whose ids are `ctx`):
    lm-eval's rule, encode the whole string and cut at the context's length, so a merge across
    the boundary is tokenised the way the model would read it."""
    whole = tokenize(context + continuation)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return whole[len(ctx):]
    return tokenize(continuation)


def build_requests(task: Task, tokenize: Callable[[str], list[int]]) -> list[ItemRequests]:
    items = []
    for s in task.samples:
        offsets = rotation_offsets(task.spec, s)
        reqs, bytes_, chars = [], [], []
        h = hashlib.sha256()
        for r in offsets:
            shown = rotated(s, r)
            context, conts = render_prompt(task.spec, shown)
            ctx_ids = tokenize(context)  # once per item and rotation; every choice shares it
            if len(offsets) > 1:
                h.update(f"|r{r}:".encode())
            for i, cont in enumerate(conts):
                cont_ids = _split_continuation(tokenize, context, ctx_ids, cont)
                if i == 0:
                    h.update(("ctx:" + ",".join(map(str, ctx_ids))).encode())
                h.update((f"|c{i}:" + ",".join(map(str, cont_ids))).encode())
                # `choice` is the option's index in the item's own order, whatever its position.
                k = len(conts)
                reqs.append(LoglikelihoodRequest(tuple(ctx_ids), tuple(cont_ids), s.id, (i + r) % k))
            chars += [len(shown.choices[i]) if i < len(shown.choices) else len(c.lstrip())
                      for i, c in enumerate(conts)]
            bytes_ += [len(c.encode()) for c in conts]
        items.append(ItemRequests(s, tuple(reqs), tuple(bytes_), tuple(chars), h.hexdigest(), offsets))
    return items


def _choice_scores(spec: TaskSpec, lps, byte_lengths, char_lengths) -> tuple[float, ...]:
    if spec.choice_score == "mean_per_byte":
        return tuple(lp / max(b, 1) for lp, b in zip(lps, byte_lengths))
    if spec.choice_score == "mean_per_char":
        return tuple(lp / max(c, 1) for lp, c in zip(lps, char_lengths))
    return tuple(lps)


def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties go to the earlier choice


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def item_record(task: Task, it: ItemRequests, lps: Sequence[float], variant: str) -> ItemRecord:
    """One item's record from its requests' log-probs. Rotated: each rotation's scores are put
    back in the item's own option order, and the record holds their means (choice_scores: of the
    log-softmax, so each rotation weighs the same) and the option each rotation picked."""
    s = it.sample
    k = len(it.requests) // len(it.rotations)
    blocks = []
    for b, r in enumerate(it.rotations):
        sl = slice(b * k, (b + 1) * k)
        shown = _choice_scores(task.spec, lps[sl], it.byte_lengths[sl], it.char_lengths[sl])
        order = [(j - r) % k for j in range(k)]  # option j sits at position (j − r) mod k
        blocks.append((np.array([lps[b * k + p] for p in order]), np.array([shown[p] for p in order])))
    if len(blocks) == 1:
        raw, scores = (tuple(float(x) for x in a) for a in blocks[0])
        picks = None
    else:
        raw = tuple(float(x) for x in np.mean([lp for lp, _ in blocks], axis=0))
        scores = tuple(float(x) for x in np.mean([_log_softmax(sc) for _, sc in blocks], axis=0))
        picks = tuple(_argmax(sc.tolist()) for _, sc in blocks)
    pred = _argmax(scores)
    return ItemRecord(
        task=task.spec.id, sample_id=s.id, variant=variant, prompt_hash=it.prompt_hash,
        choice_logprobs=raw, choice_scores=scores, prediction=pred, target=s.target,
        correct=pred == s.target, category=s.category, risk=s.risk, rotation_predictions=picks,
    )


def score_items(
    task: Task, items: Sequence[ItemRequests], backend: Backend, advance=None
) -> list[ItemRecord]:
    flat = [r for it in items for r in it.requests]
    logprobs = backend.loglikelihood(flat, advance)
    records, at = [], 0
    for it in items:
        n = len(it.requests)
        records.append(item_record(task, it, logprobs[at:at + n], backend.info.variant))
        at += n
    return records


def check_same_prompts(task: Task, base: Sequence[ItemRecord] | Sequence[GenerationRecord],
                       items: Sequence[ItemRequests] | Sequence[GenerationItem], variant: str) -> None:
    """Refuse to score a candidate whose token ids differ from the baseline's."""
    expected = {r.sample_id: r.prompt_hash for r in base}
    for it in items:
        if expected.get(it.sample.id) != it.prompt_hash:
            raise QevalInputError(
                f"task {task.spec.id}, item {it.sample.id}: {variant} tokenises the prompt "
                "differently from the baseline; the comparison needs byte-identical token ids "
                "(same tokenizer and template)"
            )


class RecordStore:
    """Per-item records on disk, one JSONL file per (variant key, task)."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def key(*, model_fingerprint: str, variant: VariantSpec, device: str, strict_dtype: bool,
            versions: dict[str, str], batch_size: int, task: Task, against: str | None = None) -> str:
        """`against`: the baseline's key, for records that are measured relative to it
        (reference_text KL)."""
        fields = {
            "model": model_fingerprint, "variant": variant.key(), "device": device,
            "strict_dtype": strict_dtype, "versions": versions, "batch_size": batch_size,
            "task": task.content_hash, "record_schema": RECORD_SCHEMA,
            # Chunks decide batch composition, hence the numbers: part of what made them.
            "chunk_items": chunk_items(batch_size),
        }
        if against is not None:
            fields["against"] = against
        payload = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.jsonl", self.root / f"{key}.info.json"

    def load(self, key: str, variant_name: str, record_type: type[R] = ItemRecord
             ) -> tuple[list[R], BackendInfo] | None:
        rec_path, info_path = self._paths(key)
        if not (rec_path.is_file() and info_path.is_file()):
            return None
        try:
            records = [record_type.model_validate_json(line) for line in rec_path.read_text().splitlines() if line]
            info = BackendInfo.model_validate_json(info_path.read_text())
        except ValueError:
            return None  # a damaged entry is recomputed, never trusted
        # Stored under whichever name the variant had then; the numbers are the same.
        records = [r.model_copy(update={"variant": variant_name}) for r in records]
        return records, info.model_copy(update={"variant": variant_name})

    def save(self, key: str, records: Sequence[AnyRecord], info: BackendInfo) -> None:
        """Records first, then the info: `load` needs both, so it never sees a half-saved entry."""
        rec_path, info_path = self._paths(key)
        write_jsonl(rec_path, records)
        atomic_write_text(info_path, info.model_dump_json(indent=1))

    def save_distributions(self, key: str, hashes: dict[str, str],
                           dists: dict[str, list[BaselineDist]]) -> None:
        """The baseline's reference-text distributions (opt-in only: their top-k token ids
        reveal the passages' text), so a later compare adding a candidate need not rerun it."""
        arrays: dict[str, np.ndarray] = {}
        # Passage id → window count, in passage order (JSON keeps it).
        meta = {"hashes": hashes, "windows": {pid: len(ws) for pid, ws in dists.items()}}
        for n, (pid, windows) in enumerate(dists.items()):
            for w, d in enumerate(windows):
                for field in BASELINE_DIST_FIELDS:
                    arrays[f"{n}.{w}.{field}"] = getattr(d, field)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self._dists_path(key), buffer.getvalue())

    def _dists_path(self, key: str) -> Path:
        return self.root / f"{key}.dists.npz"

    def has_distributions(self, key: str) -> bool:
        return self._dists_path(key).is_file()

    def load_distributions(self, key: str) -> tuple[dict[str, str], dict[str, list[BaselineDist]]] | None:
        path = self._dists_path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                meta = json.loads(data["meta"].tobytes())
                dists = {pid: [BaselineDist(*(data[f"{n}.{w}.{field}"] for field in BASELINE_DIST_FIELDS))
                               for w in range(n_windows)]
                         for n, (pid, n_windows) in enumerate(meta["windows"].items())}
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed, never trusted
        return meta["hashes"], dists

    def journal(self, key: str, record_type: type[R]) -> Journal[R]:
        return Journal(self.root / f"{key}.partial.jsonl", record_type)

    @contextmanager
    def locked(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold `key` exclusively across processes while scoring it; `on_wait` is called once if
        another process holds it. The kernel releases the lock when its holder exits or is
        killed, so a dead process never blocks a rerun (which then resumes its journal);
        qeval/util/locking.py (the filelock library) holds it."""
        with locked(self.root / f"{key}.lock", on_wait):
            yield


class Journal(Generic[R]):
    """A task's records while it is being scored, appended one whole chunk at a time and fsynced,
    so that a run killed mid-task resumes where it stopped. Hashes and numbers only, like the
    final records; removed once those are saved."""

    def __init__(self, path: Path, record_type: type[R]):
        self.path = path
        self.record_type = record_type

    def read(self, variant_name: str) -> list[R]:
        """Every record up to the first line that does not parse (a write cut short by a kill)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(self.record_type.model_validate_json(line))
            except ValueError:
                break
        # Written under whichever name the variant had then, like stored records.
        return [r.model_copy(update={"variant": variant_name}) for r in records]

    def restart(self, kept: Sequence[R]) -> None:
        """Start the journal over with the records being reused (none for a fresh start): what
        follows a torn line or a partial chunk must not stay in front of the next append."""
        write_jsonl(self.path, kept)

    def append(self, records: Sequence[R]) -> None:
        append_durably(self.path, "".join(r.model_dump_json() + "\n" for r in records))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def resumable_count(journaled: Sequence[AnyRecord], expected: Sequence[tuple[str, str]], task_id: str,
                    chunk_size: int) -> int:
    """How many leading items of the task a journal holds, in whole chunks: a record counts only
    if it is this task's, for the expected item at its position, with the same token-id hash.
    `expected`: (sample id, prompt hash) of every item, in scoring order."""
    n = 0
    for rec, (sample_id, prompt_hash) in zip(journaled, expected):
        if rec.task != task_id or rec.sample_id != sample_id or rec.prompt_hash != prompt_hash:
            break
        n += 1
    return n if n == len(expected) else n - n % chunk_size


def score_in_chunks(work: Sequence[W], score_chunk: Callable[[Sequence[W]], list[R]], *,
                    chunk_size: int, task_id: str, identify: Callable[[W], tuple[str, str]],
                    journal: Journal[R] | None = None, resume_as: str | None = None,
                    units: Callable[[W], int] = lambda w: 1, advance: Progress | None = None
                    ) -> tuple[list[R], int]:
    """Score `work` `chunk_size` items at a time, in order, appending each chunk's records to
    `journal`. With `resume_as` (the variant's name), first reuse the whole chunks the journal
    already holds for these items; the progress bar advances over them at once. Returns the
    records of every item and how many came from the journal."""
    done: list[R] = []
    if journal is not None:
        if resume_as is not None:
            found = journal.read(resume_as)
            done = found[:resumable_count(found, [identify(w) for w in work], task_id, chunk_size)]
        journal.restart(done)
    if advance and done:
        advance(sum(units(w) for w in work[:len(done)]))
    records = list(done)
    for start in range(len(done), len(work), chunk_size):
        try:
            chunk = score_chunk(work[start:start + chunk_size])
        except NonFiniteScores as exc:  # name the task beside the variant and item
            raise NonFiniteScores(f"task {task_id}: {exc}") from None
        if journal is not None:
            journal.append(chunk)
        records.extend(chunk)
    return records, len(done)


def write_jsonl(path: Path, records: Sequence[AnyRecord]) -> None:
    atomic_write_text(path, "".join(r.model_dump_json() + "\n" for r in records))


@contextmanager
def opened(factory: Callable[[], Backend]) -> Iterator[Backend]:
    backend = factory()
    try:
        yield backend
    finally:
        backend.close()
