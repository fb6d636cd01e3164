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


class QuietUI:
    def status(self, message: str) -> None:
        pass

    @contextmanager
    def bar(self, description: str, total: int):
        yield lambda n=1: None
