"""Release-gate commands: `qeval gate` (re-judge a stored run under another policy, no model) and
`qeval init` (a starter policy, suite and task folder to begin from)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from qeval.cli.common import app, fail as _fail, out_console as Console, publish_options
from qeval.errors import QevalInputError
from qeval.publish.targets import Publish


def _check_gate_out(out_dir: Path) -> None:
    """A gate output folder may replace an earlier gate output, never anything else."""
    if not out_dir.exists():
        return
    import json

    try:
        earlier = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or "rejudged" not in earlier:
        raise QevalInputError(f"--out {out_dir}: exists and is not an earlier `qeval gate` output; "
                              "give a new folder")


@app.command()
@publish_options
def gate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `qeval compare`.")],
    policy: Annotated[str, typer.Option(help="Gate policy to judge with: a name in configs/gates/ or a YAML path.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for the new results.json, report.md and report.html (default: RUN_DIR/gates/<policy>; an earlier one there is replaced).")] = None,
    write: Annotated[bool, typer.Option(help="Write the re-judged results (--no-write: print only).")] = True,
    *,
    publish: dict,
) -> None:
    """Judge a stored run again under another policy, without a model: same statistics, new
    verdicts. Exit code: 0 GO, 1 NO_GO, 3 INCONCLUSIVE, 2 bad input."""
    from qeval.run.config import policy_path
    from qeval.gate import GatePolicy
    from qeval.run.rejudge import rejudge, write_rejudged
    from qeval.report.terminal import print_summary
    from qeval.rundir.read import load_run

    console = Console()
    try:
        run = load_run(run_dir)
        gate_file = policy_path(policy)
        gate_policy = GatePolicy.from_yaml(gate_file)
        out_dir = out if out is not None else run_dir / "gates" / gate_file.stem
        if write:
            _check_gate_out(out_dir)
        elif publish["mlflow"] or publish["mlflow_uri"] or publish["mlflow_model"]:
            raise QevalInputError("--mlflow logs the re-judged files: drop --no-write")
        target = Publish.checked(**publish, runs_parent=run_dir.parent)
        results = rejudge(run, gate_policy, policy_file=gate_file)
        print_summary(console, results, None)
        before = results["rejudged"]
        console.print(f"Re-judged under {gate_file}: {before['verdict']} (exit {before['exit_code']}) under "
                      f"the run's policy, {results['verdict']} (exit {results['exit_code']}) under this one",
                      highlight=False)
        if write:
            write_rejudged(out_dir, run, results)
            console.print(f"Written: {out_dir}  (results.json, report.md, report.html)", highlight=False)
        target.run(console, out_dir, results=results, timings_dir=run_dir)
    except QevalInputError as exc:
        _fail(str(exc))
    raise typer.Exit(results["exit_code"])


INIT_POLICY = "qeval-gate.yaml"


def starter_policy(default_text: str) -> str:
    """configs/gates/default.yaml (every field documented) under another name, with a note on
    per-task overrides."""
    head = ("# Starter release gate written by `qeval init`: the defaults of configs/gates/default.yaml,\n"
            "# every limit explained. Edit the numbers, then pass --policy qeval-gate.yaml.\n")
    body = default_text.replace("name: default\n", "name: my-release-gate\n", 1)
    tail = ("# Per-task overrides name only what changes, e.g.\n# tasks:\n#   my_task:\n"
            "#     accuracy_margin: 0.03\n#     max_high_risk_flips: 0\n")
    return head + body + tail


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to write into.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite files that exist.")] = False,
) -> None:
    """Write a starter policy (qeval-gate.yaml, every limit commented), a suite
    (suites/my-suite.yaml) and an example task (tasks/my_task/) to start a release gate from."""
    from qeval.settings import resource_dir
    from qeval.util.fileio import atomic_write_text

    console = Console()
    template = resource_dir("configs") / "init"
    files = [(directory / INIT_POLICY,
              starter_policy((resource_dir("configs") / "gates" / "default.yaml").read_text()))]
    files += [(directory / p.relative_to(template), p.read_text())
              for p in sorted(template.rglob("*.yaml")) if p.is_file()]
    try:
        if not directory.is_dir():
            raise QevalInputError(f"{directory}: not a directory; create it first")
        existing = [str(path) for path, _ in files if path.exists()]
        if existing and not force:
            raise QevalInputError(f"{existing[0]} exists ({len(existing)} of the files do); "
                                  "pass --force to overwrite them")
    except QevalInputError as exc:
        _fail(str(exc))
    for path, text in files:
        atomic_write_text(path, text)
        console.print(f"wrote {path}", highlight=False)
    console.print(f"next: qeval compare --include {directory} --suite my-suite --policy "
                  f"{directory / INIT_POLICY} --limit 20   (add --junit-xml qeval.xml for CI)", highlight=False)
