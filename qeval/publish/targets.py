"""Where a finished run's verdict goes besides its run directory — a JUnit XML file for CI, an
MLflow run (and a registered model version's tag) — and the command-line options that ask for
them, shared by `qeval compare`, `qeval report` and `qeval gate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from qeval.errors import QevalInputError

JunitXml = Annotated[Optional[Path], typer.Option(
    "--junit-xml", help="Also write a JUnit XML report for CI: one test suite per candidate, one test case per task.")]
InconclusiveFails = Annotated[bool, typer.Option(
    "--inconclusive-fails", help="In the JUnit report, an INCONCLUSIVE task is a failure, not skipped.")]
Mlflow = Annotated[bool, typer.Option(
    "--mlflow", help="Log the run to MLflow (the mlflow extra): $MLFLOW_TRACKING_URI, else a SQLite store beside the run directories.")]
MlflowUri = Annotated[Optional[str], typer.Option(
    "--mlflow-uri", help="MLflow tracking URI to log to (implies --mlflow).")]
MlflowModel = Annotated[Optional[str], typer.Option(
    "--mlflow-model", help="NAME/VERSION of a registered MLflow model version to tag with the verdict (implies --mlflow).")]


@dataclass(frozen=True)
class Publish:
    """Where a finished run's verdict goes besides the run directory: a JUnit file, MLflow."""

    junit_xml: Path | None = None
    inconclusive_fails: bool = False
    mlflow_uri: str | None = None  # None: no MLflow logging
    mlflow_model: str | None = None

    @classmethod
    def checked(cls, *, junit_xml: Path | None = None, inconclusive_fails: bool = False, mlflow: bool = False,
                mlflow_uri: str | None = None, mlflow_model: str | None = None,
                runs_parent: Path = Path("runs")) -> Publish:
        """Every problem these outputs can have is found here, before any model time."""
        from qeval.publish.junit import check_target

        check_target(junit_xml)
        uri = None
        if mlflow or mlflow_uri or mlflow_model:
            from qeval.publish.mlflow_log import default_uri, preflight

            uri = mlflow_uri or default_uri(runs_parent)
            preflight(uri, mlflow_model)
        return cls(junit_xml, inconclusive_fails, uri, mlflow_model)

    def run(self, console: Console, run_dir: Path, *, results: dict | None = None,
            timings_dir: Path | None = None, variants: list[dict] | None = None) -> None:
        """Write the JUnit file and log to MLflow. `run_dir` holds the files to log; `timings_dir`
        the timings.json of the run that scored (default: run_dir)."""
        if self.junit_xml is None and self.mlflow_uri is None:
            return
        from qeval.rundir.read import load_run

        results = results if results is not None else load_run(run_dir).results
        if self.junit_xml is not None:
            from qeval.publish.junit import write_junit

            write_junit(self.junit_xml, results, timings_dir or run_dir,
                        inconclusive_fails=self.inconclusive_fails)
            console.print(f"JUnit XML: {self.junit_xml}", highlight=False)
        if self.mlflow_uri is not None:
            from qeval.publish.mlflow_log import log_run

            try:
                run_id = log_run(run_dir, results, uri=self.mlflow_uri, model_version=self.mlflow_model,
                                 variants=variants,
                                 extra_artifacts=(self.junit_xml,) if self.junit_xml else ())
            except QevalInputError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store failed after the run was written
                raise QevalInputError(f"MLflow logging to {self.mlflow_uri} failed ({type(exc).__name__}); "
                                      f"the run directory {run_dir} is complete: log it again with "
                                      f"`qeval report {run_dir} --mlflow-uri URI`") from None
            tagged = f"; model version {self.mlflow_model} tagged qeval.verdict={results['verdict']}" \
                if self.mlflow_model else ""
            console.print(f"MLflow run {run_id} in {self.mlflow_uri}{tagged}", highlight=False)
