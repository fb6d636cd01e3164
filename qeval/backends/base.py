"""The interface every backend offers the runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

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


class Backend(Protocol):
    info: BackendInfo

    def tokenize(self, text: str) -> list[int]: ...

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], advance: Progress | None = None
    ) -> list[float]:
        """Summed log-probability of each request's continuation, in request order."""
        ...

    def close(self) -> None: ...


class NonFiniteScores(ValueError):
    """A backend produced NaN or inf log-probabilities."""
