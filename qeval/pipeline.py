"""The compare flow: tasks + variants → records (reused when stored) → comparisons → verdict."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import compare as cmp
from .backends.base import Backend
from .config import RunConfig, floor_replica
from .gate import GatePolicy, judge
from .power import power_table
from .runner import RecordStore, build_requests, check_same_prompts, opened, score_items
from .types import BackendInfo, ItemRecord, PowerRow, Task, TaskComparison, VariantSpec, Verdict


class BackendFactory(Protocol):
    def identity(self) -> dict:
        """What, besides the variant, changes a backend's numbers (device, versions, ...)."""
        ...

    def open(self, variant: VariantSpec, baseline_compute: str | None) -> Backend: ...


class UI(Protocol):
    def status(self, message: str) -> None: ...

    def power(self, rows: Sequence[PowerRow]) -> None: ...

    def bar(self, description: str, total: int): ...  # context manager yielding advance(n)


@dataclass
class VariantRun:
    spec: VariantSpec
    info: BackendInfo
    records: dict[str, list[ItemRecord]]
    reused_tasks: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CompareResult:
    config: RunConfig
    tasks: list[Task]
    baseline: VariantRun
    candidates: list[VariantRun]
    comparisons: list[TaskComparison]
    verdict: Verdict
    timings: dict[str, float]
    power: list[PowerRow] = field(default_factory=list)
    floor: VariantRun | None = None
    floors: dict[str, TaskComparison] = field(default_factory=dict)


def run_variant(variant: VariantSpec, tasks: Sequence[Task], *, factory: BackendFactory,
                store: RecordStore | None, model_fingerprint: str, cfg: RunConfig, ui: UI,
                baseline: VariantRun | None = None) -> VariantRun:
    start = time.perf_counter()
    ident = factory.identity()
    keys = {t.spec.id: RecordStore.key(
        model_fingerprint=model_fingerprint, variant=variant, device=ident.get("device", ""),
        strict_dtype=cfg.strict_dtype, versions=ident.get("versions", {}),
        batch_size=cfg.batch_size, task=t) for t in tasks}
    records: dict[str, list[ItemRecord]] = {}
    info: BackendInfo | None = None
    reused = []
    if store is not None and cfg.reuse_records:
        for t in tasks:
            hit = store.load(keys[t.spec.id], variant.name)
            if hit is not None:
                records[t.spec.id], info = hit
                reused.append(t.spec.id)
    todo = [t for t in tasks if t.spec.id not in records]
    if todo:
        ui.status(f"Loading {variant.name}")
        base_compute = baseline.info.compute_dtype if baseline else None
        with opened(lambda: factory.open(variant, base_compute)) as backend:
            info = backend.info
            for t in todo:
                items = build_requests(t, backend.tokenize)
                if baseline is not None:
                    check_same_prompts(t, baseline.records[t.spec.id], items, variant.name)
                total = sum(len(it.requests) for it in items)
                with ui.bar(f"{variant.name} · {t.spec.id}", total) as advance:
                    recs = score_items(t, items, backend, advance)
                records[t.spec.id] = recs
                if store is not None:
                    store.save(keys[t.spec.id], recs, info)
    assert info is not None
    return VariantRun(variant, info, records, reused, time.perf_counter() - start)


def compare_all(base: VariantRun, other: VariantRun, tasks: Sequence[Task],
                cfg: RunConfig) -> list[TaskComparison]:
    out = []
    for t in tasks:
        chance = [t.spec.chance_level] * len(t.samples) if t.spec.chance_level is not None else None
        out.append(cmp.compare_task(
            base.records[t.spec.id], other.records[t.spec.id], chance=chance,
            clusters=cmp.task_clusters(t), cluster_by=t.spec.cluster_by,
            n_boot=cfg.n_boot, seed=cfg.seed))
    return out


def run_compare(cfg: RunConfig, tasks: Sequence[Task], *, factory: BackendFactory,
                store: RecordStore | None, model_fingerprint: str, policy: GatePolicy,
                ui: UI, history: dict | None = None) -> CompareResult:
    t0 = time.perf_counter()
    power = power_table(tasks, [c.name for c in cfg.candidates], policy, history)
    ui.power(power)
    common = dict(factory=factory, store=store, model_fingerprint=model_fingerprint, cfg=cfg, ui=ui)
    base = run_variant(cfg.baseline, tasks, **common)
    floor = None
    if cfg.noise_floor:
        floor = run_variant(floor_replica(cfg.baseline, cfg.noise_floor), tasks, baseline=base, **common)
    cands = [run_variant(c, tasks, baseline=base, **common) for c in cfg.candidates]
    t1 = time.perf_counter()
    ui.status("Comparing")
    comparisons = [c for run in cands for c in compare_all(base, run, tasks, cfg)]
    floors = {c.task: c for c in compare_all(base, floor, tasks, cfg)} if floor else {}
    verdict = judge(comparisons, policy, floors=floors, n_boot=cfg.n_boot, seed=cfg.seed)
    t2 = time.perf_counter()
    runs = [base, *([floor] if floor else []), *cands]
    timings = {"scoring_s": t1 - t0, "statistics_s": t2 - t1,
               **{f"variant_{v.spec.name}_s": v.seconds for v in runs}}
    return CompareResult(cfg, list(tasks), base, cands, comparisons, verdict, timings, power,
                         floor, floors)
