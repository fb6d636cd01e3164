"""report.html and the run-directory API behind it: a small fake run (multiple choice with
high-risk items and flips both ways, generate, reference text, a noise floor), written with
write_run, loaded back with load_run, rendered to one self-contained page; then checked for
structure, for the absence of any task text, and in a real headless Chromium."""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from conftest import fake_variant
from qeval import load_run
from qeval.report import plots
from qeval.engines.fake import FakeFactory
from qeval.run.config import RunConfig
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.errors import QevalInputError
from qeval.gate import GatePolicy, TaskRules
from qeval.report.html import REPORT_FILE, write_html
from qeval.run.pipeline import CompareResult, run_compare
from qeval.report.tables import EFFICIENCY_COLUMNS, efficiency_rows
from qeval.run.document import results_dict, write_run
from qeval.rundir.write import safe_name as _safe
from qeval.types import (
    GenerationSpec, ItemRecord, Passage, Risk, Sample, SourceSpec, Task, TaskSpec, TextRecord,
)

# Task ids and variant names with characters that need escaping in HTML and in file names.
MC_TASK = "mc:<core>&"
GEN_TASK = "gen_task"
TEXT_TASK = "ref_text"
DAMAGED = 'gguf:q4<"x">'
SAME = "same"
MARKER = "ZQXMARKER"  # in every question, choice, answer and passage: must never reach the HTML
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _mc_task(n: int = 120) -> Task:
    samples = tuple(
        Sample(id=f"s{i:04d}", question=f"{MARKER} question {i} about a dose?",
               choices=tuple(f"{MARKER}choice{i}x{j}" for j in range(4)), target=(i * 7) % 4,
               category=f"area{i % 3}", risk=Risk.high if i % 3 == 0 else Risk.standard)
        for i in range(n))
    return Task(spec=TaskSpec(id=MC_TASK, source=SourceSpec(path=".")), samples=samples,
                content_hash=f"mc-{n}", path="<memory>")


def _gen_task(n: int = 40) -> Task:
    samples = tuple(
        Sample(id=f"g{i:04d}", question=f"{MARKER} generate {i}?",
               choices=tuple(f"{MARKER}gen{i}x{j}" for j in range(4)), target=(i * 5) % 4,
               risk=Risk.high if i % 4 == 0 else Risk.standard)
        for i in range(n))
    spec = TaskSpec(id=GEN_TASK, kind="generate", source=SourceSpec(path="."),
                    generation=GenerationSpec(max_tokens=128, stop=("\nQuestion:",),
                                              answer_pattern=r"answer is:?\s*\(?([A-J])\b"))
    return Task(spec=spec, samples=samples, content_hash=f"gen-{n}", path="<memory>")


def _text_task(n: int = 12) -> Task:
    rng = np.random.default_rng(3)
    words = [MARKER, "renal", "dose", "daily", "review", "blood"]
    passages = tuple(Passage(id=f"p{i:03d}", text=" ".join(rng.choice(words, size=40))) for i in range(n))
    spec = TaskSpec(id=TEXT_TASK, kind="reference_text", source=SourceSpec(format="qeval_passages", path="."),
                    baseline_top_k=16)
    return Task(spec=spec, samples=(), passages=passages, content_hash=f"ref-{n}", path="<memory>")


def _policy() -> GatePolicy:
    default = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
    # A per-task override: the forest plot must draw this task's own margin.
    return default.model_copy(update={"tasks": {MC_TASK: TaskRules(accuracy_margin=0.08)}})


def synthetic_efficiency(results: dict) -> dict:
    """An efficiency section of the documented schema (nulls included) until the real one lands."""
    sizes = {results["baseline"]["variant"]: 538_000_000, SAME: 270_000_000, DAMAGED: 95_000_000}
    floor = results.get("noise_floor")
    if floor:
        sizes[floor["variant"]["variant"]] = 538_000_000
    per_candidate = results["per_candidate"]
    variants = []
    for name, size in sizes.items():
        role = ("baseline" if name == results["baseline"]["variant"] else
                "noise_floor" if floor and name == floor["variant"]["variant"] else "candidate")
        own = [c for c in results["comparisons"] if c["candidate"] == name and "delta" in c]
        worst = min(own, key=lambda c: c["delta"]["estimate"]) if own else None
        variants.append({
            "variant": name, "role": role, "backend": "fake", "device": "cpu", "params": 134_515_008,
            "bits_per_weight": 32.0 * size / 538_000_000, "artefact_bytes": None if role != "candidate" else size,
            "artefact": "synthetic", "weight_bytes": size, "predicted_weight_bytes": None,
            "peak_memory_bytes": size + 300_000_000, "memory_kind": "peak RSS", "load_s": 1.2,
            "scored_here": True,
            "speed": [{"batch": 1, "prefill_tok_s": 900.0, "decode_tok_s": 30.0},
                      {"batch": 8, "prefill_tok_s": None, "decode_tok_s": 120.0}],
            "vs_baseline": {"weight_bytes": size / 538_000_000, "peak_memory": None, "load_s": 1.0,
                            "prefill_b1": 1.0, "decode_b1": 1.1, "prefill_bN": None, "decode_bN": 0.9},
            "quality": None if role == "baseline" else {
                "verdict": per_candidate.get(name, "INCONCLUSIVE"),
                "worst_task": worst["task"] if worst else None,
                "worst_delta": {k: worst["delta"][k] for k in ("estimate", "low", "high")} if worst else None},
        })
    return {"probe": {"prompt_tokens": 128, "new_tokens": 32, "batch": 8, "batch_sizes": [1, 8], "repeats": 3,
                      "torch_threads": 2, "cpu_count": 2, "text": "fixed neutral filler (no task text)"},
            "variants": variants}


def compare_small_run() -> tuple[CompareResult, dict]:
    tasks = [_mc_task(), _gen_task(), _text_task()]
    cfg = RunConfig(baseline=fake_variant("base", skill=0.8),
                    candidates=(fake_variant(DAMAGED, skill=0.8, damage=0.2, promote=0.06, noise=0.3),
                                fake_variant(SAME, skill=0.8)),
                    tasks=tuple(t.spec.id for t in tasks), n_boot=300, noise_floor="batch1")
    if "efficiency" in RunConfig.model_fields:
        cfg = cfg.model_copy(update={"efficiency": None})  # timings are not what this test is about
    policy = _policy()
    res = run_compare(cfg, tasks, factory=FakeFactory(tasks), store=None, model_fingerprint="f" * 64,
                      policy=policy, ui=QuietUI())
    results = results_dict(res, model={"spec": "fake", "source": "fake-model", "fingerprint": "f" * 64},
                           policy={"file": "default.yaml", **policy.model_dump(mode="json")})
    return res, results


def make_small_run(out: Path, *, efficiency: bool = True, log_text: bool = False) -> Path:
    """A finished run directory of the fake backend (report.html written too)."""
    res, results = compare_small_run()
    if efficiency:
        results["efficiency"] = synthetic_efficiency(results)
    else:
        results.pop("efficiency", None)
    write_run(out, res, results, log_text=log_text)
    write_html(out)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    # --log-text on: the texts exist in the run directory, and the page must still show none.
    return make_small_run(tmp_path_factory.mktemp("html") / "run", log_text=True)


@pytest.fixture(scope="module")
def page(run_dir: Path) -> str:
    return (run_dir / REPORT_FILE).read_text()


# ---------------------------------------------------------------- the run-directory API


def test_load_run_reads_names_tasks_and_typed_records(run_dir: Path):
    run = load_run(run_dir)
    assert run.baseline == "base" and run.candidates == (DAMAGED, SAME)
    assert run.noise_floor is not None
    assert [(t.id, t.kind) for t in run.tasks] == [(MC_TASK, "multiple_choice"), (GEN_TASK, "generate"),
                                                   (TEXT_TASK, "reference_text")]
    mc = run.records(DAMAGED, MC_TASK)
    assert len(mc) == 120 and all(isinstance(r, ItemRecord) for r in mc)
    assert type(run.records("base", GEN_TASK)[0]).__name__ == "GenerationRecord"
    assert all(isinstance(r, TextRecord) for r in run.records(SAME, TEXT_TASK))
    with pytest.raises(QevalInputError, match="no records of 'base'"):
        run.records("base", TEXT_TASK)  # the baseline's text distributions are never stored
    with pytest.raises(QevalInputError, match="needs a multiple_choice task"):
        run.choice_kl(DAMAGED, GEN_TASK)


def test_recomputed_kl_matches_results_json(run_dir: Path):
    run = load_run(run_dir)
    for cand in run.candidates:
        c = run.comparison(cand, MC_TASK)
        kl = np.array(run.choice_kl(cand, MC_TASK))
        assert len(kl) == c.n
        assert kl.mean() == pytest.approx(c.choice_kl_mean.estimate, rel=1e-12, abs=1e-15)
        assert kl.max() == pytest.approx(c.choice_kl_max, rel=1e-12, abs=1e-15)
        assert np.quantile(kl, 0.99) == pytest.approx(c.choice_kl_p99, rel=1e-12, abs=1e-15)
        t = run.comparison(cand, TEXT_TASK)
        tokens = np.array(run.token_kl(cand, TEXT_TASK))
        assert len(tokens) == t.n_tokens
        assert tokens.max() == pytest.approx(t.kld_max, rel=1e-12)
        assert np.quantile(tokens, 0.5) == pytest.approx(t.kld_median, rel=1e-12)
    assert np.array(run.choice_kl(DAMAGED, MC_TASK)).mean() > 0.01


def test_load_run_refuses_other_schemas_and_missing_runs(tmp_path: Path):
    with pytest.raises(QevalInputError, match="cannot read results"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": "qeval.results/1"}))
    with pytest.raises(QevalInputError, match=r"schema 'qeval.results/1' is not") as exc:
        load_run(tmp_path)
    assert "\n" not in str(exc.value)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(QevalInputError, match="not valid JSON"):
        load_run(tmp_path)


# ---------------------------------------------------------------- the page's structure


def _svg_by_id(page: str, plot_id: str) -> str:
    m = re.search(rf'<svg id="{plot_id}".*?</svg>', page, flags=re.S)
    assert m, f"no <svg id={plot_id!r}> in the page"
    return m.group(0)


def test_page_has_banner_plots_and_tables(run_dir: Path, page: str):
    results = json.loads((run_dir / "results.json").read_text())
    assert f'class="banner {results["verdict"]}"' in page
    assert all(f"<li>{plots._esc(r)}</li>" in page for r in results["reasons"])
    for name, verdict in results["per_candidate"].items():
        assert f'data-candidate="{plots._esc(name)}">{plots._esc(name)}: {verdict}</span>' in page
    for plot_id in (plots.FOREST_ID, plots.FLIPS_ID, plots.KLD_ID, plots.QUALITY_MEMORY_ID):
        svg = _svg_by_id(page, plot_id)
        assert "<title>" in svg and 'aria-label="' in svg
    labelled = [(c["task"], c["candidate"]) for c in results["comparisons"] if c["kind"] != "reference_text"]
    assert [(c.task, c.candidate) for c in plots.labelled_comparisons(results)] == labelled
    forest = _svg_by_id(page, plots.FOREST_ID)
    assert _row_ids(forest, plots.FOREST_ID) == list(range(len(labelled))) and len(labelled) == 2 * 2
    texts = _texts(forest)
    assert all(f"{t} · {c}" in texts for t, c in labelled), texts  # every row labelled, in full
    assert _row_ids(_svg_by_id(page, plots.FLIPS_ID), plots.FLIPS_ID, "-c2w-high") == list(range(len(labelled)))
    # KL distributions: multiple choice per item, reference text per token, for each candidate.
    kld = _svg_by_id(page, plots.KLD_ID)
    assert len(_row_ids(kld, plots.KLD_ID, "-item")) == 2 and len(_row_ids(kld, plots.KLD_ID, "-token")) == 2
    assert 'id="qeval-tasks"' in page and page.count("<tr>") >= 1 + len(results["comparisons"])
    assert 'id="qeval-efficiency"' in page and "peak RSS" in page
    assert len(_row_ids(_svg_by_id(page, plots.QUALITY_MEMORY_ID), plots.QUALITY_MEMORY_ID)) == 4


def _row_ids(svg: str, plot_id: str, suffix: str = "") -> list[int]:
    """The row numbers of a plot's marks (`<g id="<plot id>-row-<i><suffix>">`), in order."""
    return [int(i) for i in re.findall(rf'<g id="{re.escape(plot_id)}-row-(\d+){re.escape(suffix)}"', svg)]


def _group(svg: str, gid: str) -> str:
    m = re.search(rf'<g id="{re.escape(gid)}">(.*?)</g>', svg, flags=re.S)
    assert m, gid
    return m.group(1)


def _texts(svg: str) -> list[str]:
    """Every <text>'s content (matplotlib writes each line of a label as its own text)."""
    return [html.unescape(t) for t in re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)]


def test_plots_are_deterministic_and_free_of_dates_and_addresses(run_dir: Path):
    """matplotlib's SVG backend with a fixed hash salt and no date: the same run gives the same
    bytes; clip paths (url(#…)) are switched off and the inline copy holds no address."""
    run = load_run(run_dir)
    for make in (lambda: plots.forest_plot(run.document), lambda: plots.flips_plot(run.document),
                 lambda: plots.kld_plot(plots.kl_series(run)), lambda: plots.quality_memory_plot(run.document)):
        first, again = make(), make()
        assert first == again
        inline = plots.inline_svg(first)
        assert "url(" not in inline and "http" not in inline and "<dc:date>" not in first.lower()


def test_long_names_show_in_full_wrapped_after_the_task(run_dir: Path):
    """Row labels are never cut: a long task · candidate label wraps onto two lines (after the
    task), and the canvas widens to hold it (matplotlib's tight bounding box, real font metrics)."""
    run = load_run(run_dir)
    results = copy.deepcopy(run.results)
    long_task, long_cand = "a_very_long_benchmark_task_identifier_v2", "hf:org/some-model-awq-int4-g128-v1.5"
    for c in results["comparisons"]:
        c["task"] = long_task if c["task"] == MC_TASK else c["task"]
        c["candidate"] = long_cand if c["candidate"] == DAMAGED else c["candidate"]
    results["per_candidate"] = {long_cand if k == DAMAGED else k: v for k, v in results["per_candidate"].items()}
    for info in results["candidates"]:
        info["variant"] = long_cand if info["variant"] == DAMAGED else info["variant"]
    for v in results["efficiency"]["variants"]:
        v["variant"] = long_cand if v["variant"] == DAMAGED else v["variant"]
    series = [plots.KlSeries(long_task, long_cand, "token", [0.01, 0.2, 0.03], 0.05, "NO_GO"),
              plots.KlSeries("t", "c", "item", [0.001, 0.002], None, "GO")]

    def width(svg: str) -> float:
        return float(re.search(r'viewBox="0 0 ([\d.]+) ', svg).group(1))

    for svg, short in ((plots.forest_plot(results), plots.forest_plot(run.document)),
                       (plots.flips_plot(results), plots.flips_plot(run.document)),
                       (plots.kld_plot(series), plots.kld_plot(series[1:])),
                       (plots.quality_memory_plot(results), None)):
        texts = _texts(svg)
        assert any(long_cand in t for t in texts), texts
        assert "…" not in svg  # no label is cut short
        assert short is None or width(svg) > width(short)  # the row labels' column widened
    texts = _texts(plots.forest_plot(results))
    assert f"{long_task} ·" in texts and long_cand in texts  # wrapped after the task


def test_efficiency_table_shows_report_md_cells(run_dir: Path, page: str):
    eff = load_run(run_dir).results["efficiency"]
    table = re.search(r'<table id="qeval-efficiency".*?</table>', page, flags=re.S).group(0)

    def text(cell: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", cell))

    headers = [text(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    assert headers == [c.replace("bN", "b8") for c in EFFICIENCY_COLUMNS]
    rows = [[text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])]
    assert rows == efficiency_rows(eff)
    # report.md's note beside the table, with this run's numbers.
    assert "2 torch threads on 2 CPUs" in page and "<code>load_peak_bytes</code>" in page
    md = (run_dir / "report.md").read_text()
    assert all(f"| {' | '.join(row)} |" in md for row in rows)


def test_quality_plot_marks_peak_memory_beside_weights(page: str):
    qm = _svg_by_id(page, plots.QUALITY_MEMORY_ID)
    weights = _row_ids(qm, plots.QUALITY_MEMORY_ID)
    peaks = [int(i) for i in re.findall(rf'<g id="{plots.QUALITY_MEMORY_ID}-peak-(\d+)"', qm)]
    assert len(weights) == 4 and peaks == weights
    texts = " ".join(_texts(qm))
    assert "hollow = peak after loading" in texts and "peak: peak RSS" in texts


def test_forest_draws_each_tasks_own_margin_and_colours_by_verdict(run_dir: Path, page: str):
    forest = _svg_by_id(page, plots.FOREST_ID)
    rows = plots.labelled_comparisons(json.loads((run_dir / "results.json").read_text()))
    margins = {}
    for i, c in enumerate(rows):
        assert plots.VERDICT_COLOUR[c.verdict.value] in _group(forest, f"{plots.FOREST_ID}-row-{i}")
        m = re.search(r'd="M ([-\d.]+) ', _group(forest, f"{plots.FOREST_ID}-margin-{i}"))
        margins.setdefault(c.task, set()).add(m.group(1))
    # 8 pp for the multiple-choice task (override), 5 pp default for the generate task: two x positions.
    assert all(len(xs) == 1 for xs in margins.values()) and len(set().union(*margins.values())) == 2


def test_flips_are_split_by_direction_and_risk(run_dir: Path):
    results = json.loads((run_dir / "results.json").read_text())
    damaged = next(c for c in results["comparisons"] if c["candidate"] == DAMAGED and c["task"] == MC_TASK)
    f = plots.flip_counts(damaged)
    assert f.correct_to_wrong_high > 0 and f.correct_to_wrong_standard > 0
    assert f.wrong_to_correct_high + f.wrong_to_correct_standard > 0  # flips both ways
    assert f.correct_to_wrong_high + f.correct_to_wrong_standard == damaged["flips_correct_to_wrong"]


def test_page_is_self_contained_and_holds_no_task_text(run_dir: Path, page: str):
    assert (run_dir / "texts" / "prompts.jsonl").read_text().count(MARKER) > 100  # the texts were logged
    assert MARKER.lower() not in page.lower()
    assert "question 1 about" not in page and "renal" not in page
    for needle in ("http://", "https://", "src=", "url(", "@import", "<script", "<link", "<iframe", "<img"):
        assert needle not in page.lower(), needle
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    # Names are escaped wherever they appear.
    assert "<core>" not in page and "&lt;core&gt;" in page and '<"x">' not in page


def test_page_without_efficiency_and_quality_plot_without_memory(tmp_path: Path):
    out = make_small_run(tmp_path / "run", efficiency=False)
    page = (out / REPORT_FILE).read_text()
    assert 'id="qeval-efficiency"' not in page
    # The fake backend reports no weight bytes: nothing to place, and the plot says so.
    qm = _svg_by_id(page, plots.QUALITY_MEMORY_ID)
    assert "not measured" in qm and not _row_ids(qm, plots.QUALITY_MEMORY_ID)
    results = json.loads((out / "results.json").read_text())
    results["baseline"]["weight_bytes"] = 538_000_000
    for c in results["candidates"]:
        c["weight_bytes"] = 100_000_000
    svg = plots.quality_memory_plot(results, metric="kl")
    assert len(_row_ids(svg, plots.QUALITY_MEMORY_ID)) == 3  # baseline and two candidates (floor: no bytes)


def test_plots_render_for_a_text_only_run_and_without_a_policy(run_dir: Path):
    doc = load_run(run_dir).document
    results = doc.model_copy(update={"comparisons": [c for c in doc.comparisons if c.kind == "reference_text"],
                                     "policy": {}, "efficiency": None, "noise_floor": None})
    for svg in (plots.forest_plot(results), plots.flips_plot(results), plots.kld_plot([]),
                plots.quality_memory_plot(results)):
        assert svg.startswith("<svg") and 'class="qeval-plot"' in svg
    assert plots.gate_policy(results) is None


def test_standalone_plots_are_well_formed_svg_documents(run_dir: Path):
    """What a notebook shows (IPython.display.SVG parses it as XML) or a file holds."""
    run = load_run(run_dir)
    for svg in (plots.forest_plot(run.results), plots.flips_plot(run.results),
                plots.kld_plot(plots.kl_series(run)), plots.quality_memory_plot(run.results)):
        root = ElementTree.fromstring(svg)
        assert root.tag == f"{{{plots.SVG_NAMESPACE}}}svg" and root.get("aria-label")
        assert root.find(f"{{{plots.SVG_NAMESPACE}}}title") is not None
        assert plots.SVG_NAMESPACE not in plots.inline_svg(svg)


def test_damaged_records_are_one_clear_error(tmp_path: Path, run_dir: Path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    records = copy / "records" / _safe(SAME) / f"{_safe(MC_TASK)}.jsonl"
    records.write_text("".join(records.read_text().splitlines(keepends=True)[1:]))  # one item lost
    with pytest.raises(QevalInputError, match="do not pair with the baseline"):
        load_run(copy).choice_kl(SAME, MC_TASK)
    write_html(copy)  # the page is still written, its KL plot saying why it is empty
    assert "Records not readable" in (copy / REPORT_FILE).read_text()


# ---------------------------------------------------------------- in a real browser


def _browser_flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"]


_MEASURE = """
return Array.from(document.querySelectorAll('svg.qeval-plot')).map(svg => {
  const r = svg.getBoundingClientRect();
  const b = svg.getBBox();
  const marks = svg.querySelectorAll('line, rect, circle, path').length;
  const texts = Array.from(svg.querySelectorAll('text'))
    .filter(t => !/rotate\(-?90/.test(t.getAttribute('transform') || ''))
    .map(t => t.getBBox());
  return {id: svg.id, width: r.width, height: r.height, bboxWidth: b.width, bboxHeight: b.height,
          marks: marks, rows: Array.from(svg.querySelectorAll('g[id]')).filter(g => /-row-\d+$/.test(g.id)).length,
          inSvgNamespace: svg.namespaceURI === 'http://www.w3.org/2000/svg',
          viewWidth: svg.viewBox.baseVal.width,
          textLeft: Math.min(...texts.map(t => t.x)), textRight: Math.max(...texts.map(t => t.x + t.width))};
});
"""


def test_page_renders_in_headless_chromium_without_console_errors(run_dir: Path, tmp_path: Path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed for this test (Debian packages chromium "
                    "and chromium-driver): run scripts/setup.sh as root")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in _browser_flags(tmp_path / "profile"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get((run_dir / REPORT_FILE).resolve().as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        measured = {m["id"]: m for m in driver.execute_script(_MEASURE)}
        log = driver.get_log("browser")
    finally:
        driver.quit()
    assert set(measured) == {plots.FOREST_ID, plots.FLIPS_ID, plots.KLD_ID, plots.QUALITY_MEMORY_ID}
    for plot_id, m in measured.items():
        assert m["inSvgNamespace"], plot_id
        assert m["width"] > 100 and m["height"] > 50, (plot_id, m)
        assert m["bboxWidth"] > 0 and m["bboxHeight"] > 0 and m["marks"] > 5, (plot_id, m)
        # Every label, as the browser lays it out, lies inside the canvas: none is clipped.
        assert m["textLeft"] >= 0 and m["textRight"] <= m["viewWidth"], (plot_id, m)
    assert measured[plots.FOREST_ID]["rows"] == 4 and measured[plots.QUALITY_MEMORY_ID]["rows"] == 4
    severe = [e for e in log if e.get("level") == "SEVERE"]
    assert not severe, severe


def test_setup_script_installs_the_browser():
    script = Path(__file__).parents[1] / "scripts" / "setup.sh"
    assert "chromium-driver" in script.read_text() and "apt-get install" in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
