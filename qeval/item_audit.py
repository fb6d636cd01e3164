"""Answer-cue audit of multiple-choice items: can the key be found from the options' wording
alone? Pure: samples in, numbers out; no model, no text in the output (ids and counts only).

Measured per task (items with two or more options):
- how often the key is the longest option (ties included), and how much longer it is than the
  longest distractor;
- the accuracy of answer-cue heuristics that read no question: "longest option", "last option",
  "no absolutes, then longest" (drop options with absolute words, then take the longest), each
  with its exact Clopper–Pearson interval. Ties are broken at random, so an item where the key
  shares the greatest length with one other option counts ½ (the expected score);
- the keyed letter per option count;
- qualifier words ("e.g.", "titrated", "monitor", …) and urgency words ("immediately", "now", …)
  that appear in the key and in no distractor;
- numeric-option items (every option a value: it starts with a number, or the options differ
  only in their numbers): options out of ascending order, the key as the single out-of-order
  value, and the key at an extreme (smallest or largest) against what random placement gives;
- reverse cues of an over-corrected bank (keys kept off the longest option and off the numeric
  extremes): "not the longest option", and "a middle value (numeric items), else not the longest".

Limits (the built-in banks must meet them; tests/test_item_audit.py; for a task a user brings,
`qeval compare` prints a one-line warning): every heuristic's accuracy, the reverse ones included,
≤ chance + 3 pp (chance =
the mean of 1/k over items); the key-is-longest share ≤ its random-placement share + 5 pp (1/k per
item, |tied longest|/k with ties); numeric options ascending; no keyed letter above 1/k + 5 pp
among the k-option items (option counts with at least 20 items); cue words only in the key, and
the key at a numeric extreme, no more often than random placement gives (one-sided exact
Poisson-binomial p ≥ 0.05).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from qeval import stats
from qeval.util.numeric import NUMBER, first_number
from qeval.types import Interval, Sample, Strict

ABSOLUTE_WORDS = ("always", "never", "only", "all", "none", "must", "completely", "without", "alone")
QUALIFIER_WORDS = ("e.g.", "titrated", "titrate", "monitor", "monitoring", "consider", "if needed",
                   "as needed", "with caution")
URGENCY_WORDS = ("immediately", "immediate", "now", "urgent", "urgently", "emergency", "stat",
                 "without delay")

HEURISTIC_MARGIN = 0.03  # a heuristic may beat chance by at most this much
LONGEST_MARGIN = 0.05  # the key may be the longest this much more often than random placement
LETTER_MARGIN = 0.05  # a keyed letter may exceed 1/k by this much
LETTER_MIN_ITEMS = 20  # letter balance is judged for option counts with at least this many items
CUE_ALPHA = 0.05  # "more often than random placement" means one-sided exact p below this
AUDIT_MIN_ITEMS = 30  # `qeval compare` warns only about tasks this large (small ones are noise)


def _words(words: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.I)


ABSOLUTE = _words(ABSOLUTE_WORDS)
QUALIFIER = _words(QUALIFIER_WORDS)
URGENCY = _words(URGENCY_WORDS)


def _longest(choices: Sequence[str], among: Sequence[int]) -> list[int]:
    top = max(len(choices[i]) for i in among)
    return [i for i in among if len(choices[i]) == top]


def _pick_longest(s: Sample) -> list[int]:
    return _longest(s.choices, range(len(s.choices)))


def _pick_last(s: Sample) -> list[int]:
    return [len(s.choices) - 1]


def _pick_no_absolutes(s: Sample) -> list[int]:
    keep = [i for i, c in enumerate(s.choices) if not ABSOLUTE.search(c)]
    return _longest(s.choices, keep or range(len(s.choices)))


# name → the options a heuristic picks among (ties share its one guess)
HEURISTICS: dict[str, Callable[[Sample], list[int]]] = {
    "longest option": _pick_longest,
    "last option": _pick_last,
    "no absolutes, then longest": _pick_no_absolutes,
}


def _pick_not_longest(s: Sample) -> list[int]:
    tied = _pick_longest(s)
    return [i for i in range(len(s.choices)) if i not in tied] or tied


def _pick_middle_value(s: Sample) -> list[int]:
    """Numeric-option items: a value that is not the unique smallest or largest; other items:
    any option but the longest."""
    values = option_values(s)
    if values is None:
        return _pick_not_longest(s)
    ends = {i for i, x in enumerate(values) if values.count(x) == 1 and x in (min(values), max(values))}
    return [i for i in range(len(values)) if i not in ends] or list(range(len(values)))


# Reverse cues (an over-corrected bank: keys never the longest, never the extreme value): limited
# by the audit like the others; not used by the gate's chance guard (a model that reads them would
# have to be told the bank's writing rules).
REVERSE_HEURISTICS: dict[str, Callable[[Sample], list[int]]] = {
    "not the longest option": _pick_not_longest,
    "a middle value, else not the longest": _pick_middle_value,
}


def has_options(s: Sample) -> bool:
    return len(s.choices) >= 2 and 0 <= s.target < len(s.choices)


def item_credits(s: Sample) -> dict[str, float]:
    """heuristic → its expected score on this item: 1, 0, or 1/(options tied with the key)."""
    return {name: (s.target in picked) / len(picked) for name, picked in
            ((name, pick(s)) for name, pick in HEURISTICS.items())}


def heuristic_credits(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """heuristic → sample id → its expected score on the item, for items with options. What the
    gate's chance guard compares the baseline with."""
    out: dict[str, dict[str, float]] = {name: {} for name in HEURISTICS}
    for s in samples:
        if has_options(s):
            for name, credit in item_credits(s).items():
                out[name][s.id] = credit
    return out


def best_cue(credits: Mapping[str, Mapping[str, float]], ids: Sequence[str]) -> tuple[str, float] | None:
    """The heuristic with the highest accuracy on these items, and that accuracy; None when an
    item has no options (free-form or numeric answers) or there are no items."""
    best: tuple[str, float] | None = None
    for name, per_item in credits.items():
        if not ids or any(i not in per_item for i in ids):
            return None
        acc = sum(per_item[i] for i in ids) / len(ids)
        if best is None or acc > best[1]:
            best = (name, acc)
    return best


# ---------------------------------------------------------------- the audit's record


class Check(Strict):
    name: str
    passed: bool
    text: str  # one line: what was measured, against which limit


class HeuristicResult(Strict):
    name: str
    accuracy: Interval  # expected share of keys picked, with its Clopper–Pearson interval
    limit: float


class CueWords(Strict):
    """Items whose key carries one of these words while no distractor does."""

    only_in_key: int
    in_one_option: int  # items where exactly one option carries a word of the list
    expected_only_in_key: float  # Σ 1/k over those items: random placement
    p: float  # one-sided exact p that only_in_key exceeds random placement
    key_share: float  # share of keys carrying a word
    distractor_share: float  # share of distractors carrying a word


class NumericOptions(Strict):
    items: int  # items whose options are all values
    not_ascending: tuple[str, ...]  # their ids, where options are out of ascending order
    key_out_of_order: int  # items where the key is the single value out of order
    key_extreme: int  # items where the key is the unique smallest or largest value
    expected_key_extreme: float  # under random placement of the key
    p_extreme: float  # one-sided exact p that the key is at an extreme more often than random
    p_extreme_fewer: float  # ... less often than random (a "take a middle value" cue; reported)


class ItemAudit(Strict):
    task: str
    n: int
    option_counts: dict[int, int]
    chance: float  # mean of 1/k
    key_longest: int  # the key is the longest option (ties included)
    key_longest_expected: float  # the share random key placement gives (1/k, or ties/k)
    key_longest_ratio: float | None  # mean key length / longest distractor, where the key is longest
    heuristics: tuple[HeuristicResult, ...]
    reverse_heuristics: tuple[HeuristicResult, ...]  # limited too; not in the gate (REVERSE_HEURISTICS)
    key_letters: dict[int, dict[str, int]]  # option count → letter → items keyed there
    qualifiers: CueWords
    urgency: CueWords
    numeric: NumericOptions
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


# ---------------------------------------------------------------- the measures


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _cue_words(samples: Sequence[Sample], pattern: re.Pattern[str]) -> CueWords:
    only, single, expected_p = 0, 0, []
    keys = distractors = n_distractors = 0
    for s in samples:
        hits = [bool(pattern.search(c)) for c in s.choices]
        keys += hits[s.target]
        distractors += sum(hits) - hits[s.target]
        n_distractors += len(hits) - 1
        if sum(hits) == 1:
            single += 1
            only += hits[s.target]
            expected_p.append(1 / len(hits))
    p = stats.above_chance_p([True] * only + [False] * (single - only), expected_p) if single else 1.0
    return CueWords(only_in_key=only, in_one_option=single, expected_only_in_key=sum(expected_p), p=p,
                    key_share=keys / len(samples), distractor_share=distractors / max(n_distractors, 1))


_LEADING_VALUE = re.compile(r"\s*(?:about|approximately|approx\.?|[<>≤≥~≈])?\s*[-\u2212]?\d|\s*[-\u2212]?\.\d",
                            re.I)


def option_values(s: Sample) -> list[float] | None:
    """The options' values (each option's first number) when every option is a value: it starts
    with a number, or the options differ only in their numbers. None otherwise."""
    values = [first_number(c) for c in s.choices]
    if any(v is None for v in values):
        return None
    starts = all(_LEADING_VALUE.match(c) for c in s.choices)
    same_frame = len({NUMBER.sub("#", c) for c in s.choices}) == 1
    return values if starts or same_frame else None


def _ascending(v: Sequence[float]) -> bool:
    return all(a <= b for a, b in zip(v, v[1:]))


def _monotone(v: Sequence[float]) -> bool:
    return _ascending(v) or _ascending(v[::-1])


def _numeric(samples: Sequence[Sample]) -> NumericOptions:
    ids, unsorted, out_of_order, extreme, probs = 0, [], 0, 0, []
    for s in samples:
        v = option_values(s)
        if v is None:
            continue
        ids += 1
        if not _ascending(v):
            unsorted.append(s.id)
        rest = v[: s.target] + v[s.target + 1:]
        out_of_order += not _monotone(v) and _monotone(rest)
        unique_ends = [i for i, x in enumerate(v) if v.count(x) == 1 and x in (min(v), max(v))]
        extreme += s.target in unique_ends
        probs.append(len(unique_ends) / len(v))
    p = stats.above_chance_p([True] * extreme + [False] * (ids - extreme), probs) if ids else 1.0
    # fewer than random: the same Poisson-binomial law, read from the other end
    fewer = (stats.above_chance_p([True] * (ids - extreme) + [False] * extreme, [1 - q for q in probs])
             if ids else 1.0)
    return NumericOptions(items=ids, not_ascending=tuple(unsorted), key_out_of_order=out_of_order,
                          key_extreme=extreme, expected_key_extreme=sum(probs), p_extreme=p,
                          p_extreme_fewer=fewer)


def _key_longest(samples: Sequence[Sample]) -> tuple[int, float, float | None]:
    count, expected, ratios = 0, 0.0, []
    for s in samples:
        tied = _pick_longest(s)
        expected += len(tied) / len(s.choices)
        if s.target in tied:
            count += 1
            others = [len(c) for i, c in enumerate(s.choices) if i != s.target]
            ratios.append(len(s.choices[s.target]) / max(max(others), 1))
    return count, expected / len(samples), (sum(ratios) / len(ratios) if ratios else None)


def audit_samples(task: str, samples: Sequence[Sample], letters: str = "ABCDEFGHIJ") -> ItemAudit:
    """The audit of a task's items with options (others are left out). Raises ValueError when
    none has options."""
    items = [s for s in samples if has_options(s)]
    if not items:
        raise ValueError(f"task {task}: no multiple-choice items to audit")
    n = len(items)
    chance = sum(1 / len(s.choices) for s in items) / n
    heuristics, reverse = (tuple(
        HeuristicResult(name=name, accuracy=stats.clopper_pearson(
            sum((s.target in pick(s)) / len(pick(s)) for s in items), n), limit=chance + HEURISTIC_MARGIN)
        for name, pick in group.items()) for group in (HEURISTICS, REVERSE_HEURISTICS))
    longest, longest_expected, ratio = _key_longest(items)
    per_k: dict[int, Counter] = {}
    for s in items:
        per_k.setdefault(len(s.choices), Counter())[letters[s.target]] += 1
    key_letters = {k: {letters[i]: per_k[k][letters[i]] for i in range(k)} for k in sorted(per_k)}
    qualifiers, urgency = _cue_words(items, QUALIFIER), _cue_words(items, URGENCY)
    numeric = _numeric(items)

    checks = [Check(name=f"heuristic: {h.name}", passed=h.accuracy.estimate <= h.limit,
                    text=f"'{h.name}' scores {_pct(h.accuracy.estimate)} (95% CI {_pct(h.accuracy.low)}–"
                         f"{_pct(h.accuracy.high)}) vs chance {_pct(chance)}; limit {_pct(h.limit)}")
              for h in heuristics + reverse]
    share, limit = longest / n, longest_expected + LONGEST_MARGIN
    checks.append(Check(name="key is the longest option", passed=share <= limit,
                        text=f"key is the longest option in {longest}/{n} items ({_pct(share)}; random "
                             f"placement {_pct(longest_expected)}); limit {_pct(limit)}"))
    checks.append(Check(name="numeric options ascending", passed=not numeric.not_ascending,
                        text=f"{len(numeric.not_ascending)} of {numeric.items} numeric-option items out of "
                             "ascending order" + (f" ({', '.join(numeric.not_ascending[:5])}"
                                                  f"{', …' if len(numeric.not_ascending) > 5 else ''})"
                                                  if numeric.not_ascending else "") + "; limit 0"))
    for k, counts in key_letters.items():
        total = sum(counts.values())
        if total < LETTER_MIN_ITEMS:
            continue
        letter, most = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        checks.append(Check(
            name=f"key letters ({k} options)", passed=most / total <= 1 / k + LETTER_MARGIN,
            text=f"{letter} is the key in {most}/{total} {k}-option items ({_pct(most / total)}); "
                 f"limit {_pct(1 / k + LETTER_MARGIN)}"))
    for label, cue in (("qualifier", qualifiers), ("urgency", urgency)):
        checks.append(Check(
            name=f"{label} words only in the key", passed=cue.p >= CUE_ALPHA,
            text=f"{label} words only in the key in {cue.only_in_key} items (random placement "
                 f"{cue.expected_only_in_key:.1f}; exact p = {cue.p:.2g}); limit p ≥ {CUE_ALPHA:g}"))
    checks.append(Check(
        name="key at a numeric extreme", passed=numeric.p_extreme >= CUE_ALPHA,
        text=f"key is the smallest or largest value in {numeric.key_extreme} of {numeric.items} numeric "
             f"items (random placement {numeric.expected_key_extreme:.1f}; exact p = {numeric.p_extreme:.2g}); "
             f"limit p ≥ {CUE_ALPHA:g}"))
    return ItemAudit(
        task=task, n=n, option_counts={k: sum(c.values()) for k, c in per_k.items()}, chance=chance,
        key_longest=longest, key_longest_expected=longest_expected, key_longest_ratio=ratio,
        heuristics=heuristics, reverse_heuristics=reverse, key_letters=key_letters, qualifiers=qualifiers, urgency=urgency,
        numeric=numeric, checks=tuple(checks))


def audit_lines(a: ItemAudit) -> list[str]:
    """The audit as lines for a terminal or a README (ids and numbers only)."""
    counts = ", ".join(f"{m} with {k} options" for k, m in sorted(a.option_counts.items()))
    lines = [f"Answer-cue audit of {a.task}: {a.n} items ({counts}); chance {_pct(a.chance)}", ""]
    lines.append(f"{'heuristic':<36} {'accuracy':>9} {'95% CI (exact)':>16} {'limit':>10}")
    for h in a.heuristics + a.reverse_heuristics:
        ci = f"{_pct(h.accuracy.low)}–{_pct(h.accuracy.high)}"
        lines.append(f"{h.name:<36} {_pct(h.accuracy.estimate):>9} {ci:>16} {_pct(h.limit):>10}")
    ratio = f"; key / longest distractor length {a.key_longest_ratio:.2f} on average there" \
        if a.key_longest_ratio is not None else ""
    lines += ["", f"key is the longest option: {a.key_longest}/{a.n} ({_pct(a.key_longest / a.n)}){ratio}"]
    for k, counts in a.key_letters.items():
        lines.append(f"key letters, {k} options: " + ", ".join(f"{x} {m}" for x, m in counts.items()))
    for label, cue in (("qualifier", a.qualifiers), ("urgency", a.urgency)):
        lines.append(f"{label} words: in {_pct(cue.key_share)} of keys, {_pct(cue.distractor_share)} of "
                     f"distractors; only in the key in {cue.only_in_key} items")
    nm = a.numeric
    lines.append(f"numeric-option items: {nm.items}; not ascending {len(nm.not_ascending)}; key the single "
                 f"out-of-order value {nm.key_out_of_order}; key at an extreme {nm.key_extreme} "
                 f"(random placement {nm.expected_key_extreme:.1f}; exact p = {nm.p_extreme_fewer:.2g} "
                 "that random placement gives so few: a low p means a middle value gives the key away)")
    lines += ["", "limits:"]
    lines += [f"  {'pass' if c.passed else 'FAIL'}  {c.text}" for c in a.checks]
    return lines


def warning_line(a: ItemAudit) -> str | None:
    """One line naming the limits a task's items break, or None when they meet them all (or the
    task is too small for the audit to mean much)."""
    failed = a.failed()
    if not failed or a.n < AUDIT_MIN_ITEMS:
        return None
    return (f"task {a.task}: its options give the answer away beyond the item-writing limits — "
            + "; ".join(c.text for c in failed)
            + f" (qeval audit-items {a.task} for the full audit; the gate's chance guard uses the best heuristic)")
