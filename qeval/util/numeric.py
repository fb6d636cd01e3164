"""Numbers in text: the one reading of a number shared by numeric answers (generation.py) and
the cue audit's numeric options (item_audit.py). Pure.

A number is digits with an optional decimal part ("12", "0.5", ".5") or digits grouped in
thousands by commas ("1,000", "12,500.5"); an ASCII hyphen or a Unicode minus sign directly
before it makes it negative. Nothing else: no exponents ("1.5e2" reads as 1.5), no decimal
commas ("1,5" reads as 1), no spaces inside ("10 000" reads as 10).
"""

from __future__ import annotations

import re

NUMBER = re.compile(
    r"(?<![\w.,])([-\u2212]?)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\d])")


def numbers(text: str) -> list[float]:
    """Every number in the text, in order."""
    out = []
    for m in NUMBER.finditer(text):
        value = float(m.group(2).replace(",", ""))
        out.append(-value if m.group(1) else value)
    return out


def first_number(text: str | None) -> float | None:
    """The first number in the text, or None."""
    if text is None:
        return None
    found = numbers(text)
    return found[0] if found else None


def format_number(x: float) -> str:
    """A short canonical spelling ("70", "0.5", "1250"): equal numbers, equal text."""
    return f"{x:.10g}"
