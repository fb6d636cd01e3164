"""Issue 22, item 3: the long-context reference task and KL by position in the passage.

The task's documents (their generator reproduces them byte for byte; their lengths with the
embedded model's tokenizer), the position-bucket statistics against a computation written here
independently, the task-file rules, and a compare on a tiny model whose report shows the buckets."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from qeval import pairing, stats
from qeval.errors import QevalInputError
from qeval.settings import resource_dir
from qeval.tasks.registry import TaskRegistry, load_task
from qeval.types import TextRecord

TASK_DIR = resource_dir("tasks") / "clinical_long_context"
EDGES = (1024, 2048, 4096, 8192)


def _generator():
    spec = importlib.util.spec_from_file_location("qeval_long_context_generate", TASK_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    saved = dict(sys.modules), list(sys.path)
    try:
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:  # the generator puts its folder on sys.path and itself in sys.modules
        sys.modules.clear()
        sys.modules.update(saved[0])
        sys.path[:] = saved[1]


def test_the_committed_records_are_what_the_generator_writes():
    committed = (TASK_DIR / "passages" / "admission_record.yaml").read_text()
    assert _generator().render() == committed


def test_the_task_has_twenty_long_records_in_buckets_up_to_8k():
    task = TaskRegistry([resource_dir("tasks")]).load("clinical_long_context")
    assert task.spec.kind == "reference_text" and task.spec.position_buckets == EDGES
    assert task.spec.window_tokens == 8192  # one window per record: every token sees all before it
    assert len(task.passages) >= 20 and len({p.id for p in task.passages}) == len(task.passages)
    sections = ("ADMISSION HISTORY AND PHYSICAL", "Medications before admission", "Laboratory results on admission",
                "Imaging and other studies", "Progress note, hospital day 2", "DISCHARGE SUMMARY")
    for p in task.passages:
        assert all(s in p.text for s in sections), p.id


def test_records_are_4k_to_8k_tokens_with_the_embedded_tokenizer():
    from transformers import AutoTokenizer

    from qeval.model_source import DEFAULT_MODEL, resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL).path)
    data = yaml.safe_load((TASK_DIR / "passages" / "admission_record.yaml").read_text())
    lengths = [len(tok(p["text"])["input_ids"]) for p in data["passages"]]
    assert 4000 <= min(lengths) and max(lengths) <= 8000, lengths
    assert sum(n > 4096 for n in lengths) >= 20  # every bucket up to 4-8k has tokens from 20 records


def _record(sid: str, kl, cluster=None) -> TextRecord:
    kl = tuple(float(x) for x in kl)
    return TextRecord(task="t", sample_id=sid, variant="c", prompt_hash="h" + sid, n_tokens=len(kl), kl=kl,
                      same_top=len(kl), nll_baseline=1.0, nll_candidate=1.0, category="x", cluster=cluster)


def test_position_bucket_sums_follow_the_positions_of_predicted_tokens():
    # kl[i] is the KL at the token in position i + 1 (i + 1 tokens before it).
    kl = np.arange(1, 11, dtype=float)  # positions 1..10
    sums, counts = stats.position_bucket_sums(kl, (4, 8))
    # [0, 4): positions 1, 2, 3; [4, 8): 4..7; [8, ∞): 8, 9, 10
    assert counts.tolist() == [3, 4, 3]
    assert sums.tolist() == [1 + 2 + 3, 4 + 5 + 6 + 7, 8 + 9 + 10]


def test_position_kld_means_and_intervals_resample_passages():
    rng = np.random.default_rng(3)
    # KL that grows with position: 0.01 per token before position 16, 0.1 after.
    records = [_record(f"p{i:02d}", np.where(np.arange(1, n + 1) < 16, 0.01, 0.1) * rng.uniform(0.5, 1.5, n))
               for i, n in enumerate(rng.integers(10, 40, size=30))]
    buckets = pairing.position_kld(records, (8, 16, 32), n_boot=400, seed=1)
    assert [(b.start, b.end) for b in buckets] == [(0, 8), (8, 16), (16, 32), (32, None)]
    for b in buckets:  # independent computation: Σ KL over Σ tokens of the positions in the bucket
        num = den = 0.0
        values, reached = [], 0
        for r in records:
            pos = np.arange(1, r.n_tokens + 1)
            keep = (pos >= b.start) & ((pos < b.end) if b.end is not None else True)
            num += float(np.asarray(r.kl)[keep].sum())
            den += int(keep.sum())
            values += list(np.asarray(r.kl)[keep])
            reached += bool(keep.any())
        assert b.n_tokens == den and b.n == reached
        assert b.kld_mean.estimate == pytest.approx(num / den, rel=1e-12)
        assert b.kld_mean.low <= b.kld_mean.estimate <= b.kld_mean.high
        assert b.kld_p99 == pytest.approx(float(np.quantile(values, 0.99)))
    early, late = buckets[0].kld_mean, buckets[2].kld_mean
    assert late.low > early.high  # the damage that grows with position is seen, with intervals apart
    # Clusters: two passages of one cluster resample together, so the interval cannot narrow.
    clustered = [r.model_copy(update={"cluster": f"c{i // 2}"}) for i, r in enumerate(records)]
    wide = pairing.position_kld(clustered, (8, 16, 32), cluster_by="cluster", n_boot=400, seed=1)
    assert wide[0].kld_mean.estimate == pytest.approx(buckets[0].kld_mean.estimate)
    assert wide[0].n == buckets[0].n


def test_compare_text_leaves_buckets_out_unless_asked():
    recs = [_record(f"p{i}", [0.1] * 20) for i in range(5)]
    plain = pairing.compare_text(recs, top_k=16, n_boot=100)
    assert plain.by_position is None and "by_position" not in plain.model_dump()
    with_buckets = pairing.compare_text(recs, top_k=16, n_boot=100, position_buckets=(10,))
    assert [b.n_tokens for b in with_buckets.by_position] == [5 * 9, 5 * 11]  # positions 1-9, 10-20


@pytest.mark.parametrize("extra,match", [
    ("window_tokens: 2048\nposition_buckets: [1024, 4096]\n", r"position_buckets ends at 4096 tokens but window_tokens is 2048"),
    ("position_buckets: [512, 256]\n", r"increasing order"),
    ("position_buckets: []\n", r"at least one edge"),
])
def test_bad_position_buckets_are_one_clear_error(tmp_path, extra, match):
    (tmp_path / "passages").mkdir()
    (tmp_path / "passages" / "p.yaml").write_text(
        "style: x\npassages:\n  - {id: a, title: t, specialty: s, text: some text}\n")
    (tmp_path / "t.yaml").write_text(
        "id: t\nkind: reference_text\nsource: {format: qeval_passages, path: passages}\n" + extra)
    with pytest.raises(QevalInputError, match=match):
        load_task(tmp_path / "t.yaml")


def test_a_compare_reports_kl_by_position(tmp_path):
    from tiny_models import CORPUS, tiny_checkpoint

    from qeval.cli import app

    model = tmp_path / "llama"
    tiny_checkpoint(model)
    project = tmp_path / "project"
    tasks = project / "tasks"
    (tasks / "passages").mkdir(parents=True)
    text = " ".join(CORPUS * 3)
    entries = "".join(f"  - {{id: d{i}, title: t, specialty: s, text: {json.dumps(text[i:])}}}\n" for i in range(6))
    (tasks / "passages" / "p.yaml").write_text("style: x\npassages:\n" + entries)
    (tasks / "long.yaml").write_text("id: long_tiny\nkind: reference_text\nsource: {format: qeval_passages, "
                                     "path: passages}\nbaseline_top_k: 16\nwindow_tokens: 256\n"
                                     "position_buckets: [16, 64, 128]\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["compare", "--model", str(model), "--base", "fp32", "--include", str(project),
                                   "--tasks", "long_tiny", "--candidates", "fp8wo", "--n-boot", "200",
                                   "--out", str(out), "--no-efficiency"])
    assert res.exit_code in (0, 1, 3), res.output
    (c,) = json.loads((out / "results.json").read_text())["comparisons"]
    buckets = c["by_position"]
    assert [(b["start"], b["end"]) for b in buckets][:3] == [(0, 16), (16, 64), (64, 128)]
    assert sum(b["n_tokens"] for b in buckets) == c["n_tokens"]
    assert all(b["n"] == 6 for b in buckets[:2])
    report = (out / "report.md").read_text()
    assert "| long_tiny | fp8wo | 0–16 | 6 |" in report and "vs first" in report
    assert "KL divergence by position" in (out / "report.html").read_text()


def test_llama_cpp_variants_get_the_context_a_long_task_needs():
    from qeval.run.config import RunConfig, fit_contexts, parse_variant

    long = TaskRegistry([resource_dir("tasks")]).load("clinical_long_context")
    short = TaskRegistry([resource_dir("tasks")]).load("clinical_reference")
    cfg = RunConfig(baseline=parse_variant("fp32"), tasks=("clinical_long_context",), candidates=tuple(
        parse_variant(v) for v in ("gguf:q4_k_m+kv=q8_0", "gguf:q8_0,n_ctx=4096", "int8wo")))
    fitted = fit_contexts(cfg, [short, long])
    auto, given, hf = fitted.candidates
    assert auto.params["n_ctx"] == 8192 and auto.kv_cache == "q8_0" and auto.name == "gguf:q4_k_m+kv=q8_0"
    assert given == cfg.candidates[1]  # the user's n_ctx stays (and preflight refuses it as too small)
    assert hf == cfg.candidates[2] and fitted.baseline == cfg.baseline
    assert fit_contexts(cfg, [short]) == cfg  # within the default 2048: nothing changes, keys included
    assert auto.key() != cfg.candidates[0].key()  # what ran is in the record-store key
