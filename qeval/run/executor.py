"""Where a variant's engine runs. The pipeline (qeval/run/pipeline.py) keeps the record store,
the journals and the pairing in this process, whatever the executor; an executor only opens a
variant somewhere and scores chunks of its work there.

- `local` (the default, this module): every variant in this process, one after another.
- `ray` (qeval/run/ray_executor.py): each variant in a Ray actor holding the resources it needs,
  its chunks as jobs, the candidates in parallel.

A `Session` is one opened variant: the pipeline tokenises and checks every task through it, then
scores chunks of work units. What a unit is belongs to the session (the kind's own work unit
here; an index and its hashes on Ray, where the token ids stay on the worker); the pipeline only
asks a session for a unit's identity (sample id, token-id hash) and size."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from qeval import efficiency as eff
from qeval.engines.base import Backend, Progress
from qeval.kinds import kind_of
from qeval.run.store import opened
from qeval.types import BackendInfo, Efficiency, EfficiencyProbe, Task, VariantSpec
from qeval.util.threads import cpu_threads

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class JobPlacement:
    """Where one job (a variant's chunk of a task, or its reference) ran and how long it took."""

    variant: str
    task: str
    chunk: int  # -1: the whole task (a relative kind's reference)
    items: int
    node: str
    device: str
    threads: int  # CPU threads its engine ran (qeval/util/threads.py)
    seconds: float

    def as_dict(self) -> dict:
        return {"variant": self.variant, "task": self.task, "chunk": self.chunk, "items": self.items,
                "node": self.node, "device": self.device, "threads": self.threads,
                "seconds": round(self.seconds, 3)}


class Session(Protocol):
    info: BackendInfo
    stages: dict[str, float]  # "prepare", "load": seconds, measured where the variant runs

    def prepare(self, tasks: Sequence[Task], expected: dict[str, dict[str, str] | None]
                ) -> list[tuple[Task, list]]:
        """Each task's work units, tokenised; a task with expected hashes (the baseline's, per
        unit) must give the same token ids, else QevalInputError before any model time."""
        ...

    def identify(self, t: Task, unit: Any) -> tuple[str, str]: ...

    def units(self, t: Task, unit: Any) -> int: ...

    def reference(self, t: Task, work: Sequence, advance: Progress | None) -> tuple[dict[str, str], Any]:
        """A relative kind's reference (the baseline's): its hashes, and what candidates score
        against (kept where the executor keeps it)."""
        ...

    def materialised(self, reference: Any) -> Any:
        """The reference's data in this process (to store it when the user opted in)."""
        ...

    def score_chunk(self, t: Task, chunk: Sequence, advance: Progress | None, reference: Any, chunk_no: int
                    ) -> tuple[list, list[str] | None]: ...

    def measure(self, probe: EfficiencyProbe, scored_here: bool) -> Efficiency: ...


class Executor(Protocol):
    name: str
    jobs: list[JobPlacement]

    def identity(self, variant: VariantSpec) -> dict: ...

    def open(self, variant: VariantSpec, baseline_compute: str | None, ui) -> Any:
        """A context manager giving the variant's Session (its artefact made first if needed)."""
        ...

    def map(self, fn: Callable[[Any], Any], items: Sequence, ui) -> list:
        """fn over items (the candidates): one after another, or in parallel, in items' order."""
        ...

    def close(self) -> None: ...


@dataclass
class LocalSession:
    """A variant opened in this process."""

    backend: Backend
    meter: eff.Measurement
    variant: str
    jobs: list[JobPlacement]
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def info(self) -> BackendInfo:
        return self.backend.info

    def prepare(self, tasks, expected):
        prepared = []
        for t in tasks:
            work = kind_of(t.spec.kind).prepare(t, self.backend.tokenize)
            if expected.get(t.spec.id) is not None:
                kind_of(t.spec.kind).check_same(t, expected[t.spec.id], work, self.variant)
            prepared.append((t, work))
        return prepared

    def identify(self, t, unit):
        return kind_of(t.spec.kind).identify(unit)

    def units(self, t, unit):
        return kind_of(t.spec.kind).units(unit)

    def reference(self, t, work, advance):
        clock = time.perf_counter()
        out = kind_of(t.spec.kind).reference(t, work, self.backend, advance)
        self._placed(t, -1, len(work), clock)
        return out

    def materialised(self, reference):
        return reference

    def score_chunk(self, t, chunk, advance, reference, chunk_no):
        clock = time.perf_counter()
        out = kind_of(t.spec.kind).score_chunk(t, chunk, self.backend, advance, reference)
        self._placed(t, chunk_no, len(chunk), clock)
        return out

    def measure(self, probe, scored_here):
        return self.meter.finish(eff.measure_speed(self.backend, probe), scored_here=scored_here)

    def _placed(self, t: Task, chunk_no: int, items: int, clock: float) -> None:
        self.jobs.append(JobPlacement(self.variant, t.spec.id, chunk_no, items, platform.node(),
                                      self.info.device, cpu_threads(), time.perf_counter() - clock))


class LocalExecutor:
    """Every variant in this process, one after another (the default)."""

    name = "local"

    def __init__(self, factory):
        self.factory = factory
        self.jobs: list[JobPlacement] = []

    def identity(self, variant: VariantSpec) -> dict:
        return self.factory.identity(variant)

    @contextmanager
    def open(self, variant: VariantSpec, baseline_compute: str | None, ui) -> Iterator[LocalSession]:
        clock = time.perf_counter()
        artefact = self.factory.prepare(variant)
        stages = {"prepare": time.perf_counter() - clock}
        ident = self.factory.identity(variant)
        meter = eff.Measurement(eff.meter_for(variant.backend, str(ident.get("device", ""))), artefact)
        clock = time.perf_counter()
        with opened(lambda: self.factory.open(variant, baseline_compute)) as backend:
            meter.loaded()
            stages["load"] = time.perf_counter() - clock
            yield LocalSession(backend, meter, variant.name, self.jobs, stages)

    def map(self, fn, items, ui):
        return [fn(x) for x in items]

    def close(self) -> None:
        pass


def shared_bars(ui):
    """One progress display for every bar opened inside (bars from parallel variants), when the
    UI offers it."""
    return getattr(ui, "shared", nullcontext)()
