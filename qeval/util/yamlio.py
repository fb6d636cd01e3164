"""The one way qeval reads a YAML file: safe loading, and errors that name the file and the line
but never quote it (a task's items, a passage or a user's policy may hold patient-derived text)."""

from __future__ import annotations

from pathlib import Path

import yaml

from qeval.errors import QevalInputError


def read_yaml(path: Path, *, empty: object = None) -> object:
    """The file's YAML document (`empty` when the file holds none). Any problem — not YAML, not
    UTF-8, not readable — is one QevalInputError: the file, the line and PyYAML's name for the
    problem, never the snippet of the file PyYAML's own message shows."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise QevalInputError(f"{path}{_where(exc)}: not valid YAML ({_problem(exc)}); fix the syntax") from None
    except UnicodeDecodeError as exc:
        raise QevalInputError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise QevalInputError(f"{path}: cannot read ({exc.strerror})") from None
    return empty if data is None else data


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" line {mark.line + 1}" if mark is not None else ""


def _problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    opened = getattr(exc, "context_mark", None)
    context = getattr(exc, "context", None)
    if opened is not None and context and (mark is None or opened.line != mark.line):
        problem += f"; {context} that starts at line {opened.line + 1}"
    return problem
