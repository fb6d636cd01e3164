"""fake: the fake engine's controlled behaviour (statistics and gate tests only)."""

from __future__ import annotations

from qeval.variants.base import QuantMethod


class Fake(QuantMethod):
    name = "fake"
    engine = "fake"
    listed = False  # never a variant a user picks
    baseline = True  # plays any role in the statistics and gate tests


METHOD = Fake()
