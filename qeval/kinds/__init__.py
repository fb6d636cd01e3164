"""Task kinds: what a task's items are, how they are scored, paired, compared and judged.

A kind is one module with a `KIND` object satisfying `TaskKind` (qeval/kinds/base.py) and one
line in `KINDS` below (name → module, imported on first use). Everything outside this package
asks the kind (`kind_of(task.spec.kind)`) instead of testing its name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from qeval.errors import QevalInputError

if TYPE_CHECKING:
    from qeval.kinds.base import TaskKind
    from qeval.types import TaskSpec

# Name (the `kind:` of a task file, results.json's `kind`) → the module that defines its KIND.
KINDS: dict[str, str] = {
    "multiple_choice": "qeval.kinds.choice",
    "generate": "qeval.kinds.generate",
    "reference_text": "qeval.kinds.reference_text",
}
DEFAULT_KIND = "multiple_choice"  # a task file without `kind:`; a stored comparison without one
_LOADED: dict[str, TaskKind] = {}  # module → its KIND


def kind_of(name: str, where: object = None) -> TaskKind:
    """The kind called `name`; an unknown one is bad input (`where`: the file or task that named it)."""
    module = KINDS.get(name)
    if module is None:
        at = f"{where}: " if where is not None else ""
        raise QevalInputError(f"{at}unknown task kind {name!r}; known kinds: {', '.join(KINDS)}; "
                              "set `kind:` to one of them")
    if module not in _LOADED:
        _LOADED[module] = importlib.import_module(module).KIND
    return _LOADED[module]


def all_kinds() -> list[TaskKind]:
    return [kind_of(name) for name in KINDS]


def check_spec(spec: TaskSpec, where: object = None) -> TaskKind:
    """The spec's kind, after the checks every kind shares: it is known, and rotated options are
    asked for only where the kind scores them."""
    kind = kind_of(spec.kind, where)
    if spec.rotations != "none" and not kind.rotates:
        at = f"{where}: " if where is not None else ""
        rotating = " or ".join(k.name for k in all_kinds() if k.rotates)
        raise QevalInputError(f"{at}rotations: {spec.rotations} applies to {rotating} tasks, not "
                              f"{spec.kind}; remove it")
    return kind
