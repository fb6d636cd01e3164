"""The compare flow: tasks + variants → records (reused when stored) → comparisons → verdict."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from qeval.engines.base import Backend
from qeval.run.config import RunConfig, floor_replica
from qeval.methods import method
from qeval.gate import GatePolicy
from qeval.verdict import judge
from qeval.power import power_table
from qeval.kinds import check_spec, kind_of
from qeval.kinds.base import TaskKind
from qeval.run.executor import Executor, LocalExecutor, Session
from qeval.run.store import Journal, RecordStore, chunk_items, score_in_chunks
from qeval.errors import QevalInputError, ScoringError
from qeval.types import (
    Artefact, BackendInfo, Efficiency, EngineFloor, GenerationComparison, GenerationRecord, ItemRecord, PowerRow, Task,
    TaskComparison, TextComparison, TextRecord, VariantSpec, Verdict,
)

Comparison = TaskComparison | TextComparison | GenerationComparison


class BackendFactory(Protocol):
    def identity(self, variant: VariantSpec) -> dict:
        """What, besides the variant, changes a backend's numbers (device, versions, ...)."""
        ...

    def prepare(self, variant: VariantSpec) -> Artefact:
        """Make the variant's artefact if needed (not timed as loading); say what is on disk."""
        ...

    def open(self, variant: VariantSpec, baseline_compute: str | None) -> Backend: ...


class UI(Protocol):
    def status(self, message: str) -> None: ...

    def power(self, rows: Sequence[PowerRow]) -> None: ...

    def bar(self, description: str, total: int): ...  # context manager yielding advance(n)

    def shared(self): ...  # context manager: bars opened inside (from any thread) share one display


@dataclass
class VariantRun:
    spec: VariantSpec
    info: BackendInfo
    records: dict[str, list[ItemRecord] | list[GenerationRecord]]  # tasks of kinds paired after scoring
    text: dict[str, list[TextRecord]] = field(default_factory=dict)  # relative kinds (candidates only)
    keys: dict[str, str] = field(default_factory=dict)  # record-store key per task
    reused_tasks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Baseline only: what a relative kind's candidates are scored against (reference_text: each
    # passage's token hash and bounded next-token distributions). In memory for this run only
    # (token ids are text).
    dists: dict[str, tuple[dict[str, str], object]] = field(default_factory=dict, repr=False)
    # Kinds that generate, only when the user opted in to text logging: task → sample id → output text.
    outputs: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    efficiency: Efficiency | None = None  # measured in this run (None: not asked for)
    # task → items taken from the journal of a run that was killed mid-task (not scored again).
    resumed: dict[str, int] = field(default_factory=dict)
    # Where this variant's time went, in seconds: prepare (quantize or export the artefact, or
    # find it cached), load, tokenize (and check prompts), score, probe (speed measurement).
    stages: dict[str, float] = field(default_factory=dict)
    # Seconds spent on each task scored here (0 for reused records): a CI test case's time.
    task_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class CompareResult:
    config: RunConfig
    tasks: list[Task]
    baseline: VariantRun
    candidates: list[VariantRun]
    comparisons: list[Comparison]
    verdict: Verdict
    # Seconds per stage; "stages_s": variant → stage → seconds; "resumed_items": variant → task →
    # items taken from a journal.
    timings: dict[str, float | dict[str, dict[str, float]]]
    power: list[PowerRow] = field(default_factory=list)
    floor: VariantRun | None = None
    floors: dict[str, Comparison] = field(default_factory=dict)
    engine_floor: VariantRun | None = None  # the F32 GGUF on llama.cpp, when GGUF candidates ran


def kind(task: Task) -> TaskKind:
    return kind_of(task.spec.kind, f"task {task.spec.id}")


def relative(task: Task) -> bool:
    """Scored against the baseline's kept reference; no baseline records (reference_text)."""
    return kind(task).relative


def _bucket(t: Task, records: dict, text: dict) -> dict:
    return text if relative(t) else records


def _baseline_hashes(baseline: VariantRun, t: Task) -> dict[str, str]:
    """The baseline's token-id hash per unit: a candidate must tokenise every one the same."""
    if relative(t):
        return baseline.dists[t.spec.id][0]
    return {r.sample_id: r.prompt_hash for r in baseline.records[t.spec.id]}


def store_keys(variant: VariantSpec, tasks: Sequence[Task], *, executor: Executor,
               model_fingerprint: str, cfg: RunConfig, baseline_keys: dict[str, str] | None = None
               ) -> dict[str, str]:
    """Record-store keys; a candidate's records of a relative kind also depend on the baseline's."""
    ident = executor.identity(variant)
    return {t.spec.id: RecordStore.key(
        model_fingerprint=model_fingerprint, variant=variant, device=ident.get("device", ""),
        strict_dtype=cfg.strict_dtype, versions=ident.get("versions", {}),
        batch_size=cfg.batch_size, task=t,
        against=baseline_keys[t.spec.id] if baseline_keys is not None and relative(t) else None)
        for t in tasks}


def stored_records(store: RecordStore | None, key: str, t: Task, variant: VariantSpec, cfg: RunConfig
                   ) -> tuple[list, BackendInfo] | None:
    """Stored records this run may reuse for `t`, or None."""
    if store is None or not cfg.reuse_records:
        return None
    if kind(t).generates and cfg.log_text:
        return None  # stored records hold no text: regenerate so the opted-in outputs exist
    return store.load(key, variant.name, kind(t).record_type)


@contextmanager
def exclusive(store: RecordStore | None, key: str, ui: UI, what: str) -> Iterator[None]:
    """One process at a time scores a key; another waits, then finds the records stored."""
    if store is None:
        yield
        return
    with store.locked(key, on_wait=lambda: ui.status(f"waiting for another qeval process scoring {what}")):
        yield


def run_variant(variant: VariantSpec, tasks: Sequence[Task], *, executor: Executor,
                store: RecordStore | None, model_fingerprint: str, cfg: RunConfig, ui: UI,
                baseline: VariantRun | None = None, dists_for: frozenset[str] = frozenset(),
                probe: bool = True) -> VariantRun:
    """Score `variant` on `tasks`, reusing stored records and resuming journals of a run that was
    killed. The baseline (baseline=None) also keeps the reference of the relative-kind tasks in
    `dists_for` (reference_text: distributions), for candidates to score against.
    `probe=False`: no speed measurement."""
    start = time.perf_counter()
    keys = store_keys(variant, tasks, executor=executor, model_fingerprint=model_fingerprint, cfg=cfg,
                      baseline_keys=baseline.keys if baseline else None)
    records: dict[str, list[ItemRecord] | list[GenerationRecord]] = {}
    text: dict[str, list[TextRecord]] = {}
    outputs: dict[str, dict[str, str]] = {}
    info: BackendInfo | None = None
    reused = []
    resumed: dict[str, int] = {}
    dists = {}
    for t in tasks:
        hit = stored_records(store, keys[t.spec.id], t, variant, cfg)
        if hit is None:
            continue
        if relative(t) and baseline is None:
            # The baseline keeps no text records, only a marker of what scored it; its
            # distributions only when the user opted in to keeping them.
            kept = (store.load_distributions(keys[t.spec.id])
                    if t.spec.id in dists_for and cfg.keep_distributions else None)
            if kept is not None:
                dists[t.spec.id] = kept
            if t.spec.id not in dists_for or kept is not None:
                info = hit[1]
                reused.append(t.spec.id)
            continue
        _bucket(t, records, text)[t.spec.id], info = hit
        reused.append(t.spec.id)
    todo = [t for t in tasks if t.spec.id not in records and t.spec.id not in text
            and not (baseline is None and relative(t) and t.spec.id in reused)]
    measure = probe and cfg.efficiency is not None and not variant.params.get("numeric_path")
    efficiency = None
    stages: dict[str, float] = {}
    task_seconds: dict[str, float] = {}
    if todo or measure:
        ui.status(f"Loading {variant.name}" + ("" if todo else " (records reused; speed probe only)"))
        base_compute = baseline.info.compute_dtype if baseline else None
        with executor.open(variant, base_compute, ui) as session:
            stages.update(session.stages)
            clock = time.perf_counter()
            info = session.info
            # Tokenise and check every task first: a prompt that differs from the baseline's
            # stops the run before any model time is spent.
            prepared = session.prepare(
                todo, {t.spec.id: _baseline_hashes(baseline, t) if baseline is not None else None for t in todo})
            stages["tokenize"] = time.perf_counter() - clock
            clock = time.perf_counter()
            scored_here = False
            marks: list[tuple[str, float]] = []
            for t, work in prepared:
                marks.append((t.spec.id, time.perf_counter()))
                key = keys[t.spec.id]
                if relative(t) and baseline is None:
                    # Distributions hold token ids, so they are never written, not even to a
                    # journal: every run computes them again, a resumed one too.
                    dists[t.spec.id] = baseline_reference(t, work, session, ui, variant.name)
                    scored_here = True
                    if store is not None:
                        if cfg.keep_distributions:
                            hashes, kept = dists[t.spec.id]
                            store.save_distributions(key, hashes, session.materialised(kept))
                        store.save(key, [], info)
                    continue
                with exclusive(store, key, ui, f"{variant.name} · {t.spec.id}"):
                    # Again under the lock: another process may have scored it meanwhile.
                    hit = stored_records(store, key, t, variant, cfg)
                    if hit is not None:
                        _bucket(t, records, text)[t.spec.id] = hit[0]
                        reused.append(t.spec.id)
                        continue
                    journal = store.journal(key, kind(t).record_type) if store is not None else None
                    # --no-reuse recomputes everything; opted-in output texts are not journaled.
                    resume = cfg.reuse_records and not (kind(t).generates and cfg.log_text)
                    chunked = ChunkedScoring(journal, variant.name if resume else None, cfg.batch_size)
                    reference = baseline.dists[t.spec.id][1] if relative(t) else None
                    recs, n_resumed, texts = score_task(t, work, reference, session, ui, variant.name, chunked)
                    _bucket(t, records, text)[t.spec.id] = recs
                    if kind(t).generates and cfg.log_text:
                        outputs[t.spec.id] = texts
                    scored_here = True
                    if n_resumed:
                        resumed[t.spec.id] = n_resumed
                    if store is not None:
                        store.save(key, recs, info)
                        journal.discard()
            stages["score"] = time.perf_counter() - clock
            marks.append(("", time.perf_counter()))
            task_seconds = {tid: end - begin for (tid, begin), (_, end) in zip(marks, marks[1:])}
            if measure:
                clock = time.perf_counter()
                ui.status(f"Measuring {variant.name}: prefill and decode speed")
                efficiency = session.measure(cfg.efficiency, scored_here)
                stages["probe"] = time.perf_counter() - clock
    assert info is not None
    return VariantRun(variant, info, records, text, keys, reused, time.perf_counter() - start, dists,
                      outputs, efficiency, resumed, stages, task_seconds)


@dataclass(frozen=True)
class ChunkedScoring:
    """How a task is scored: in fixed chunks, journaled when there is a store, resumed from the
    journal under `resume_as` (the variant's name) unless None."""

    journal: Journal | None
    resume_as: str | None
    batch_size: int

    def run(self, t: Task, work: Sequence, score_chunk, *, chunk_size: int, identify, units, advance):
        return score_in_chunks(work, score_chunk, chunk_size=chunk_size, task_id=t.spec.id,
                               identify=identify, journal=self.journal, resume_as=self.resume_as,
                               units=units, advance=advance)


def baseline_reference(t: Task, work: Sequence, session: Session, ui: UI, variant_name: str):
    """What a relative kind's candidates are scored against, computed by the baseline."""
    total = sum(session.units(t, w) for w in work)
    with ui.bar(f"{variant_name} · {t.spec.id}{kind(t).bar_suffix}", total) as advance:
        return session.reference(t, work, advance)


def score_task(t: Task, work: Sequence, reference, session: Session, ui: UI, variant_name: str,
               chunked: ChunkedScoring) -> tuple[list, int, dict[str, str]]:
    """Records, how many came from a journal, and the output text of each unit generated here
    (kept by the caller only when the user opted in to text logging)."""
    k = kind(t)
    texts: dict[str, str] = {}
    chunk_size = k.fixed_chunk or chunk_items(chunked.batch_size)
    position: dict[int, int] = {}
    for n, w in enumerate(work):
        position.setdefault(id(w), n)

    def score_chunk(chunk: Sequence) -> list:
        recs, outs = session.score_chunk(t, chunk, advance, reference, position[id(chunk[0])] // chunk_size)
        if outs is not None:
            texts.update((session.identify(t, w)[0], o) for w, o in zip(chunk, outs))
        return recs

    total = sum(session.units(t, w) for w in work)
    with ui.bar(f"{variant_name} · {t.spec.id}{k.bar_suffix}", total) as advance:
        recs, n_resumed = chunked.run(t, work, score_chunk, chunk_size=chunk_size,
                                      identify=lambda w: session.identify(t, w),
                                      units=lambda w: session.units(t, w), advance=advance)
    return recs, n_resumed, texts


def text_tasks_to_score(variants: Sequence[VariantSpec], tasks: Sequence[Task], base_keys: dict[str, str],
                        *, store: RecordStore | None, cfg: RunConfig, **common) -> frozenset[str]:
    """Relative-kind tasks some variant has no stored records for: the baseline must keep its
    reference (distributions) for them."""
    wanted = set()
    for v in variants:
        keys = store_keys(v, tasks, baseline_keys=base_keys, cfg=cfg, **common)
        for t in tasks:
            if relative(t) and (store is None or not cfg.reuse_records
                                or store.load(keys[t.spec.id], v.name, kind(t).record_type) is None):
                wanted.add(t.spec.id)
    return frozenset(wanted)


def compare_all(base: VariantRun, other: VariantRun, tasks: Sequence[Task],
                cfg: RunConfig) -> list[Comparison]:
    return [kind(t).compare(t, None if relative(t) else base.records[t.spec.id],
                            _bucket(t, other.records, other.text)[t.spec.id], n_boot=cfg.n_boot, seed=cfg.seed)
            for t in tasks]


def floored(candidates: Sequence[VariantSpec]) -> list[VariantSpec]:
    """The candidates whose method names an engine floor (GGUF: the unquantized model on llama.cpp)."""
    return [c for c in candidates if method(c.method).floor_variant(c) is not None]


def engine_floor_variant(candidates: Sequence[VariantSpec], tasks: Sequence[Task]) -> VariantSpec | None:
    """The unquantized (F32) GGUF of the baseline on llama.cpp, with the GGUF candidates' engine
    settings, when some GGUF candidate is scored on a relative kind (reference text): its KLD against the baseline
    is the engine's floor for those candidates. A `gguf:f32` candidate is that floor itself."""
    ggufs = floored(candidates)
    if not ggufs or not any(relative(t) for t in tasks):
        return None
    from qeval.run.config import parse_variant

    floor = parse_variant(method(ggufs[0].method).floor_variant(ggufs[0]))
    return next((c for c in ggufs if c.key() == floor.key()), floor)


def run_engine_floor(spec: VariantSpec, tasks: Sequence[Task], cands: Sequence[VariantRun],
                     base: VariantRun, common: dict) -> VariantRun | None:
    """The engine-floor run (reused when a candidate is that variant); None, with a status line,
    when the baseline cannot be exported (a brought GGUF of an architecture the converter does
    not know): the GGUF candidates are then reported without a floor."""
    same = next((r for r in cands if r.spec.key() == spec.key()), None)
    if same is not None:
        return same
    common["ui"].status(f"Engine floor: {spec.name} (the baseline's weights on the candidates' engine) "
                        "against the baseline (reference text)")
    try:
        return run_variant(spec, [t for t in tasks if relative(t)], baseline=base, probe=False, **common)
    except ScoringError:
        raise  # the floor was exported and scored: a scoring failure stops the run as before
    except QevalInputError as exc:  # raised while exporting, before any scoring
        common["ui"].status(f"no engine floor for the GGUF candidates: {exc}")
        return None


def with_engine_floor(comparisons: Sequence[Comparison], floor: Sequence[Comparison], floor_name: str,
                      gguf_names: set[str]) -> list[Comparison]:
    """Each GGUF candidate's reference-text comparison, with the engine floor on the same task."""
    by_task = {c.task: c for c in floor if isinstance(c, TextComparison)}
    out = []
    for c in comparisons:
        f = by_task.get(c.task)
        if isinstance(c, TextComparison) and c.candidate in gguf_names and f is not None:
            c = c.model_copy(update={"engine_floor": EngineFloor(variant=floor_name, kld_mean=f.kld_mean,
                                                                 same_top=f.same_top)})
        out.append(c)
    return out


def run_compare(cfg: RunConfig, tasks: Sequence[Task], *, factory: BackendFactory,
                store: RecordStore | None, model_fingerprint: str, policy: GatePolicy,
                ui: UI, history: dict | None = None, executor: Executor | None = None) -> CompareResult:
    """Baseline first, then the noise-floor replica, the candidates and the engine floor: one
    after another on the local executor, in parallel on Ray (qeval/run/executor.py). The record
    store in this process is where every executor's records meet."""
    executor = executor if executor is not None else LocalExecutor(factory)
    t0 = time.perf_counter()
    for t in tasks:  # before any model time
        check_spec(t.spec, f"task {t.spec.id}").check_task(t)
    power = power_table(tasks, [c.name for c in cfg.candidates], policy, history)
    ui.power(power)
    common = dict(executor=executor, store=store, model_fingerprint=model_fingerprint, cfg=cfg, ui=ui)
    engine_spec = engine_floor_variant(cfg.candidates, tasks)
    others = (([floor_replica(cfg.baseline, cfg.noise_floor)] if cfg.noise_floor else []) + list(cfg.candidates)
              + ([engine_spec] if engine_spec is not None else []))
    base_keys = store_keys(cfg.baseline, tasks, executor=executor, model_fingerprint=model_fingerprint, cfg=cfg)
    dists_for = text_tasks_to_score(others, tasks, base_keys, store=store, cfg=cfg, executor=executor,
                                    model_fingerprint=model_fingerprint)
    if cfg.keep_distributions and store is not None:  # keep them now for the candidates of later runs
        dists_for |= {t.spec.id for t in tasks if relative(t) and not store.has_distributions(base_keys[t.spec.id])}
    base = run_variant(cfg.baseline, tasks, dists_for=dists_for, **common)
    # Every other variant depends on the baseline alone: the executor may run them in parallel.
    jobs: list[tuple[str, VariantSpec]] = (
        ([("floor", others[0])] if cfg.noise_floor else []) + [("candidate", c) for c in cfg.candidates]
        + ([("engine", engine_spec)] if engine_spec is not None
           and all(c.key() != engine_spec.key() for c in cfg.candidates) else []))

    def one(job: tuple[str, VariantSpec]) -> VariantRun | None:
        role, spec = job
        if role == "engine":
            return run_engine_floor(spec, tasks, [], base, common)
        return run_variant(spec, tasks, baseline=base, **common)

    done = executor.map(one, jobs, ui)
    floor = done[0] if cfg.noise_floor else None
    cands = [r for (role, _), r in zip(jobs, done) if role == "candidate"]
    engine = (next((r for (role, _), r in zip(jobs, done) if role == "engine"), None)
              or (run_engine_floor(engine_spec, tasks, cands, base, common) if engine_spec is not None else None))
    base.dists.clear()  # token ids: gone as soon as every candidate has been scored
    t1 = time.perf_counter()
    ui.status("Comparing")
    comparisons = [c for run in cands for c in compare_all(base, run, tasks, cfg)]
    if engine is not None:
        comparisons = with_engine_floor(
            comparisons, compare_all(base, engine, [t for t in tasks if relative(t)], cfg), engine.spec.name,
            {c.name for c in floored(cfg.candidates)})
    floors = {c.task: c for c in compare_all(base, floor, tasks, cfg)} if floor else {}
    verdict = judge(comparisons, policy, floors=floors, n_boot=cfg.n_boot, seed=cfg.seed)
    t2 = time.perf_counter()
    runs = [base, *([floor] if floor else []), *cands, *([engine] if engine and engine not in cands else [])]
    timings = {"scoring_s": t1 - t0, "statistics_s": t2 - t1,
               **{f"variant_{v.spec.name}_s": v.seconds for v in runs},
               "stages_s": {v.spec.name: {k: round(x, 3) for k, x in v.stages.items()} for v in runs},
               "task_s": {v.spec.name: {k: round(x, 3) for k, x in v.task_seconds.items()} for v in runs},
               "resumed_items": {v.spec.name: v.resumed for v in runs},
               "executor": executor.name,
               "jobs": [j.as_dict() for j in executor.jobs]}
    return CompareResult(cfg, list(tasks), base, cands, comparisons, verdict, timings, power,
                         floor, floors, engine)
