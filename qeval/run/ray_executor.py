"""`qeval compare --executor ray`: each variant in a Ray actor that holds the resources it needs,
its tasks scored as jobs of one chunk each, the candidates in parallel once the baseline is done.

This process (the driver) keeps what it keeps locally: the record store, the journals and the
locks, the pairing and the verdict. A job returns a chunk's records; the driver appends them to
the task's journal as they arrive (a variant's chunks arrive in order: one actor per variant
runs them one after another), so a run whose job, worker or node died resumes on rerun exactly
like a local run, from the whole chunks the journal holds. Ray retries a chunk once on a
restarted actor before the run gives up on it.

Token ids and text on the cluster. Each task goes to the actors once, through Ray's object
store; a reference-text baseline's next-token distributions (token ids) go from the baseline's
actor to the candidates' through the object store too, never to a file: on a cluster qeval
starts, object spilling is off (`automatic_object_spilling_enabled: false`), so these objects
stay in memory and a store that runs full fails the job instead of writing them to disk. On a
cluster you bring (`--ray-address`), spilling is that cluster's setting: turn it off, or point it
at storage that may hold PHI (docs/usage.md). Workers print no text; Ray's worker logs are not
shown in this terminal (`log_to_driver=False`)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from qeval.errors import JobFailed, QevalInputError
from qeval.methods import method
from qeval.run.executor import JobPlacement, shared_bars
from qeval.types import BackendInfo, EfficiencyProbe, Task, VariantSpec

# What Ray's workers read from the driver's environment (a cluster qeval starts inherits it all).
FORWARDED_ENV = ("QEVAL_", "HF_", "TRANSFORMERS_", "VLLM_")


class Unit(NamedTuple):
    """A work unit as the driver sees it on Ray: its position and hashes; the token ids stay on
    the worker."""

    index: int
    sample_id: str
    prompt_hash: str
    units: int


def cluster_env() -> dict[str, str]:
    """Ray's own settings for a cluster qeval starts: loopback only (Ray reads this when it is
    imported), no usage report."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RaySession:
    """The driver's handle on one variant's actor."""

    actor: Any
    variant: VariantSpec
    info: BackendInfo
    stages: dict[str, float]
    node: str
    jobs: list[JobPlacement]
    tasks: dict[str, Any] = field(default_factory=dict)  # task id → ObjectRef of the Task
    references: dict[int, Any] = field(default_factory=dict)  # id(reference) → ObjectRef

    def _task(self, t: Task):
        import ray

        if t.spec.id not in self.tasks:
            self.tasks[t.spec.id] = ray.put(t)
        return self.tasks[t.spec.id]

    def prepare(self, tasks, expected):
        prepared = []
        for t in tasks:
            found = self._get(self.actor.prepare.remote(self._task(t), expected.get(t.spec.id)), t, None)
            prepared.append((t, [Unit(n, *row) for n, row in enumerate(found)]))
        return prepared

    def identify(self, t, unit: Unit):
        return unit.sample_id, unit.prompt_hash

    def units(self, t, unit: Unit):
        return unit.units

    def reference(self, t, work, advance):
        hashes, data, placed = self.actor.reference.options(num_returns=3).remote(self._task(t))
        found = self._get(hashes, t, -1)
        self._placed(t, self._get(placed, t, -1))
        if advance:
            advance(sum(u.units for u in work))
        return found, data  # the distributions stay in the object store

    def materialised(self, reference):
        import ray

        return ray.get(reference) if isinstance(reference, ray.ObjectRef) else reference

    def score_chunk(self, t, chunk: Sequence[Unit], advance, reference, chunk_no):
        ref = self._reference_ref(reference)
        records, outs, placed = self._get(
            self.actor.score.remote(self._task(t), chunk[0].index, chunk[-1].index + 1, ref, chunk_no), t, chunk_no,
            chunk)
        self._placed(t, placed)
        if advance:
            advance(sum(u.units for u in chunk))
        return records, outs

    def measure(self, probe: EfficiencyProbe, scored_here: bool):
        return self._get(self.actor.measure.remote(probe, scored_here), None, None)

    def _reference_ref(self, reference):
        """A reference the driver holds (distributions kept from an earlier run) goes to the
        object store once; one that came from the baseline's actor is there already."""
        import ray

        if reference is None or isinstance(reference, ray.ObjectRef):
            return reference
        if id(reference) not in self.references:
            self.references[id(reference)] = ray.put(reference)
        return self.references[id(reference)]

    def _placed(self, t: Task, placed: dict) -> None:
        self.jobs.append(JobPlacement(self.variant.name, t.spec.id, placed["chunk"], placed["items"],
                                      placed["node"], placed["device"], placed["threads"], placed["seconds"]))

    def _get(self, ref, t: Task | None, chunk_no: int | None, chunk: Sequence[Unit] = ()):
        return fetch(ref, self.variant.name, t.spec.id if t is not None else None, chunk_no, chunk, self.node)


def fetch(ref, variant: str, task: str | None, chunk_no: int | None, chunk: Sequence[Unit], node: str):
    """ray.get, with a failure in one line: bad input found on the worker (a prompt that differs
    from the baseline's, a variant that cannot be made) as itself; anything else as JobFailed,
    naming the variant, task, chunk and node."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        if isinstance(cause, QevalInputError):
            raise cause from None
        reason = (str(cause) if type(cause).__name__ == "WorkerFailed"  # (its message is a type name)
                  else type(cause).__name__ if cause is not None else type(exc).__name__)
        raise JobFailed(_job(variant, task, chunk_no, chunk, node) + f" failed: {reason}; "
                        "rerun the same command to resume from the chunks already stored") from None
    except RayError as exc:  # the actor's process or node died, past the retries
        raise JobFailed(_job(variant, task, chunk_no, chunk, node) + f" failed: {type(exc).__name__} "
                        "(its Ray worker or node died); rerun the same command to resume from the chunks "
                        "already stored") from None


def _job(variant: str, task: str | None, chunk_no: int | None, chunk: Sequence[Unit], node: str) -> str:
    where = f"ray job {variant}"
    if task is not None:
        where += f" · {task}"
    if chunk_no is not None and chunk_no >= 0:
        where += f" · chunk {chunk_no} (items {chunk[0].index}-{chunk[-1].index})" if chunk else f" · chunk {chunk_no}"
    return where + f" on node {node or '?'}"


class RayExecutor:
    """Variants on a Ray cluster: a local one started for this run (the default), or the cluster
    at `address` ("auto": the one `ray start` runs on this machine; "ray://host:10001": a remote
    head through Ray Client)."""

    name = "ray"

    def __init__(self, factory, *, address: str | None = None, cpus_per_job: int | None = None,
                 log_text: bool = False):
        self.factory = factory
        self.log_text = log_text  # generated text comes back from the workers only when opted in
        self.address = address
        self.cpus_per_job = cpus_per_job or 1
        self.jobs: list[JobPlacement] = []
        self._identity: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._started = False
        self._worker_factory = getattr(factory, "detached", lambda: factory)()

    def _ray(self):
        if self.address is None and "ray" not in sys.modules:
            # Read once, when Ray is imported: a cluster qeval starts listens on loopback only.
            for k, v in cluster_env().items():
                os.environ.setdefault(k, v)
        import ray

        with self._lock:
            if not ray.is_initialized():
                self._init(ray)
        return ray

    def _init(self, ray) -> None:
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        if self.address is None:
            # Ray's session directory (logs, sockets): /tmp/ray unless RAY_TMPDIR says where;
            # never under a long TMPDIR, where its socket paths would pass the OS limit.
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env={"env_vars": env},
                     _temp_dir=os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray"),
                     _system_config={"automatic_object_spilling_enabled": False})
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": env})
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise QevalInputError(f"--ray-address {self.address}: no Ray cluster answered "
                                      f"({type(exc).__name__}); start one (`ray start --head`) or give "
                                      "its address (auto, or ray://HOST:10001)") from None
        self._started = True

    def resources(self, variant: VariantSpec) -> dict:
        """What one job of `variant` asks Ray for: its GPUs (tensor x pipeline parallel size for
        vLLM) when the run is on GPUs and the cluster has them, else CPUs."""
        ray = self._ray()
        device = str(getattr(self.factory, "settings", None) and self.factory.settings.device or "auto")
        gpus = ray.cluster_resources().get("GPU", 0) if device != "cpu" else 0
        if gpus:
            return {"num_gpus": method(variant.method).gpus(variant), "num_cpus": 1}
        return {"num_cpus": self.cpus_per_job}

    def identity(self, variant: VariantSpec) -> dict:
        """The variant's identity as a worker of its kind sees it (device, library versions): what
        the record-store keys are made of."""
        key = variant.key()
        if key not in self._identity:
            ray = self._ray()
            probe = ray.remote(_identity).options(**self.resources(variant), max_retries=1)
            self._identity[key] = fetch(probe.remote(self._worker_factory, variant), variant.name, None, None,
                                        (), "")
        return self._identity[key]

    @contextmanager
    def open(self, variant: VariantSpec, baseline_compute: str | None, ui) -> Iterator[RaySession]:
        ray = self._ray()
        from qeval.run.ray_worker import VariantWorker

        resources = self.resources(variant)
        actor_class = ray.remote(VariantWorker).options(**resources, max_restarts=1, max_task_retries=1)
        actor = actor_class.remote(self._worker_factory, variant, baseline_compute, self.log_text,
                                   None if resources.get("num_gpus") else resources["num_cpus"])
        try:
            desc = fetch(actor.describe.remote(), variant.name, None, None, (), "")
            with self._lock:
                for name, manifest in desc["artefacts"].items():
                    getattr(self.factory, "artefacts", {})[name] = manifest
            yield RaySession(actor, variant, desc["info"], desc["stages"], desc["node"], self.jobs)
        finally:
            try:
                ray.get(actor.close.remote(), timeout=60)
            except Exception:  # a dead actor has nothing left to close
                pass
            ray.kill(actor)

    def map(self, fn, items, ui):
        """The variants after the baseline, in parallel: one driver thread each, waiting on its
        actor; Ray runs as many actors at once as the cluster's resources allow."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        with shared_bars(ui), ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="qeval-ray") as pool:
            return list(pool.map(fn, items))

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def _identity(factory, variant: VariantSpec) -> dict:
    from qeval.run.ray_worker import sanitized

    return sanitized(factory.identity)(variant)

