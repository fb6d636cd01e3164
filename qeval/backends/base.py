"""The interface every backend offers the runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

from ..types import BackendInfo


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score `continuation` after `context` (token ids). Ids of the sample ride along for
    diagnostics and for the fake backend; real backends use only the token ids."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    sample_id: str
    choice: int


Progress = Callable[[int], None]


def group_jobs(requests: Sequence[LoglikelihoodRequest]) -> list[tuple[tuple[int, ...], list[int]]]:
    """Forward passes needed for `requests`: (input ids, indices of the requests it answers).

    Requests with a one-token continuation after the same context share a pass (letter answers:
    one pass per item instead of one per choice). Longest first: equal-length neighbours waste
    little padding; the order is deterministic.
    """
    jobs: dict[tuple[int, ...], list[int]] = {}
    order: list[tuple[tuple[int, ...], list[int]]] = []
    for i, r in enumerate(requests):
        if not r.context:
            raise ValueError(f"item {r.sample_id}: empty context")
        if len(r.continuation) == 1:
            if r.context not in jobs:
                jobs[r.context] = []
                order.append((r.context, jobs[r.context]))
            jobs[r.context].append(i)
        else:
            order.append((r.context + r.continuation[:-1], [i]))
    order.sort(key=lambda job: -len(job[0]))
    return order


class Backend(Protocol):
    info: BackendInfo

    def tokenize(self, text: str) -> list[int]: ...

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], advance: Progress | None = None
    ) -> list[float]:
        """Summed log-probability of each request's continuation, in request order."""
        ...

    def token_logprobs(self, tokens: Sequence[int]) -> "np.ndarray":
        """Teacher-forced log-softmax over the vocabulary at every position that predicts
        tokens[1:]: float32, shape (len(tokens) − 1, vocabulary)."""
        ...

    def close(self) -> None: ...


class NonFiniteScores(ValueError):
    """A backend produced NaN or inf log-probabilities."""
