"""Calibration sets, the contamination guard, GPTQ/AWQ variant checks and the calibrate
experiment's statistics: pure functions, no quantizer needed."""

from __future__ import annotations

import json
from pathlib import Path
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from qeval.report.plots import CALIBRATE_ID, calibrate_plot
from qeval.run.calibrate import Arm, summarise
from qeval.quantize.gptq_awq import calibration_windows, check_variant, layer_widths, valid_groups
from qeval.quantize.calibration_sets import (
    NGRAM, CalibrationSet, builtin_sets, check_contamination, contamination, load_builtin,
    load_calibration, texts_sha256,
)
from qeval.run.config import parse_variant, split_variants
from qeval.settings import resource_dir
from qeval.errors import QevalInputError
from qeval.stats import seeds_units_bootstrap
from qeval.types import ItemRecord, Passage, Risk, Task, TaskSpec, TextRecord

from conftest import make_task

SMOLLM = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}


# ---------------------------------------------------------------- sets


def test_builtin_sets_match_their_manifests_and_differ():
    root = resource_dir("calibration")
    assert {"generic", "clinical"} <= set(builtin_sets(root))
    sets = {name: load_builtin(root / name) for name in ("generic", "clinical")}
    for s in sets.values():
        assert len(s.texts) >= 32 and s.sha256 == texts_sha256(s.texts)
    assert sets["generic"].sha256 != sets["clinical"].sha256


def test_an_edited_builtin_set_is_refused(tmp_path):
    src = resource_dir("calibration") / "generic"
    (tmp_path / "generic").mkdir()
    for f in ("manifest.yaml", "samples.jsonl"):
        (tmp_path / "generic" / f).write_text((src / f).read_text())
    lines = (tmp_path / "generic" / "samples.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["text"] += " One more sentence."
    (tmp_path / "generic" / "samples.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with pytest.raises(QevalInputError, match="no longer match"):
        load_calibration("generic", tmp_path)


def test_user_files_jsonl_and_txt(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first sample"}\n\n{"text": "second"}\n')
    (tmp_path / "b.txt").write_text("first sample\n\nsecond\n")
    a = load_calibration(str(tmp_path / "a.jsonl"), tmp_path)
    b = load_calibration(str(tmp_path / "b.txt"), tmp_path)
    assert a.texts == b.texts == ("first sample", "second")
    assert a.sha256 == b.sha256  # content identity, whatever the file format


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\nnot json\n', "line 2: not valid JSON"),
    ('{"body": "x"}\n', 'line 1: needs a non-empty string field "text"'),
    ("", "holds no text samples"),
])
def test_bad_calibration_files_name_the_line(tmp_path, content, message):
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(QevalInputError, match=message):
        load_calibration(str(tmp_path / "c.jsonl"), tmp_path)


def test_unknown_set_lists_the_builtins():
    with pytest.raises(QevalInputError, match="clinical, generic"):
        load_calibration("medical_web", resource_dir("calibration"))


def test_hub_set_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(QevalInputError, match="hub could not provide it"):
        load_calibration("hf:no-such-org/no-such-dataset", resource_dir("calibration"))


# ---------------------------------------------------------------- contamination


def _passage_task(texts: list[str]) -> Task:
    spec = TaskSpec(id="notes", kind="reference_text", source={"path": "."})
    return Task(spec=spec, samples=(), content_hash="h", path="<memory>",
                passages=tuple(Passage(id=f"p{i}", text=t) for i, t in enumerate(texts)))


def test_contamination_counts_items_sharing_a_13_word_sequence():
    leak = ("the patient should take one tablet of the new medicine every morning with a full glass "
            "of water")
    task = _passage_task([f"Intro words here. {leak}. More text.", "Completely unrelated passage " * 5,
                          "Another passage about something else entirely " * 3])
    calib = CalibrationSet("c", ("Calibration prose. " + leak, "more"), "x", "test")
    [o] = contamination(calib, [task])
    assert (o.contaminated, o.units, o.examples) == (1, 3, ("p0",))
    with pytest.raises(QevalInputError, match=r"1/3 items share a 13-word sequence.*--allow-contamination"):
        check_contamination(calib, [task])
    assert check_contamination(calib, [task], allow=True)[0].contaminated == 1
    # twelve shared words are not a leak by this rule
    short = CalibrationSet("c", (" ".join(leak.split()[:NGRAM - 1]),), "y", "test")
    assert contamination(short, [task])[0].contaminated == 0


def test_builtin_sets_do_not_overlap_the_builtin_tasks():
    from qeval.tasks.registry import TaskRegistry

    # The benchmark tasks read our own fixture files in the published formats.
    reg = TaskRegistry([resource_dir("tasks")], Path(__file__).parent / "fixtures" / "benchmarks")
    tasks = [reg.load(t) for t in reg.ids()]
    for name in ("generic", "clinical"):
        overlaps = check_contamination(load_builtin(resource_dir("calibration") / name), tasks)
        assert all(o.contaminated == 0 for o in overlaps), overlaps


def test_multiple_choice_items_are_checked_on_question_and_options():
    task = make_task(10)
    calib = CalibrationSet("c", (" ".join(["word"] * 5) + " " + task.samples[3].question + " "
                                 + " ".join(task.samples[3].choices),), "x", "t")
    assert contamination(calib, [task])[0].examples[0] == task.samples[3].id


# ---------------------------------------------------------------- variants


def test_group_sizes_that_fit_smollm():
    assert valid_groups(layer_widths(SMOLLM)) == [-1, 16, 32, 64]


def test_impossible_group_is_refused_listing_valid_choices():
    with pytest.raises(QevalInputError, match=r"group=128 does not divide.*hidden_size.*576.*choose group from -1, 16, 32, 64"):
        check_variant(parse_variant("gptq:group=128"), SMOLLM)
    check_variant(parse_variant("gptq:group=32"), SMOLLM)


@pytest.mark.parametrize("text,message", [
    ("gptq:bits=5", "gptq supports bits 2, 3, 4, 8"),
    ("awq:bits=3", "awq supports bits 4"),
    ("gptq:groupsize=64", "unknown parameter.*groupsize"),
    ("awq:act_order=true", "unknown parameter.*act_order"),
    ("gptq:sym=maybe", "sym must be true or false"),
    ("gptq:samples=0", "samples must be >= 1"),
    ("gptq:damp=2", "damp must be a number between 0 and 1"),
    ("gptq=", "gptq= needs a path"),
])
def test_bad_gptq_awq_parameters_fail_at_parse_time(text, message):
    with pytest.raises(QevalInputError, match=message):
        parse_variant(text)


def test_brought_checkpoints_parse_and_split():
    v = parse_variant("gptq=/ckpt/model-gptq")
    assert v.method == "gptq" and v.params == {"path": "/ckpt/model-gptq"}
    assert split_variants("gptq:bits=4,group=32,awq=/x,int8") == ["gptq:bits=4,group=32", "awq=/x", "int8"]
    with pytest.raises(QevalInputError, match="takes no parameters"):
        check_variant(v.model_copy(update={"params": {"path": "/x", "bits": 4}}), None)


def test_calibration_windows_are_deterministic_and_seeded():
    texts = [f"sample {i} " + "word " * 40 for i in range(10)]

    def tokenize(t):
        return [hash(w) % 1000 for w in t.split()]

    a = calibration_windows(texts, tokenize, samples=8, seqlen=32, seed=0)
    assert a == calibration_windows(texts, tokenize, samples=8, seqlen=32, seed=0)
    assert a != calibration_windows(texts, tokenize, samples=8, seqlen=32, seed=1)
    assert all(len(w) == 32 for w in a)
    with pytest.raises(QevalInputError, match="fewer than seqlen"):
        calibration_windows(texts[:1], tokenize, samples=1, seqlen=500, seed=0)


# ---------------------------------------------------------------- experiment statistics


def test_two_level_bootstrap_separates_a_real_difference_from_seed_noise():
    rng = np.random.default_rng(0)
    units = rng.normal(0.1, 0.05, size=200)  # per-item difficulty shared by both arms
    a = units + rng.normal(0, 0.01, size=(3, 200))
    b_same = units + rng.normal(0, 0.01, size=(3, 200))
    b_worse = units + 0.05 + rng.normal(0, 0.01, size=(3, 200))
    same, p_same = seeds_units_bootstrap(a, b_same, n_boot=2000, seed=1)
    worse, p_worse = seeds_units_bootstrap(a, b_worse, n_boot=2000, seed=1)
    assert same.low < 0 < same.high and p_same > 0.05
    assert worse.high < 0 and p_worse < 0.01
    # seed-to-seed noise as large as the gap makes it indistinguishable
    noisy = units + 0.05 + np.array([[-0.3], [0.0], [0.3]])
    loose, _ = seeds_units_bootstrap(a, noisy, n_boot=2000, seed=1)
    assert loose.low < 0 < loose.high


def _records(task_id, n, correct, scores, variant):
    return [ItemRecord(task=task_id, sample_id=f"s{i:04d}", variant=variant, prompt_hash="h",
                       choice_logprobs=tuple(scores[i]), choice_scores=tuple(scores[i]),
                       prediction=int(np.argmax(scores[i])), target=0, correct=bool(correct[i]),
                       category="all", risk=Risk.standard) for i in range(n)]


def _text(task_id, n, kl_per_token, variant):
    return [TextRecord(task=task_id, sample_id=f"p{i}", variant=variant, prompt_hash="h", n_tokens=50,
                       kl=tuple([kl_per_token * (1 + 0.1 * (i % 3))] * 50), same_top=45,
                       nll_baseline=100.0, nll_candidate=100.0 + 50 * kl_per_token, category="all")
            for i in range(n)]


def test_summarise_ranks_the_set_with_less_damage_first():
    n = 60
    mc = make_task(n, task_id="mc")
    ref = _passage_task(["x"] * 12)
    rng = np.random.default_rng(3)
    base_scores = rng.normal(size=(n, 4))
    base = {"mc": _records("mc", n, base_scores.argmax(1) == 0, base_scores, "base")}
    records, arms = {}, []
    for calib, noise, kld in (("generic", 0.8, 0.05), ("clinical", 0.1, 0.01)):
        names = []
        for seed in range(2):
            name = f"gptq:calib={calib},seed={seed}"
            s = base_scores + np.random.default_rng(seed + 10).normal(0, noise, size=(n, 4))
            records[name] = {"mc": _records("mc", n, s.argmax(1) == 0, s, name),
                             "notes": _text("notes", 12, kld * (1 + 0.05 * seed), name)}
            names.append(name)
        arms.append(Arm("gptq", calib, (0, 1), tuple(names)))
    summary = summarise([mc, ref], base, records, arms, {"x": 12.0}, n_boot=500)
    assert summary.ranking["gptq"] == ("clinical", "generic")
    assert summary.primary["gptq"] == "notes/token_kld"
    kld = next(c for c in summary.contrasts if c.metric == "token_kld")
    assert kld.distinguishable and kld.better == "clinical"
    row = next(r for r in summary.arms if r.calib == "generic" and r.task == "notes")
    assert row.stat("token_kld").per_seed[0] == pytest.approx(0.05 * np.mean([1, 1.1, 1.2]), rel=1e-9)
    svg = calibrate_plot(summary, [("notes", "token_kld"), ("mc", "choice_kl")])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    seeds = [g for g in root.iter(f"{ns}g") if g.get("id", "").startswith(f"{CALIBRATE_ID}-panel-")
             and "-seeds-" in g.get("id", "")]
    assert sum(len(g.findall(f".//{ns}use")) for g in seeds) == 8  # 2 arms x 2 seeds x 2 panels
    assert svg == calibrate_plot(summary, [("notes", "token_kld"), ("mc", "choice_kl")])  # deterministic


def test_scoring_kernel_isolates_the_weights_on_cpu_unless_asked():
    from qeval.quantize.gptq_awq import scoring_kernel

    assert scoring_kernel(parse_variant("gptq"), "cpu") == "torch"  # float32 dequantize
    assert scoring_kernel(parse_variant("gptq"), "cuda") is None  # gptqmodel's fast kernel
    assert scoring_kernel(parse_variant("gptq:kernel=auto"), "cpu") is None
    assert scoring_kernel(parse_variant("awq"), "cpu") is None
    assert scoring_kernel(parse_variant("gptq=/x,kernel=torch_aten"), "cpu") == "torch_aten"


def test_summarise_handles_generate_tasks_by_answer_disagreement():
    """A generate task in a calibration sweep: Δaccuracy and the share of changed answers, and
    the ranking falls back to answer disagreement when no label-free KL exists."""
    from qeval.types import GenerationRecord, GenerationSpec

    n = 80
    task = make_task(n, task_id="cot")
    task = task.model_copy(update={"spec": task.spec.model_copy(update={
        "kind": "generate", "generation": GenerationSpec(answer_pattern="([A-D])")})})
    rng = np.random.default_rng(5)
    base_answer = rng.integers(0, 4, size=n)

    def recs(answers, variant):
        return [GenerationRecord(task="cot", sample_id=f"s{i:04d}", variant=variant, prompt_hash="h",
                                 output_hash=f"o{a}", normalised_hash=f"o{a}", answer_hash=f"a{a}",
                                 prediction=int(a), target=0, n_choices=4, correct=bool(a == 0),
                                 n_output_tokens=10, stop_reason="stop", category="all", risk=Risk.standard)
                for i, a in enumerate(answers)]

    base = {"cot": recs(base_answer, "base")}
    records, arms, changed = {}, [], {}
    for calib, p_change in (("generic", 0.4), ("clinical", 0.05)):
        names = []
        for seed in range(2):
            name = f"gptq:calib={calib},seed={seed}"
            flip = np.random.default_rng(seed + 20).random(n) < p_change
            answers = np.where(flip, (base_answer + 1) % 4, base_answer)
            changed[name] = float(np.mean(answers != base_answer))
            records[name] = {"cot": recs(answers, name)}
            names.append(name)
        arms.append(Arm("gptq", calib, (0, 1), tuple(names)))
    summary = summarise([task], base, records, arms, {}, n_boot=300)
    assert summary.primary["gptq"] == "mean over tasks/answer_disagreement"
    assert summary.ranking["gptq"] == ("clinical", "generic")
    row = next(r for r in summary.arms if r.calib == "generic")
    assert row.stat("answer_disagreement").per_seed == pytest.approx(
        (changed["gptq:calib=generic,seed=0"], changed["gptq:calib=generic,seed=1"]))
    assert {s.metric for s in row.stats} == {"delta_accuracy", "answer_disagreement"}
