"""Efficiency measured per variant: memory meters, the speed probe on real engines (tiny models built
here), the table's ratios and the pipeline's bookkeeping (fake backend)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from conftest import fake_variant, make_task
from qeval import efficiency as eff
from qeval.engines.fake import FakeFactory
from qeval.run.config import RunConfig, parse_variant
from qeval.report.terminal import QuietUI
from qeval.gate import GatePolicy
from qeval.run.pipeline import VariantRun, run_compare
from qeval.vram import ModelShape
from qeval.report.tables import efficiency_markdown
from qeval.run.store import RecordStore
from qeval.types import (
    Artefact, BackendInfo, Decision, Efficiency, EfficiencyProbe, Interval, SpeedPoint, TaskVerdict,
)

MiB = 2**20


def _kib(field: str) -> int:
    value = eff._status_kib(field)
    assert value is not None
    return value


def test_peak_rss_is_reset_for_each_variant():
    meter = eff.ProcessRss()
    before = meter.start()
    block = np.ones(256 * MiB // 8)  # written, so resident
    first = meter.peak()
    assert first - before >= 240 * MiB
    del block
    meter.start()
    second = meter.peak()
    assert second < first - 200 * MiB  # the earlier variant's peak is not carried over


def test_pages_of_mapped_weight_files_are_dropped_before_measuring(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(64 * MiB))
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) >= 0  # touch every page
        loaded = _kib("RssFile")
        eff.ProcessRss().start()
        dropped = _kib("RssFile")
        mapped.close()
    assert loaded - dropped >= 48 * MiB


def test_probe_prompts_have_the_asked_length_and_differ_by_row():
    prompts = eff.probe_prompts(lambda text: list(text.encode()), 300, 4)
    assert [len(p) for p in prompts] == [300] * 4
    assert len({tuple(p) for p in prompts}) == 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny-eff") / "ckpt"
    tiny_checkpoint(path, "llama")
    return path


PROBE = EfficiencyProbe(prompt_tokens=32, new_tokens=4, batch=3, repeats=1)


def test_speed_probe_on_transformers_measures_both_batches(tiny_dir):
    from qeval.engines.hf import HFBackend
    from qeval.model_source import resolve_model

    backend = HFBackend(resolve_model(str(tiny_dir)), parse_variant("fp32"), device="cpu")
    points = eff.measure_speed(backend, PROBE)
    assert [p.batch for p in points] == [1, 3]
    assert all(p.prefill_tok_s > 0 and p.decode_tok_s > 0 for p in points)
    assert backend.info.params == sum(p.numel() for p in backend.model.parameters())
    backend.close()


def test_speed_probe_on_llama_cpp_is_batch_one_and_leaves_scoring_intact(tiny_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    from qeval.engines.base import LoglikelihoodRequest
    from qeval.engines.llamacpp import LlamaCppBackend
    from qeval.quantize.gguf import export_gguf
    from qeval.model_source import resolve_model

    gguf = tmp_path / "tiny.gguf"
    export_gguf(tiny_dir, gguf, dtype="f32")
    backend = LlamaCppBackend(resolve_model(str(tiny_dir)), parse_variant(f"gguf={gguf}"), cache=tmp_path)
    ids = backend.tokenize("The patient was given 500 mg of metformin twice daily.")
    request = [LoglikelihoodRequest(tuple(ids[:6]), tuple(ids[6:9]), "s", 0)]
    before = backend.loglikelihood(request)
    points = eff.measure_speed(backend, PROBE)
    assert points[0].batch == 1 and points[0].prefill_tok_s > 0 and points[0].decode_tok_s > 0
    assert points[1] == SpeedPoint(batch=3, prefill_tok_s=None, decode_tok_s=None)
    assert backend.loglikelihood(request) == before  # every-position logits are back on
    backend.close()


def _info(name: str, weight_bytes: int, backend: str = "hf", params: int | None = None) -> BackendInfo:
    return BackendInfo(variant=name, backend=backend, device="cpu", requested_dtype="x", compute_dtype="float32",
                       kernel="k", weight_bytes=weight_bytes, versions={}, params=params)


def _eff(load_s: float, peak: int, speed: list[tuple[int, float | None, float | None]], size: int) -> Efficiency:
    return Efficiency(artefact=Artefact(bytes=size, description="d"), load_s=load_s, memory_kind="m",
                      memory_before_bytes=100, load_peak_bytes=100 + 2 * peak, peak_memory_bytes=100 + peak,
                      speed=tuple(SpeedPoint(batch=b, prefill_tok_s=p, decode_tok_s=d) for b, p, d in speed),
                      scored_here=True)


class _Comparison:
    def __init__(self, task, candidate, low):
        self.task, self.candidate = task, candidate
        self.delta = Interval(estimate=low + 0.02, low=low, high=low + 0.04, method="m")


def test_table_ratios_bits_quality_and_planner_prediction():
    base_v, q8_v, gguf_v = parse_variant("fp32"), parse_variant("int8wo"), parse_variant("gguf:q4_k_m")
    runs = [
        ("baseline", base_v, VariantRun(base_v, _info("fp32", 4000, params=1000), {},
                                        efficiency=_eff(2.0, 5000, [(1, 100.0, 10.0), (8, 400.0, 40.0)], 4000))),
        ("candidate", q8_v, VariantRun(q8_v, _info("int8wo", 1000), {},
                                       efficiency=_eff(1.0, 2500, [(1, 50.0, 20.0), (8, 800.0, 20.0)], 4000))),
        ("candidate", gguf_v, VariantRun(gguf_v, _info("gguf:q4_k_m", 600, "llamacpp"), {},
                                         efficiency=_eff(4.0, 1000, [(1, 200.0, 30.0), (8, None, None)], 600))),
    ]
    shape = ModelShape(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=100, intermediate=128)
    comparisons = [_Comparison("a", "int8wo", -0.01), _Comparison("b", "int8wo", -0.05),
                   _Comparison("a", "gguf:q4_k_m", -0.02)]
    table = eff.efficiency_table(
        runs, probe=EfficiencyProbe(), shape=shape, comparisons=comparisons, verdicts=[],
        per_candidate={"int8wo": Decision.GO, "gguf:q4_k_m": Decision.NO_GO})
    rows = {r["variant"]: r for r in table["variants"]}
    base, q8, gg = rows["fp32"], rows["int8wo"], rows["gguf:q4_k_m"]
    assert base["bits_per_weight"] == 32 and q8["bits_per_weight"] == 8 and gg["bits_per_weight"] == 4.8
    assert q8["vs_baseline"] == {"weight_bytes": 0.25, "artefact_bytes": 1.0, "peak_memory": 0.5,
                                 "load_s": 0.5, "prefill_b1": 0.5, "decode_b1": 2.0,
                                 "prefill_bN": 2.0, "decode_bN": 0.5}
    assert gg["vs_baseline"]["prefill_bN"] is None and gg["vs_baseline"]["decode_b1"] == 3.0
    assert base["peak_memory_bytes"] == 5000 and base["load_peak_bytes"] == 10000
    # The worst task is the one with the lowest lower bound.
    assert q8["quality"]["verdict"] == "GO" and q8["quality"]["worst_task"] == "b"
    assert q8["quality"]["worst_delta"] == pytest.approx({"estimate": -0.03, "low": -0.05, "high": -0.01})
    assert base["quality"] is None
    # The planner's bytes for the format as held: all weights at 32 bits for fp32.
    assert base["predicted_weight_bytes"] == shape.total_params() * 4
    assert base["plan_format"] == "fp32" and q8["plan_format"] == "int8" and gg["plan_format"] == "gguf:q4_k_m"
    md = "\n".join(efficiency_markdown(table))
    assert "| int8wo | 8.00 |" in md and "20 (2.00×)" in md and "GO, worst Δ -3.0 pp" in md
    assert "| gguf:q4_k_m |" in md and "| — | — |" in md


@pytest.mark.parametrize("text, compute, expected", [
    ("fp16", "float32", "fp32"), ("fp16", "float16", "fp16"), ("bf16", "bfloat16", "bf16"),
    ("nf4", "", "nf4:double_quant=false"), ("gptq", "", "gptq:bits=4,group=64"),
    ("awq:group=128", "", "awq:bits=4,group=128"), ("gguf:q8_0", "", "gguf:q8_0"),
    ("gguf=brought.gguf", "", None),
])
def test_planner_format_of_each_variant(text, compute, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "brought.gguf").write_bytes(b"GGUF")  # a file the user brings: format unknown
    assert eff.plan_format(parse_variant(text), compute) == expected


def _run(task, store, efficiency):
    cfg = RunConfig(baseline=fake_variant("base"), candidates=(fake_variant("c", damage=0.1),),
                    tasks=("synthetic",), n_boot=200, efficiency=efficiency)
    factory = _Counting([task])
    return factory, run_compare(cfg, [task], factory=factory, store=store, model_fingerprint="fake",
                                policy=GatePolicy(), ui=QuietUI())


class _Counting(FakeFactory):
    def __init__(self, tasks):
        super().__init__(tasks)
        self.opened: list[str] = []

    def open(self, variant, baseline_compute):
        self.opened.append(variant.name)
        return super().open(variant, baseline_compute)


def test_reused_variants_are_opened_for_the_probe_only_when_asked(tmp_path):
    task = make_task(60)
    store = RecordStore(tmp_path)
    factory, first = _run(task, store, EfficiencyProbe())
    assert factory.opened == ["base", "c"]
    assert first.baseline.efficiency.scored_here and first.candidates[0].efficiency.scored_here
    assert first.baseline.efficiency.artefact.description.startswith("fake backend")
    factory, again = _run(task, store, EfficiencyProbe())
    assert factory.opened == ["base", "c"]  # records reused, variants opened for the probe
    assert not again.baseline.efficiency.scored_here and again.baseline.reused_tasks == ["synthetic"]
    factory, quiet = _run(task, store, None)
    assert factory.opened == [] and quiet.baseline.efficiency is None
    assert [c.model_dump() for c in quiet.comparisons] == [c.model_dump() for c in first.comparisons]


def test_quality_without_accuracy_has_no_worst_delta():
    verdicts = [TaskVerdict(task="t", candidate="c", decision=Decision.GO, rules=())]
    assert eff.quality("c", [], verdicts, {"c": Decision.GO}) == {
        "verdict": "GO", "worst_task": None, "worst_delta": None}
