"""The record store, its journals, and scoring in fixed chunks (any task kind: qeval/kinds/).

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
from dataclasses import fields
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from pydantic import BaseModel

from qeval.engines.base import Backend, NonFiniteScores, Progress
from qeval.util.fileio import append_durably, atomic_write_bytes, atomic_write_text
from qeval.util.locking import locked
from qeval.types import BaselineDist
from qeval.types import BackendInfo, ItemRecord, RECORD_SCHEMA, Task, VariantSpec

BASELINE_DIST_FIELDS = tuple(f.name for f in fields(BaselineDist))
R = TypeVar("R", bound=BaseModel)  # a kind's record type (ItemRecord, TextRecord, ...)
W = TypeVar("W")  # one unit of a kind's work: ItemRequests, GenerationItem, PassageTokens, ...
AnyRecord = BaseModel

# Items scored together between journal writes, at batch sizes up to 16; larger batch sizes get
# four batches per chunk so that their batches stay full. (A kind may fix its own chunk size.)
CHUNK_ITEMS = 64


def chunk_items(batch_size: int) -> int:
    return max(CHUNK_ITEMS, 4 * batch_size)


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
