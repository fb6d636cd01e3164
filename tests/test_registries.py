"""Engines and quantization methods are registries: a method or an engine defined only here is
reachable by name (parsing, the composition root, a compare); the build-once cache helper
builds an entry once under concurrency and leaves nothing half-made."""

from __future__ import annotations

import threading
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import fake_variant, make_task
from qeval.run.factory import EngineFactory
from qeval.engines.fake import FakeFactory
from qeval.engines.registry import ENGINES
from qeval.errors import QevalInputError
from qeval.gate import GatePolicy
from qeval.report.terminal import QuietUI
from qeval.run.config import RunConfig, check_roles, parse_variant
from qeval.settings import resource_dir
from qeval.run.pipeline import run_compare
from qeval.types import VariantSpec
from qeval.util.locking import build_once
from qeval.variants.base import QuantMethod
from qeval.methods import METHODS, method

POLICY = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
MODEL = types.SimpleNamespace(spec="stub", path=Path("/nonexistent"), fingerprint="stub")


class FP16Copy(QuantMethod):
    """fp16-copy: a method that lives only in this test, scored by the fake engine."""

    name = "fp16-copy"
    engine = "fake"
    params = frozenset({"skill", "noise"})
    checked: list[str] = []

    def check(self, variant: VariantSpec) -> VariantSpec:
        unknown = set(variant.params) - self.params
        if unknown:
            raise QevalInputError(f"variant {variant.name!r}: fp16-copy takes skill, noise")
        self.checked.append(variant.name)
        return variant


def test_a_method_defined_in_a_test_is_parsed_and_compared(monkeypatch):
    monkeypatch.setitem(METHODS, "fp16-copy", FP16Copy())
    v = parse_variant("fp16-copy:skill=0.8,noise=1.5")
    assert (v.method, v.backend, v.params) == ("fp16-copy", "fake", {"skill": 0.8, "noise": 1.5})
    assert FP16Copy.checked == ["fp16-copy:skill=0.8,noise=1.5"]
    with pytest.raises(QevalInputError, match="fp16-copy takes"):
        parse_variant("fp16-copy:bits=3")
    task = make_task(300)
    cfg = RunConfig(baseline=fake_variant("base", skill=0.8), candidates=(v,), tasks=("synthetic",), n_boot=500)
    check_roles(cfg)
    factory = EngineFactory(MODEL, cache=Path("/nonexistent"), tasks=[task])
    assert factory.preflight([cfg.baseline, v], [task]) == {}
    res = run_compare(cfg, [task], factory=factory, store=None, model_fingerprint="fake",
                      policy=POLICY, ui=QuietUI())
    (c,) = res.comparisons
    assert c.candidate == v.name and c.flips_correct_to_wrong > 0  # noise=1.5 damages it
    # not a baseline: the method says so
    with pytest.raises(QevalInputError, match="quantized variant"):
        check_roles(RunConfig(baseline=v, candidates=(fake_variant("x"),), tasks=("synthetic",)))


def test_an_unregistered_method_or_engine_is_refused():
    fp32 = VariantSpec(name="fp32", method="fp32")
    with pytest.raises(ValidationError, match="unknown method 'fp16-copy'"):
        RunConfig(baseline=fp32, candidates=(VariantSpec(name="x", method="fp16-copy"),), tasks=("t",))
    with pytest.raises(ValidationError, match="unknown backend 'echo'"):
        RunConfig(baseline=VariantSpec(name="x", method="fp32", backend="echo"), candidates=(), tasks=("t",))
    with pytest.raises(KeyError):
        method("nope")


def test_an_engine_defined_in_a_test_is_reachable_by_name(monkeypatch):
    made = []

    def make_factory(settings):
        made.append(settings)
        return FakeFactory(settings.tasks)

    monkeypatch.setitem(ENGINES, "echo", types.SimpleNamespace(make_factory=make_factory))
    task = make_task(10)
    v = VariantSpec(name="fp32-on-echo", method="fp32", backend="echo")
    factory = EngineFactory(MODEL, cache=Path("/nonexistent"), batch_size=3, tasks=[task])
    backend = factory.open(v, None)
    assert backend.info.variant == "fp32-on-echo" and made[0].batch_size == 3
    assert factory.identity(v) == {"device": "none", "versions": {}}
    assert factory.prepare(v).description.startswith("fake backend")
    assert len(made) == 1  # one engine factory per engine name


def test_builtin_methods_are_the_registry():
    from qeval.types import Method

    assert {m.value for m in Method} == set(METHODS)
    for name in METHODS:
        assert method(name).name == name
    assert {n for n in METHODS if method(n).baseline} == {"fp32", "fp16", "bf16", "fake", "vllm"}
    # vLLM's method may be the baseline in its full-precision formats only.
    vllm = method("vllm")
    assert [f for f in ("fp32", "fp16", "bf16", "fp8", "gptq") if vllm.is_baseline(
        vllm.check(VariantSpec(name=f"vllm:{f}", method="vllm", backend="vllm", params={"format": f})))] == [
        "fp32", "fp16", "bf16"]


# ---------------------------------------------------------------- build once


def test_build_once_builds_once_under_concurrency(tmp_path):
    target = tmp_path / "cache" / "entry"
    calls = []
    gate = threading.Event()

    def build(staging: Path) -> None:
        calls.append(staging)
        gate.wait(5)
        staging.mkdir()
        (staging / "weights").write_text("w")

    waited = []
    threads = [threading.Thread(target=build_once, args=(target, build), kwargs={"on_wait": lambda: waited.append(1)})
               for _ in range(3)]
    for t in threads:
        t.start()
    threading.Timer(0.5, gate.set).start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (target / "weights").read_text() == "w"
    assert not calls[0].exists() and not calls[0].parent.exists()  # staging folder gone
    assert build_once(target, build) == target and len(calls) == 1


def test_build_once_leaves_nothing_when_the_build_fails(tmp_path):
    target = tmp_path / "model.gguf"

    def broken(staging: Path) -> None:
        staging.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_once(target, broken)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".model.gguf.lock"]
    build_once(target, lambda s: s.write_text("whole"))
    assert target.read_text() == "whole"
