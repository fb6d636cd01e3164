"""What every `qeval` command shares: the typer app, the one-line error format, the console that
stays readable in a CI log, and the option declarations used by more than one command."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

try:
    from typer import _click as click  # the click typer parses with (vendored since typer 0.20)
except ImportError:  # an older typer, on the click package
    import click

from qeval.publish.targets import InconclusiveFails, JunitXml, Mlflow, MlflowModel, MlflowUri
from qeval.types import EXIT_BAD_INPUT

# Piped output (a CI log) is not squeezed into 80 columns: tables keep one line per row.
CI_WIDTH = 240


def out_console() -> Console:
    """stdout. On a terminal rich follows its width; elsewhere (a pipe, a CI log) at least
    CI_WIDTH columns, so that a table row is never wrapped over several lines."""
    probe = Console()
    if probe.is_terminal:
        return probe
    columns = os.environ.get("COLUMNS", "")
    return Console(width=max(int(columns) if columns.isdigit() else 0, CI_WIDTH))


def err_console() -> Console:
    from qeval.util.noise import terminal_stderr

    return Console(file=terminal_stderr(), soft_wrap=True)


def error_line(message: str) -> None:
    err_console().print(f"qeval: error: {message}", markup=False, highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    error_line(message)
    raise typer.Exit(EXIT_BAD_INPUT)


class _FlagError(click.exceptions.ClickException):
    """A flag click refused (out of range, not a number, unknown option or command): one
    `qeval: error:` line like every other bad input, not click's usage block."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        error_line(self.message)


def flag_error_line(exc) -> str:
    """click's own words for the problem (which flag, which value, the allowed range), then where
    to look for the right spelling."""
    text = exc.format_message().strip().rstrip(".")
    text = " ".join(text.split())  # click's messages may span lines ("Did you mean ...")
    command = " ".join(["qeval", *exc.ctx.command_path.split()[1:]]) if exc.ctx is not None else "qeval"
    return f"{text[:1].lower()}{text[1:]}; see `{command} --help`"


class _OneLineErrors(TyperGroup):
    """Usage errors of the group and of every command become one line (exit 2). Parsing of the
    group's own flags happens in make_context, a command's in the group's invoke."""

    def make_context(self, *args, **kwargs):
        with _one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line():
            return super().invoke(ctx)


_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextlib.contextmanager
def _one_line():
    try:
        yield
    except _NO_ARGS_HELP:
        raise  # `qeval` alone prints the help (click >= 8.2 raises it as a usage error)
    except click.exceptions.UsageError as exc:
        raise _FlagError(flag_error_line(exc)) from None


# No local variables in tracebacks: they hold prompt text (PHI). main() also withholds messages.
app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False,
                  help="Is this quantized model safe to release instead of the full-precision one?")


# Options that several commands declare alike.
Model = Annotated[str, typer.Option(help="Built-in alias, .gguf file, HF checkpoint directory or hub id.")]
Base = Annotated[str, typer.Option("--base", help="Baseline variant: fp16, bf16 or fp32.")]
Suite = Annotated[str, typer.Option(help="Task suite from configs/suites/; several comma-separated run all their tasks, e.g. clinical-core,clinical-long.")]
Tasks = Annotated[Optional[str], typer.Option(help="Comma-separated task ids, task YAML files or folders of them; overrides --suite.")]
Policy = Annotated[str, typer.Option(help="Gate policy: a name in configs/gates/ or a YAML path.")]
Out = Annotated[Optional[Path], typer.Option(help="Run directory to create (default: runs/<timestamp>).")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
BatchSize = Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")]
Executor = Annotated[str, typer.Option(help="Where variants run: local (this process, one after another) or ray (a Ray cluster: each variant in a worker holding its resources, its tasks as chunk jobs, the candidates in parallel).")]
RayAddress = Annotated[Optional[str], typer.Option(help="With --executor ray: the cluster to use, auto (the one `ray start` runs on this machine) or ray://HOST:10001; default: a local cluster started for this run.")]
RayCpus = Annotated[int, typer.Option(min=1, help="With --executor ray: CPUs each CPU job asks for.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Folder of benchmark files in their original formats (open-medical suite; default $QEVAL_DATA_DIR or configs/data.yaml).")]
Include = Annotated[Optional[list[Path]], typer.Option(
    help="A folder of your own tasks/ and suites/ (as `qeval init` writes it); repeatable; also $QEVAL_TASK_PATH.")]

# Where a verdict goes besides the run directory (compare, report, gate): declared once here.
PUBLISH_FLAGS = (("junit_xml", JunitXml, None), ("inconclusive_fails", InconclusiveFails, False),
                 ("mlflow", Mlflow, False), ("mlflow_uri", MlflowUri, None), ("mlflow_model", MlflowModel, None))


def publish_options(command):
    """Give a command the --junit-xml, --inconclusive-fails and --mlflow* flags; it receives
    them as one keyword argument `publish` (a dict for Publish.checked)."""
    own = inspect.signature(command, eval_str=True)
    params = [p for p in own.parameters.values() if p.name != "publish"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
               for name, kind, default in PUBLISH_FLAGS]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        publish = {name: kwargs.pop(name) for name, _, _ in PUBLISH_FLAGS}
        return command(*args, publish=publish, **kwargs)

    del wrapper.__wrapped__
    wrapper.__signature__ = own.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
