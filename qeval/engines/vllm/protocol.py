"""The wire format between qeval and its vLLM worker (qeval/engines/vllm/worker.py), which runs
in its own virtual environment: standard library and numpy only, so both sides import this file.

A message is a 4-byte big-endian length, a JSON header of that length, then the raw bytes of
each array the header lists (`arrays`: name, dtype, shape, in order). Only numbers cross the
pipe: token ids in, log-probs and logits out, never text. `VERSION` changes whenever a message
changes meaning; the worker refuses a parent of another version."""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

import numpy as np

VERSION = 1
_LEN = struct.Struct(">I")


class WorkerGone(EOFError):
    """The other side closed the pipe."""


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise WorkerGone("pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write one message: `header` (JSON-able numbers and names) and its arrays."""
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    head = dict(header, arrays=[[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()])
    raw = json.dumps(head, separators=(",", ":")).encode()
    stream.write(_LEN.pack(len(raw)) + raw)
    for v in arrays.values():
        stream.write(memoryview(v).cast("B"))
    stream.flush()


def receive(stream: BinaryIO) -> tuple[dict, dict[str, np.ndarray]]:
    """Read one message: its header and its arrays by name."""
    (n,) = _LEN.unpack(_read_exact(stream, _LEN.size))
    head = json.loads(_read_exact(stream, n))
    arrays = {}
    for name, dtype, shape in head.pop("arrays", []):
        dt = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        arrays[name] = np.frombuffer(_read_exact(stream, size), dtype=dt).reshape(shape)
    return head, arrays


def pack_sequences(seqs) -> dict[str, np.ndarray]:
    """Token-id sequences as two arrays: every id, and where each sequence ends."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    return {"tokens": flat, "ends": np.cumsum(lengths)}


def unpack_sequences(tokens: np.ndarray, ends: np.ndarray) -> list[list[int]]:
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [tokens[s:e].tolist() for s, e in zip(starts, ends)]
