"""Task registry and the built-in clinical-core items; bad task files fail with one clear line."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from qeval.run.config import suite_tasks
from qeval.settings import resource_dir
from qeval.errors import QevalInputError
from qeval.kinds.choice import build_requests, render_prompt
from qeval.tasks.registry import TaskRegistry, first_n

ITEM = """  - id: {id}
    question: "Which is right?"
    choices: ["one", "two", "three", "four"]
    answer: {answer}
    rationale: "Because."
    risk: standard
"""


def _write_task(root: Path, items: str, extra: str = "") -> Path:
    (root / "t" / "items").mkdir(parents=True, exist_ok=True)
    (root / "t" / "items" / "a.yaml").write_text("area: testing\nitems:\n" + items)
    (root / "t" / "t.yaml").write_text(
        f"id: t\nkind: multiple_choice\nsource:\n  format: qeval_items\n  path: items\n{extra}")
    return root


def test_clinical_core_is_big_diverse_and_well_formed():
    reg = TaskRegistry([resource_dir("tasks")])
    task = reg.load("clinical_core")
    assert len(task.samples) >= 400
    # v2: provenance on every item (the loader enforces it), clusters declared, at most half high risk
    assert task.spec.require_provenance and task.spec.cluster_by == "cluster"
    assert sum(s.risk.value == "high" for s in task.samples) <= len(task.samples) / 2
    areas = Counter(s.category for s in task.samples)
    assert len(areas) >= 10 and min(areas.values()) >= 10
    assert len({s.id for s in task.samples}) == len(task.samples)
    assert all(len(s.choices) in (4, 5) and s.rationale for s in task.samples)
    assert any(s.risk.value == "high" for s in task.samples)
    # The key is spread over positions, so a model that always says "A" sits near chance.
    positions = Counter(s.target for s in task.samples)
    assert max(positions.values()) / len(task.samples) < 0.3
    cloze = reg.load("clinical_core_cloze")
    assert [s.id for s in cloze.samples] == [s.id for s in task.samples]
    assert set(suite_tasks("clinical-core")) == {"clinical_core", "clinical_core_cloze", "clinical_dose_calc",
                                                 "clinical_reference"}


def test_clinical_dose_calc_has_numeric_high_risk_items_with_provenance():
    task = TaskRegistry([resource_dir("tasks")]).load("clinical_dose_calc")
    assert task.spec.kind == "generate" and task.spec.generation.answer == "numeric"
    assert task.spec.require_provenance and task.spec.generation.max_tokens <= 64
    assert len(task.samples) >= 60 and len({s.id for s in task.samples}) == len(task.samples)
    assert all(s.numeric is not None and s.risk.value == "high" and not s.choices for s in task.samples)
    assert all(s.numeric.unit and s.numeric.tolerance() < abs(s.numeric.value) for s in task.samples)


def test_prompts_render_identically_and_hash_stably():
    task = first_n(TaskRegistry([resource_dir("tasks")]).load("clinical_core"), 5)
    tok = lambda text: list(text.encode())
    a = build_requests(task, tok)
    b = build_requests(task, tok)
    assert [x.prompt_hash for x in a] == [x.prompt_hash for x in b]
    assert len({x.prompt_hash for x in a}) == 5
    ctx, conts = render_prompt(task.spec, task.samples[0])
    assert task.samples[0].question in ctx and conts[0] == " A"


def test_a_new_yaml_file_adds_a_task(tmp_path):
    reg = TaskRegistry([_write_task(tmp_path, ITEM.format(id="x1", answer="B") + ITEM.format(id="x2", answer="D"))])
    assert reg.ids() == ["t"]
    task = reg.load("t")
    assert [s.target for s in task.samples] == [1, 3]
    assert task.samples[0].category == "testing"


@pytest.mark.parametrize("items,extra,message", [
    (ITEM.format(id="x1", answer="E"), "", "not among its choices"),
    (ITEM.format(id="x1", answer="A") + ITEM.format(id="x1", answer="B"), "", "duplicate sample id 'x1'"),
    (ITEM.format(id="x1", answer="A").replace("risk: standard", "risk: standard\n    colour: red"), "", "colour"),
    (ITEM.format(id="x1", answer="A").replace('    rationale: "Because."\n', ""), "", "rationale"),
    ("", "", "items"),
    (ITEM.format(id="x1", answer="A"), "promt:\n  template: x\n", "promt"),
    (ITEM.format(id="x1", answer="A"), "kind: essay\n", "kind"),
])
def test_bad_task_files_name_the_problem(tmp_path, items, extra, message):
    root = _write_task(tmp_path, items, extra)
    if "kind: essay" in extra:
        (root / "t" / "t.yaml").write_text((root / "t" / "t.yaml").read_text().replace("kind: multiple_choice\n", ""))
    with pytest.raises(QevalInputError, match=message):
        TaskRegistry([root]).load("t")


def test_empty_item_list_is_an_error(tmp_path):
    root = _write_task(tmp_path, "")
    (root / "t" / "items" / "a.yaml").write_text("area: testing\nitems: []\n")
    with pytest.raises(QevalInputError, match="no items"):
        TaskRegistry([root]).load("t")


def test_broken_yaml_names_file_and_line(tmp_path):
    root = _write_task(tmp_path, ITEM.format(id="x1", answer="A"))
    (root / "t" / "items" / "a.yaml").write_text("area: testing\nitems:\n  - id: [unclosed\n")
    with pytest.raises(QevalInputError, match=r"a\.yaml line \d+: not valid YAML"):
        TaskRegistry([root]).load("t")


def test_unknown_task_lists_known_ones():
    with pytest.raises(QevalInputError, match="clinical_core"):
        TaskRegistry([resource_dir("tasks")]).load("no_such_task")


CLUSTERED = """  - id: {id}
    question: "Which is right?"
    choices: ["one", "two", "three", "four"]
    answer: A
    rationale: "Because."
    risk: standard
    cluster: {cluster}
"""


def test_with_cluster_by_an_item_without_a_cluster_is_a_cluster_of_its_own(tmp_path):
    from qeval.pairing import task_clusters

    items = (CLUSTERED.format(id="x1", cluster="case1") + ITEM.format(id="x2", answer="B")
             + CLUSTERED.format(id="x3", cluster="case1") + ITEM.format(id="x4", answer="C"))
    task = TaskRegistry([_write_task(tmp_path, items, "cluster_by: cluster\n")]).load("t")
    labels = task_clusters(task)
    assert labels["x1"] == labels["x3"] == "case1"
    assert len(set(labels.values())) == 3 and labels["x2"] != labels["x4"]


def test_clustered_task_loads_and_unused_new_fields_keep_the_hash(tmp_path):
    items = CLUSTERED.format(id="x1", cluster="case1") + CLUSTERED.format(id="x2", cluster="case1")
    task = TaskRegistry([_write_task(tmp_path / "a", items, "cluster_by: cluster\n")]).load("t")
    assert [s.cluster for s in task.samples] == ["case1", "case1"]
    assert task.spec.cluster_by == "cluster"
    # Adding the optional cluster fields to the schema must not change the hash of tasks that do
    # not use them (their stored records stay reusable): the hash ignores unset new fields.
    plain = TaskRegistry([_write_task(tmp_path / "b", ITEM.format(id="x1", answer="A"))]).load("t")
    import hashlib
    import json

    later = ("cluster", "passage", "prompt_text", "continuations", "answers", "numeric")  # Sample fields
    spec = {k: v for k, v in plain.spec.model_dump(mode="json").items()
            if k not in ("cluster_by", "baseline_top_k", "window_tokens", "generation", "require_provenance",
                         "rotations", "position_buckets")}
    spec["source"] = {k: v for k, v in spec["source"].items() if k != "ids_path"}
    legacy = json.dumps({
        "spec": spec,
        "samples": [{k: v for k, v in s.model_dump(mode="json").items() if k not in later}
                    for s in plain.samples]}, sort_keys=True)
    assert plain.content_hash == hashlib.sha256(legacy.encode()).hexdigest()


def test_several_comma_separated_suites_run_all_their_tasks_in_order_each_once():
    from qeval.run.app import task_ids

    assert task_ids(None, "clinical-core,clinical-long") == suite_tasks("clinical-core") + ("clinical_long_context",)
    assert task_ids(None, "clinical-core, clinical-core") == suite_tasks("clinical-core")
    with pytest.raises(QevalInputError, match="unknown suite 'nope'"):
        task_ids(None, "clinical-core,nope")
    with pytest.raises(QevalInputError, match="names no suite"):
        task_ids(None, " , ")
