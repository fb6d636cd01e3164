"""A backend with controlled behaviour, for testing statistics and gate logic only.

It never pretends to be a model: its info says `fake`. Each item's choice scores are drawn from a
generator seeded by (seed, sample id), so the baseline and a candidate with the same seed start
from the same scores; the candidate's parameters then damage them in a controlled way:

- `skill`: probability that the baseline puts its highest score on the answer key;
- `damage`: probability that a candidate demotes the key below every other choice on an item;
- `promote`: probability that a candidate lifts the key above every other choice (wrong→right
  flips, so that damage and promote together plant a known discordance and a known Δ);
- `temperature`: divides every score (the softmax flattens or sharpens; no answer changes, so only
  the label-free rules can see it);
- `noise`: standard deviation of Gaussian noise added to every choice score (shifts choice-KL);
- `numeric_path` (set on a noise-floor replica): adds tiny noise, `path_noise` (default 0.02), from
  a stream of its own, the way another batch size or dtype moves a real model's scores a little.

Generation (`generate`): a synthetic reasoning sentence, then "The answer is X." (X the key with
probability `skill`, else a guess), then a rambling trailer for stop strings to cut. `damage` and
`promote` change the answer as above; `reword` (probability) words the reasoning differently with
the same answer; `no_answer` (probability) drops the answer sentence (an extraction failure); a
noise-floor replica changes case and spacing with probability `path_noise` (the exact output
differs, the normalised one does not). Tokens are the text's bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from qeval.util.numeric import format_number
from qeval.types import Artefact, BackendInfo, VariantSpec
from qeval.engines.base import GenerationRequest, GenerationResult, GreedyOutput, LoglikelihoodRequest, Progress

_REASONING = (
    "Let us weigh each option against the findings.",
    "Consider the mechanism and the most likely cause first.",
    "Rule out the options that do not fit the history.",
    "The key clue in the question points to one option.",
)
_EOS = 256  # the fake tokenizer's ids are bytes; one id past them ends a sequence
# (the key's answer, wrong answers, what a guess draws from: every letter of an item with choices,
# only wrong answers for a free-form one)
AnswerOptions = tuple[str, tuple[str, ...], tuple[str, ...]]


class FakeBackend:
    def __init__(self, variant: VariantSpec, answer_key: Mapping[str, int], n_choices: Mapping[str, int],
                 answer_options: Mapping[str, AnswerOptions] | None = None):
        """`answer_options`: per sample id of a generate task, its answers (see AnswerOptions)."""
        p = variant.params
        self.skill = float(p.get("skill", 0.8))
        self.damage = float(p.get("damage", 0.0))
        self.promote = float(p.get("promote", 0.0))
        self.temperature = float(p.get("temperature", 1.0))
        self.noise = float(p.get("noise", 0.0))
        self.seed = int(p.get("seed", 0))
        self.path_noise = float(p.get("path_noise", 0.02)) if p.get("numeric_path") else 0.0
        self.reword = float(p.get("reword", 0.0))
        self.no_answer = float(p.get("no_answer", 0.0))
        self.answer_options = dict(answer_options or {})
        self.answer_key = dict(answer_key)
        self.n_choices = dict(n_choices)
        self.info = BackendInfo(
            variant=variant.name, backend="fake", device="none", requested_dtype="none",
            compute_dtype="none", kernel="fake (synthetic scores)", weight_bytes=0, versions={},
            notes=("synthetic scores for testing; not a model",),
        )

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _item_scores(self, sample_id: str) -> np.ndarray:
        digest = hashlib.sha256(f"{self.seed}|{sample_id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        k = self.n_choices[sample_id]
        key = self.answer_key[sample_id]
        scores = rng.normal(0.0, 1.0, size=k) - 2.0
        knows = rng.random() < self.skill
        if knows:
            scores[key] = scores.max() + 1.0 + rng.random()
        # Draws below use a generator of their own so that damage and noise do not change the
        # baseline's draws above (paired items stay paired).
        drng = np.random.default_rng(int.from_bytes(digest[8:16], "little"))
        if drng.random() < self.damage:
            scores[key] = scores.min() - 1.0
        if drng.random() < self.promote:
            scores[key] = scores.max() + 1.0
        if self.noise:
            scores = scores + drng.normal(0.0, self.noise, size=k)
        if self.path_noise:
            prng = np.random.default_rng(int.from_bytes(digest[16:24], "little"))
            scores = scores + prng.normal(0.0, self.path_noise, size=k)
        return scores / self.temperature

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      advance: Progress | None = None) -> list[float]:
        cache: dict[str, np.ndarray] = {}
        out = []
        for r in requests:
            if r.sample_id not in cache:
                cache[r.sample_id] = self._item_scores(r.sample_id)
            out.append(float(cache[r.sample_id][r.choice]))
            if advance:
                advance(1)
        return out

    def _output_text(self, sample_id: str) -> str:
        if sample_id not in self.answer_options:
            raise KeyError(f"fake backend: no answer options for item {sample_id}")
        key, wrong, guesses = self.answer_options[sample_id]
        digest = hashlib.sha256(f"gen|{self.seed}|{sample_id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        phrase = int(rng.integers(len(_REASONING)))
        answer = key if rng.random() < self.skill else guesses[int(rng.integers(len(guesses)))]
        # Candidate draws come from a stream of their own, always drawn in the same order, so
        # the baseline's draws above stay paired with the candidate's.
        drng = np.random.default_rng(int.from_bytes(digest[8:16], "little"))
        damaged, promoted, dropped, reworded = (drng.random() for _ in range(4))
        wrong_pick = int(drng.integers(max(len(wrong), 1)))
        if damaged < self.damage and wrong:
            answer = wrong[wrong_pick]
        if promoted < self.promote:
            answer = key
        if reworded < self.reword:
            phrase = (phrase + 1) % len(_REASONING)
        reasoning = _REASONING[phrase]
        if self.path_noise:
            prng = np.random.default_rng(int.from_bytes(digest[16:24], "little"))
            if prng.random() < self.path_noise:
                reasoning = reasoning.upper().replace(" ", "  ")
        final = "" if dropped < self.no_answer else f" The answer is {answer}."
        return f" {reasoning}{final}\n\nQuestion: and so the text rambles on past the answer"

    def generate(self, requests: Sequence[GenerationRequest], advance: Progress | None = None
                 ) -> list[GenerationResult]:
        out = []
        for r in requests:
            state = GreedyOutput(r, lambda ids: bytes(ids).decode("utf-8", errors="replace"),
                                 frozenset({_EOS}))
            for token in [*self._output_text(r.sample_id).encode("utf-8"), _EOS]:
                if state.push(token):
                    break
            out.append(state.result)
            if advance:
                advance(1)
        return out

    def token_logprobs(self, tokens: Sequence[int]) -> np.ndarray:
        """Synthetic next-token log-probs over a 256-symbol vocabulary (the fake tokenizer's
        bytes): shared base logits from the token sequence, then this variant's damage."""
        digest = hashlib.sha256(bytes(int(t) % 256 for t in tokens)).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        n = len(tokens) - 1
        logits = rng.normal(0.0, 2.0, size=(n, 256))
        logits[np.arange(n), np.asarray(tokens[1:]) % 256] += 3.0 * self.skill
        if self.noise or self.path_noise:
            drng = np.random.default_rng(int.from_bytes(digest[8:16], "little") + self.seed)
            logits = logits + drng.normal(0.0, self.noise + self.path_noise, size=logits.shape)
        logits = logits / self.temperature
        m = logits.max(axis=1, keepdims=True)
        return (logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))).astype(np.float32)

    def time_forward(self, prompts, new_tokens: int) -> None:
        return None  # no model, no speed: efficiency shows "not measured"

    def close(self) -> None:
        pass


class FakeFactory:
    """Fake backends that know the tasks' answer keys (so `skill` means what it says)."""

    def __init__(self, tasks):
        self.answer_key = {s.id: s.target for t in tasks for s in t.samples}
        self.n_choices = {s.id: len(s.choices) for t in tasks for s in t.samples}
        self.answer_options = {s.id: _answer_options(t.spec.prompt.letters, s)
                               for t in tasks for s in t.samples}  # used by generated answers only

    def identity(self, variant: VariantSpec | None = None) -> dict:
        return {"device": "none", "versions": {}}

    def prepare(self, variant: VariantSpec) -> Artefact:
        return Artefact(bytes=None, description="fake backend: no weights")

    def open(self, variant: VariantSpec, baseline_compute: str | None) -> FakeBackend:
        return FakeBackend(variant, self.answer_key, self.n_choices, self.answer_options)


def _answer_options(letters: str, sample) -> AnswerOptions:
    """Letters for items with choices (a guess may hit the key); for numeric items the value in
    its unit and wrong values (a tenfold error, half, double: a guess never hits); for free-form
    items the first accepted answer and made-up wrong ones (a guess never hits)."""
    if sample.choices:
        valid = letters[: len(sample.choices)]
        key = valid[sample.target]
        return key, tuple(x for x in valid if x != key), tuple(valid)
    if sample.numeric is not None:
        v, unit = sample.numeric.value, sample.numeric.unit
        wrong = tuple(f"{format_number(w)} {unit}" for w in (10 * v + 1, v / 2 - 1, 2 * v + 3))
        return f"{format_number(v)} {unit}", wrong, wrong
    key = sample.answers[0]
    wrong = tuple(f"not {key} but option {j}" for j in range(3))
    return key, wrong, wrong


def make_factory(settings) -> FakeFactory:
    return FakeFactory(settings.tasks)
