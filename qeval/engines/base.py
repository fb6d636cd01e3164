"""The interface every backend offers the runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

from qeval.errors import NonFiniteScores  # noqa: F401 - raised by every engine, imported from here
from qeval.types import BackendInfo, StopReason


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score `continuation` after `context` (token ids). Ids of the sample ride along for
    diagnostics and for the fake backend; real backends use only the token ids."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    sample_id: str
    choice: int


Progress = Callable[[int], None]


@dataclass(frozen=True)
class SharedPrefixJob:
    """One forward pass that scores every request sharing a context (multiple choice: every
    choice of an item): the context once, then branches, each seeing the context and its own
    earlier tokens only (a tree-shaped attention mask, position ids restarting after the context).

    By default member m owns branch m, its continuation without the last token, and the log-prob
    of its first continuation token is read at the context's last position. An item scored under
    several prompts that share a beginning (rotated options) is one job too: `context` is then the
    shared beginning, a branch starts with `leads[b]` tokens that finish one prompt, several
    members may share a branch (`member_branch`), and a member's first token is read at the end
    of its branch's lead."""

    context: tuple[int, ...]
    members: tuple[int, ...]  # request indices, in request order
    branches: tuple[tuple[int, ...], ...]  # token runs after the context
    member_branch: tuple[int, ...] = ()  # per member, its branch; empty: member m owns branch m
    leads: tuple[int, ...] = ()  # per branch, tokens that finish a prompt; empty: none

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.context + tuple(t for b in self.branches for t in b)

    def __len__(self) -> int:
        return len(self.context) + sum(len(b) for b in self.branches)

    def branch_starts(self) -> list[int]:
        """Where each branch begins in `tokens`."""
        starts, at = [], len(self.context)
        for b in self.branches:
            starts.append(at)
            at += len(b)
        return starts

    def positions(self) -> list[int]:
        """Position id of every token: the context 0..c−1, each branch from c again."""
        c = len(self.context)
        return list(range(c)) + [c + k for b in self.branches for k in range(len(b))]

    def branch_of(self, member: int) -> int:
        return self.member_branch[member] if self.member_branch else member

    def lead(self, branch: int) -> int:
        return self.leads[branch] if self.leads else 0

    def reads(self, member: int, continuation_length: int) -> list[int]:
        """Indices into `tokens` whose next-token logits score the member's continuation."""
        b = self.branch_of(member)
        start, lead = self.branch_starts()[b], self.lead(b)
        first = start + lead - 1 if lead else len(self.context) - 1
        return [first] + [start + lead + k for k in range(continuation_length - 1)]


def _common_prefix(seqs: Sequence[tuple[int, ...]]) -> int:
    n = min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != seqs[0][k] for s in seqs[1:]):
            return k
    return n


def _item_job(requests: Sequence[LoglikelihoodRequest], groups: list[tuple[tuple[int, ...], list[int]]]
              ) -> SharedPrefixJob:
    """One job for an item's several contexts: their common beginning once; per context, a branch
    with the rest of it (its lead), shared by the members whose continuation is one token; a
    member with a longer continuation gets the lead and its own tokens in a branch of its own."""
    p = min(_common_prefix([ctx for ctx, _ in groups]), min(len(ctx) for ctx, _ in groups) - 1)
    branches, leads, owner = [], [], {}
    for ctx, members in groups:
        lead = ctx[p:]
        shared = None
        for i in members:
            tail = requests[i].continuation[:-1]
            if tail:
                owner[i] = len(branches)
                branches.append(lead + tail)
                leads.append(len(lead))
            else:
                if shared is None:
                    shared = len(branches)
                    branches.append(lead)
                    leads.append(len(lead))
                owner[i] = shared
    members = tuple(sorted(owner))
    return SharedPrefixJob(groups[0][0][:p], members, tuple(branches),
                           tuple(owner[i] for i in members), tuple(leads))


def shared_prefix_jobs(requests: Sequence[LoglikelihoodRequest], *, across_prompts: bool = False
                       ) -> list[SharedPrefixJob]:
    """The forward passes that answer `requests`: one per distinct context, longest first (equal
    lengths batch with little padding; ties keep request order, so the plan is deterministic).
    Letter answers (one-token continuations) cost one pass over the context per item; cloze
    answers cost the context once plus each choice's own tokens, not the context per choice.
    `across_prompts`: an item scored under several contexts (rotated options) is one pass, their
    common beginning computed once (engines whose attention mask can branch)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        if not r.context:
            raise ValueError(f"item {r.sample_id}: empty context")
        if not r.continuation:
            raise ValueError(f"item {r.sample_id} choice {r.choice}: empty continuation")
        groups.setdefault(r.context, []).append(i)
    by_item: dict[str, list[tuple[tuple[int, ...], list[int]]]] = {}
    for ctx, members in groups.items():
        key = requests[members[0]].sample_id if across_prompts else str(len(by_item))
        by_item.setdefault(key, []).append((ctx, members))
    jobs = []
    for item_groups in by_item.values():
        if len(item_groups) == 1:
            ctx, members = item_groups[0]
            jobs.append(SharedPrefixJob(ctx, tuple(members), tuple(requests[i].continuation[:-1] for i in members)))
        else:
            jobs.append(_item_job(requests, item_groups))
    jobs.sort(key=lambda j: -len(j))
    return jobs


@dataclass(frozen=True)
class GenerationRequest:
    """Decode greedily after `prompt` (token ids) until an end-of-sequence token, a stop string in
    the decoded text, or `max_tokens` generated tokens."""

    prompt: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    sample_id: str


@dataclass(frozen=True)
class GenerationResult:
    text: str  # the decoded output, cut before the first stop string; never the prompt
    n_tokens: int  # tokens generated, the end-of-sequence token included when it ended the output
    stop_reason: StopReason
    # The generated ids (end-of-sequence token excluded), for diagnostics and tests; in memory
    # only, never recorded (ids are text).
    token_ids: tuple[int, ...] = field(default=(), repr=False)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest of `stops` begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


class GreedyOutput:
    """One sequence being decoded. Every backend feeds it the argmax token of each step, so the
    stopping rule is the same on every engine: an end-of-sequence token ends the output (and is
    not part of it); after each other token the whole output is decoded again and searched for
    the stop strings (a stop string can span tokens, and a multi-byte character completes only
    with its last token); `max_tokens` tokens end it otherwise."""

    def __init__(self, request: GenerationRequest, decode: Callable[[list[int]], str],
                 eos_ids: frozenset[int]):
        if request.max_tokens < 1:
            raise ValueError(f"item {request.sample_id}: max_tokens must be at least 1")
        self.request = request
        self.decode = decode
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.result: GenerationResult | None = None

    def push(self, token: int) -> bool:
        """Add one generated token; True once the output is finished."""
        assert self.result is None, "push after the output finished"
        if token in self.eos_ids:
            self.result = GenerationResult(self.decode(self.ids), len(self.ids) + 1, "eos", tuple(self.ids))
            return True
        self.ids.append(token)
        text = self.decode(self.ids)
        cut = first_stop(text, self.request.stop)
        if cut is not None:
            self.result = GenerationResult(text[:cut], len(self.ids), "stop", tuple(self.ids))
        elif len(self.ids) >= self.request.max_tokens:
            self.result = GenerationResult(text, len(self.ids), "max_tokens", tuple(self.ids))
        return self.result is not None


@dataclass(frozen=True)
class ForwardTiming:
    prefill_s: float  # one pass over the batch's prompts, KV cache filled
    decode_s: float  # the greedy decoding steps after it, every sequence of the batch advancing


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

    def generate(self, requests: Sequence[GenerationRequest], advance: Progress | None = None
                 ) -> list[GenerationResult]:
        """Greedy decoding (argmax, ties to the lowest token id), one result per request, in
        request order; `advance(1)` as each request finishes."""
        ...

    def time_forward(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> ForwardTiming | None:
        """Time one prefill of `prompts` (equal lengths, one batch) and `new_tokens` greedy
        decoding steps of all of them, the way a server would (logits of the last position
        only); None when this engine cannot run a batch of that size."""
        ...

    def close(self) -> None: ...


