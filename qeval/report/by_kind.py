"""What the report shows of each task kind, in one place: the only branch point on the kind of a
comparison inside qeval/report (plots and the HTML page look a comparison up here, by its typed
class from qeval.rundir.schema, instead of testing `kind` strings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

from qeval.rundir.schema import ChoiceSummary, GenerationSummary, TextSummary


class KlView(NamedTuple):
    """A comparison with a KL distribution: per item (choice-KL) or per token."""

    unit: Literal["item", "token"]
    values: Callable[[Any, str, str], Sequence[float]]  # (run, candidate, task) → per-unit KL
    limit_rule: str  # the gate policy's limit on the mean
    mean: Callable[[Any], float]  # the comparison's mean KL


class KindView(NamedTuple):
    labelled: bool  # per-item correctness: accuracy, Δ, flips, high-risk items
    kl: KlView | None
    agreement: Callable[[Any], tuple[float, str]] | None  # (estimate, what agrees)


VIEWS: dict[type, KindView] = {
    ChoiceSummary: KindView(
        True, KlView("item", lambda run, cand, task: run.choice_kl(cand, task), "max_choice_kl_mean",
                     lambda c: c.choice_kl_mean.estimate),
        lambda c: (c.top1_agreement.estimate, "top-1")),
    GenerationSummary: KindView(True, None, lambda c: (c.answer_agreement.estimate, "same answer")),
    TextSummary: KindView(
        False, KlView("token", lambda run, cand, task: run.token_kl(cand, task), "max_token_kld_mean",
                      lambda c: c.kld_mean.estimate),
        None),
}


def view(comparison) -> KindView:
    """The view of a comparison of the typed run document (judged or a noise floor's)."""
    for cls, v in VIEWS.items():
        if isinstance(comparison, cls):
            return v
    raise TypeError(f"no report view for {type(comparison).__name__}")
