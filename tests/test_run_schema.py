"""The typed run document (qeval/rundir/schema.py): a run written by the fake backend parses into
its models and dumps back to the very same bytes; the committed JSON Schemas under schemas/ are
what the models generate; rundir reads a run without loading the report or the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qeval import load_run
from qeval.errors import QevalInputError
from qeval.rundir.schema import EfficiencyDoc, PairedDoc, RunResults, dump, json_schemas
from test_html_report import make_small_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_small_run(tmp_path_factory.mktemp("schema") / "run")


@pytest.mark.parametrize("name, model, indent", [("results.json", RunResults, 1),
                                                 ("efficiency.json", EfficiencyDoc, 1),
                                                 ("paired.json", PairedDoc, None)])
def test_parse_then_dump_gives_the_same_bytes(run_dir: Path, name, model, indent):
    text = (run_dir / name).read_text()
    doc = model.model_validate_json(text)
    assert dump(doc, indent=indent) == text


def test_fields_absent_in_the_file_stay_absent(run_dir: Path):
    text = (run_dir / "results.json").read_text()
    raw = json.loads(text)
    assert "artefacts" not in raw and "efficiency" not in raw  # not written by this run
    assert raw["engine_floor"] is None  # written as null: set to None, not left out
    doc = RunResults.model_validate(raw)
    assert "artefacts" not in json.loads(dump(doc)) and json.loads(dump(doc))["engine_floor"] is None


def test_load_run_is_typed(run_dir: Path):
    run = load_run(run_dir)
    doc = run.document
    assert isinstance(doc, RunResults) and doc.efficiency is not None
    assert doc.baseline.variant == run.baseline and [c.variant for c in doc.candidates] == list(run.candidates)
    kinds = {type(c).__name__ for c in doc.comparisons}
    assert kinds == {"JudgedChoice", "JudgedGeneration", "JudgedText"}
    eff = json.loads((run_dir / "efficiency.json").read_text())
    assert run.results["efficiency"] == {k: v for k, v in eff.items() if k != "schema"}
    assert run.results["verdict"] == doc.verdict.value


def test_a_document_that_does_not_fit_is_one_line(run_dir: Path, tmp_path: Path):
    raw = json.loads((run_dir / "results.json").read_text())
    raw["comparisons"][0]["n"] = "many"
    (tmp_path / "results.json").write_text(json.dumps(raw))
    with pytest.raises(QevalInputError, match=r"results.json: comparisons\.0\..*n: .*use the qeval that wrote") as exc:
        load_run(tmp_path)
    assert "\n" not in str(exc.value)


def test_committed_json_schemas_are_the_generated_ones():
    generated = json_schemas()
    committed = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.schema.json")}
    assert committed == generated, ("schemas/ is stale: run `python -m qeval.rundir.schema schemas` "
                                    "(and bump the schema version if a field changed)")


def test_reading_a_run_loads_neither_report_nor_pipeline():
    code = ("import sys, qeval.rundir.read, qeval.rundir.write; "
            "bad = sorted(m for m in sys.modules if m.startswith(('qeval.report', 'qeval.run.', 'qeval.engines'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
