"""notebooks/explore_run.ipynb: executed against a small fake run through qeval's public API, and
committed without outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from qeval.report import plots
from test_html_report import MARKER, make_small_run

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "explore_run.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run = make_small_run(tmp_path_factory.mktemp("nb") / "run", log_text=True)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = os.environ.get("QEVAL_RUN_DIR")
    os.environ["QEVAL_RUN_DIR"] = str(run)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        if old is None:
            os.environ.pop("QEVAL_RUN_DIR", None)
        else:
            os.environ["QEVAL_RUN_DIR"] = old
    return run, nb


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_notebook_runs_and_shows_the_main_plots(executed):
    run, nb = executed
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    svgs = [o.data["image/svg+xml"] for o in outputs if o.output_type == "display_data"
            and "image/svg+xml" in o.data]
    for plot_id in (plots.FOREST_ID, plots.FLIPS_ID, plots.KLD_ID, plots.QUALITY_MEMORY_ID):
        assert sum(f'id="{plot_id}"' in s for s in svgs) == 1, plot_id
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(run) in text and "verdict NO_GO" in text
    results = json.loads((run / "results.json").read_text())
    assert all(c["task"] in text and c["verdict"] in text for c in results["comparisons"])
    # ids and numbers only, although the run logged its texts
    assert MARKER.lower() not in json.dumps(nbformat.from_dict(nb)).lower()
