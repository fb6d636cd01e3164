"""One variant on a Ray worker: the actor that `qeval compare --executor ray` starts per variant
(qeval/run/ray_executor.py). It opens the variant once (making its artefact first if the cache
lacks it) and scores chunks of its tasks' work units for the driver, which journals and stores
the records.

What leaves the actor: record objects (ids, token-id hashes, numbers), the backend's info, the
artefact's manifest, timings and placement; a relative kind's reference (token ids) only as an
object in Ray's memory store, for the candidates' actors; generated text only when the user
opted in to text logging. Nothing here prints or logs text: Ray keeps every worker's stdout and
stderr in its session directory."""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any

from qeval import efficiency as eff
from qeval.errors import QevalInputError
from qeval.kinds import kind_of
from qeval.run.executor import LocalSession
from qeval.types import Task, VariantSpec
from qeval.util.threads import ENV, cpu_threads


class WorkerFailed(Exception):
    """An exception on the worker, by its type only: a library's message may quote an item, and
    Ray keeps task errors (message and traceback) in its memory store and its logs."""


def sanitized(fn):
    """Run a worker method; any exception but qeval's own (whose messages never hold text) leaves
    as WorkerFailed naming its type, without its message or the chain behind it."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QevalInputError:
            raise
        except Exception as exc:
            name = type(exc).__name__
        raise WorkerFailed(name)

    return call


def placement() -> tuple[str, str]:
    """(node, node id) of this worker."""
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (a direct call in a test)
        node_id = ""
    return platform.node(), node_id


class VariantWorker:
    """A variant opened on a Ray worker. Every method opens it on first use, so an actor that Ray
    restarts after its process died picks up where the driver's next call asks."""

    def __init__(self, factory: Any, variant: VariantSpec, baseline_compute: str | None, log_text: bool,
                 threads: int | None = None):
        self.factory = factory
        self.variant = variant
        self.baseline_compute = baseline_compute
        self.log_text = log_text
        self.session: LocalSession | None = None
        self.work: dict[str, list] = {}
        self.started = 0  # how many times this actor's variant was opened (1 unless restarted)
        if threads:  # a CPU job: its engine runs as many threads as the job has CPUs
            os.environ[ENV] = str(threads)
            try:
                import torch

                torch.set_num_threads(threads)
            except ImportError:
                pass

    def _open(self) -> LocalSession:
        if self.session is not None:
            return self.session
        clock = time.perf_counter()
        artefact = self.factory.prepare(self.variant)
        stages = {"prepare": time.perf_counter() - clock}
        ident = self.factory.identity(self.variant)
        meter = eff.Measurement(eff.meter_for(self.variant.backend, str(ident.get("device", ""))), artefact)
        clock = time.perf_counter()
        backend = self.factory.open(self.variant, self.baseline_compute)
        meter.loaded()
        stages["load"] = time.perf_counter() - clock
        self.session = LocalSession(backend, meter, self.variant.name, [], stages)
        self.started += 1
        return self.session

    @sanitized
    def describe(self) -> dict:
        session = self._open()
        node, node_id = placement()
        return {"info": session.info, "stages": session.stages, "node": node, "node_id": node_id,
                "pid": os.getpid(), "artefacts": dict(getattr(self.factory, "artefacts", {}))}

    def _work(self, task: Task, expected: dict[str, str] | None = None) -> list:
        if task.spec.id not in self.work:
            session = self._open()
            (_, work), = session.prepare([task], {task.spec.id: expected})
            self.work[task.spec.id] = work
        return self.work[task.spec.id]

    @sanitized
    def prepare(self, task: Task, expected: dict[str, str] | None) -> list[tuple[str, str, int]]:
        """Each work unit's (sample id, token-id hash, size), after checking the hashes against
        the baseline's."""
        k = kind_of(task.spec.kind)
        return [(*k.identify(w), k.units(w)) for w in self._work(task, expected)]

    @sanitized
    def identity(self) -> dict:
        return self.factory.identity(self.variant)

    @sanitized
    def reference(self, task: Task) -> tuple[dict[str, str], Any, dict]:
        clock = time.perf_counter()
        work = self._work(task)
        hashes, data = self._open().reference(task, work, None)
        return hashes, data, self._placed(-1, len(work), clock)

    @sanitized
    def score(self, task: Task, start: int, stop: int, reference: Any, chunk_no: int
              ) -> tuple[list, list[str] | None, dict]:
        clock = time.perf_counter()
        chunk = self._work(task)[start:stop]
        records, outs = self._open().score_chunk(task, chunk, None, reference, chunk_no)
        return records, outs if self.log_text else None, self._placed(chunk_no, len(chunk), clock)

    def _placed(self, chunk_no: int, items: int, clock: float) -> dict:
        node, _ = placement()
        return {"node": node, "device": self._open().info.device, "seconds": time.perf_counter() - clock,
                "chunk": chunk_no, "items": items, "threads": cpu_threads(), "pid": os.getpid()}

    @sanitized
    def measure(self, probe, scored_here: bool):
        return self._open().measure(probe, scored_here)

    @sanitized
    def close(self) -> None:
        if self.session is not None:
            self.session.backend.close()
            self.session = None
