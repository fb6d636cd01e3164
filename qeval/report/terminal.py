"""Terminal feedback: status lines and progress bars (rich), or silence for tests."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichUI:
    def __init__(self, console: Console):
        self.console = console

    def status(self, message: str) -> None:
        self.console.print(f"[cyan]•[/] {message}")

    @contextmanager
    def bar(self, description: str, total: int):
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        ) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(task, n)

    def power(self, rows) -> None:
        if not rows:
            return  # no multiple-choice task: nothing to detect in accuracy
        from rich.table import Table

        from qeval.power import row_labels

        table = Table(title="Before scoring: smallest accuracy drop each task can detect "
                      "(paired, power and α from the policy)", title_justify="left")
        for col in ("task", "candidate", "n", "discordance", "from", "detectable drop", "margin", ""):
            table.add_column(col, overflow="fold",
                             justify="right" if col in ("n", "discordance", "detectable drop", "margin") else "left")
        for r in rows:
            flag = (f"[yellow]underpowered: needs ≈{r.n_needed} items[/]" if r.underpowered
                    else "[green]ok[/]" if r.margin is not None else "")
            task, count = row_labels(r.task, r.subset, r.n, r.n_effective)
            table.add_row(task, r.candidate or "all", count, f"{100 * r.discordance:.1f}%",
                          r.discordance_source, f"{100 * r.mde:.1f} pp",
                          "—" if r.margin is None else f"{100 * r.margin:.1f} pp", flag)
        self.console.print(table)


class QuietUI:
    def status(self, message: str) -> None:
        pass

    def power(self, rows) -> None:
        pass

    @contextmanager
    def bar(self, description: str, total: int):
        yield lambda n=1: None
