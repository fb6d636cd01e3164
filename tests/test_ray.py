"""`qeval compare --executor ray` on a real local Ray cluster (2 CPUs here): the same results.json
as the local executor, and a Ray worker killed mid-run costs only its chunk.

Each run is the real CLI in a child process. The Ray runs get a record store of their own (a
cache that shares the session's models and artefacts, not its records), so they score every
item themselves rather than reuse the local run's records. The GPTQ candidate uses the
parameters of tests/test_golden.py's run, whose artefact the session's cache already holds when
the whole suite runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fake_config, fake_variant, make_task
from test_golden import normalised
from test_reference_text import make_text_task

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
# Every task kind that pairs records (multiple choice) and the relative one (reference text,
# whose baseline distributions travel between actors through Ray's object store), on three
# engines (torchao, llama.cpp with its engine floor, gptqmodel).
# 12 items a task: the reference passages are ~800 tokens each and every variant scores them on
# both executors, so this is most of the file's time (30 items took about 10 min on 2 cores).
LIMIT = "12"
ARGS = ("--tasks", "clinical_core,clinical_reference", "--candidates",
        "int8wo,gguf:q8_0,gptq:samples=8,seqlen=128,calib=generic", "--limit", LIMIT, "--no-efficiency")


def _env(cache: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if cache is not None:
        env["QEVAL_CACHE"] = str(cache)
    return env


def _command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "qeval.cli", "compare", *args, "--out", str(out)]


def _run(out: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(out, *args), capture_output=True, text=True, env=_env(cache), timeout=3600)
    assert proc.returncode in (0, 1, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _own_records(tmp: Path) -> Path:
    """A cache with the session's models and artefacts but an empty record store."""
    shared = Path(os.environ["QEVAL_CACHE"])
    cache = tmp / "cache"
    cache.mkdir()
    for entry in shared.iterdir():
        if entry.name not in ("records", "audit.jsonl"):
            (cache / entry.name).symlink_to(entry)
    return cache


# ------------------------------------------------------------ the executor's logic, fake engine


@pytest.fixture
def cluster():
    """A local Ray cluster for a fake-engine test (RayExecutor then neither starts nor stops
    one); gone before the CLI tests start their own."""
    import ray

    from qeval.run.ray_executor import cluster_env

    for k, v in cluster_env().items():
        os.environ.setdefault(k, v)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir="/tmp/ray", _system_config={"automatic_object_spilling_enabled": False})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _Exploding, on the workers
    yield ray
    ray.shutdown()


def _fake_run(executor_factory, tmp_path, name, *cands, store=True):
    from qeval.gate import GatePolicy
    from qeval.engines.fake import FakeFactory
    from qeval.report.terminal import QuietUI
    from qeval.run.pipeline import run_compare
    from qeval.run.store import RecordStore

    tasks = [make_task(150), make_text_task(n=35)]
    cfg = fake_config(fake_variant("base"), *cands, tasks=("synthetic", "ref"), n_boot=500).model_copy(
        update={"efficiency": None, "batch_size": 4})
    factory = FakeFactory(tasks)
    return run_compare(cfg, tasks, factory=factory, store=RecordStore(tmp_path / name) if store else None,
                       model_fingerprint="fake", policy=GatePolicy(), ui=QuietUI(),
                       executor=executor_factory(factory))


def test_fake_engine_gives_the_same_comparisons_on_ray(cluster, tmp_path):
    from qeval.run.executor import LocalExecutor
    from qeval.run.ray_executor import RayExecutor

    cands = (fake_variant("c1", damage=0.2), fake_variant("c2", noise=0.5), fake_variant("c3", skill=0.6))
    local = _fake_run(LocalExecutor, tmp_path, "local", *cands)
    on_ray = _fake_run(RayExecutor, tmp_path, "ray", *cands)
    assert [c.model_dump() for c in on_ray.comparisons] == [c.model_dump() for c in local.comparisons]
    assert on_ray.verdict.model_dump() == local.verdict.model_dump()
    assert on_ray.timings["executor"] == "ray" and local.timings["executor"] == "local"
    # A job per chunk (150 items: 64 + 64 + 22) and per reference, each placed on a node.
    jobs = on_ray.timings["jobs"]
    assert sorted(j["chunk"] for j in jobs if j["variant"] == "c1" and j["task"] == "synthetic") == [0, 1, 2]
    assert [j["chunk"] for j in jobs if j["variant"] == "base" and j["task"] == "ref"] == [-1]
    assert {j["node"] for j in jobs} == {os.uname().nodename}
    # The candidates ran in parallel after the baseline: their jobs interleave in arrival order.
    order = [j["variant"] for j in jobs]
    assert order.index("c1") > max(i for i, v in enumerate(order) if v == "base")


def test_the_cluster_qeval_starts_never_spills_objects_to_disk():
    """The reference distributions (token ids) travel through the object store: on the cluster
    qeval starts, spilling them to disk is off, on loopback, in /tmp/ray; stopped at the end."""
    import ray

    from qeval.engines.fake import FakeFactory
    from qeval.run.ray_executor import RayExecutor

    assert not ray.is_initialized()
    executor = RayExecutor(FakeFactory([make_task(4)]))
    try:
        executor.identity(fake_variant("base"))  # the first use starts the cluster
        node = ray._private.worker._global_node
        assert node._config["automatic_object_spilling_enabled"] is False
        assert node.get_session_dir_path().startswith("/tmp/ray/session_")
        assert node.node_ip_address == "127.0.0.1"
    finally:
        executor.close()
    assert not ray.is_initialized()


class _Exploding:
    """A fake engine whose candidate fails in its second chunk (a bug on a worker)."""

    def __init__(self, factory):
        self.inner = factory

    def __getattr__(self, name):
        if name == "inner":  # while unpickling, before __init__'s state is back
            raise AttributeError(name)
        return getattr(self.inner, name)

    def open(self, variant, baseline_compute):
        backend = self.inner.open(variant, baseline_compute)
        if variant.name != "base":
            calls = {"n": 0}
            score = backend.loglikelihood

            def loglikelihood(*a, **kw):
                calls["n"] += 1
                if calls["n"] > 1:
                    raise RuntimeError("kernel fault")
                return score(*a, **kw)

            backend.loglikelihood = loglikelihood
        return backend


def test_a_failed_job_is_one_line_naming_it_and_the_rerun_resumes(cluster, tmp_path):
    from qeval.errors import JobFailed
    from qeval.run.executor import LocalExecutor
    from qeval.run.ray_executor import RayExecutor

    cand = fake_variant("c1", damage=0.2)
    with pytest.raises(JobFailed) as failed:
        _fake_run(lambda f: RayExecutor(_Exploding(f)), tmp_path, "ray", cand)
    line = str(failed.value)
    assert "\n" not in line and line.startswith("ray job c1 · synthetic · chunk 1 (items 64-127) on node ")
    assert "RuntimeError" in line and "rerun" in line and "kernel fault" not in line
    # Nor did the worker's exception message reach Ray's logs (it could quote an item).
    session = Path(cluster._private.worker._global_node.get_session_dir_path())
    logs = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any("worker-" in p.name for p in logs)
    assert [p.name for p in logs if b"kernel fault" in p.read_bytes()] == []
    # The first chunk's records are in the journal: the rerun resumes them, and the numbers are
    # the local executor's.
    resumed = _fake_run(RayExecutor, tmp_path, "ray", cand)
    assert resumed.timings["resumed_items"]["c1"] == {"synthetic": 64}
    local = _fake_run(LocalExecutor, tmp_path, "local", cand)
    assert [c.model_dump() for c in resumed.comparisons] == [c.model_dump() for c in local.comparisons]


# ------------------------------------------------------------ the real CLI, the embedded model


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    _run(out, *ARGS)
    return out


@pytest.mark.model
def test_ray_executor_gives_the_local_results_json(local_run, tmp_path):
    out = tmp_path / "ray"
    proc = _run(out, *ARGS, "--executor", "ray", cache=_own_records(tmp_path))
    assert normalised((out / "results.json").read_text(), str(ROOT)) == \
        normalised((local_run / "results.json").read_text(), str(ROOT))
    timings = json.loads((out / "timings.json").read_text())
    assert timings["executor"] == "ray"
    # Every variant scored its tasks on the cluster (nothing reused): a placement per job.
    jobs = {(j["variant"], j["task"]) for j in timings["jobs"]}
    variants = ("fp16", "int8wo", "gguf:q8_0", "gptq:samples=8,seqlen=128,calib=generic")
    assert {(v, "clinical_core") for v in variants} | {(v, "clinical_reference") for v in variants} \
        | {("gguf:f32", "clinical_reference")} == jobs
    assert all(j["node"] and j["device"] == "cpu" and j["seconds"] > 0 for j in timings["jobs"])
    # Ray's own messages stay out of the terminal.
    assert "ray" not in (proc.stderr.lower().replace("--executor ray", "")), proc.stderr[-2000:]
    assert json.loads((local_run / "timings.json").read_text())["executor"] == "local"


def _processes(title: str, cache: Path) -> list[int]:
    """This run's processes whose title starts with `title` (a Ray worker inherits the driver's
    environment, so its QEVAL_CACHE names the run)."""
    found = []
    mine = f"QEVAL_CACHE={cache}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if ((entry / "cmdline").read_bytes().replace(b"\0", b" ").startswith(title.encode())
                        and mine in (entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.model
def test_a_killed_ray_worker_costs_only_its_chunk(local_run, tmp_path):
    """The candidate's worker is killed (SIGKILL) while it scores: Ray restarts its actor and the
    chunk runs again, or the run stops naming the job (exit 2) and a rerun resumes. Either way
    the numbers are the local run's."""
    cache = _own_records(tmp_path)
    args = ("--tasks", "clinical_core", "--candidates", "int8wo", "--limit", LIMIT, "--no-efficiency",
            "--executor", "ray")
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(out, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(cache))
    killed = None
    deadline = time.time() + 1200
    try:
        # The baseline's records are stored once it has scored; a worker scoring after that is
        # the candidate's.
        while killed is None and proc.poll() is None and time.time() < deadline:
            if list((cache / "records").glob("*.info.json")):
                scoring = _processes("ray::VariantWorker.score", cache)
                if scoring:
                    os.kill(scoring[0], signal.SIGKILL)
                    killed = scoring[0]
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no candidate worker was seen scoring: " + stderr[-2000:]
    assert proc.returncode in (0, 1, 2, 3), stderr[-3000:]
    if proc.returncode == 2:  # past the retry: one line naming the job, then a rerun resumes
        assert "ray job int8wo · clinical_core" in stderr and "rerun" in stderr, stderr[-2000:]
        _run(out := tmp_path / "rerun", *args, cache=cache)
    got = json.loads((out / "results.json").read_text())
    want = json.loads((local_run / "results.json").read_text())

    def pick(results):
        """The measured comparison (its rules' α depends on how many tasks the run gates)."""
        c = next(c for c in results["comparisons"] if c["candidate"] == "int8wo" and c["task"] == "clinical_core")
        return {k: v for k, v in c.items() if k not in ("rules", "verdict")}

    def records(run):
        return [(run / "records" / v / "clinical_core.jsonl").read_text() for v in ("fp16", "int8wo")]

    assert pick(got) == pick(want) and records(out) == records(local_run)
    # The records stored by the interrupted run are what a rerun reuses: the same numbers again.
    again = tmp_path / "again"
    _run(again, *args, cache=cache)
    assert pick(json.loads((again / "results.json").read_text())) == pick(want)
    assert records(again) == records(local_run)
    assert json.loads((again / "timings.json").read_text())["jobs"] == []  # all reused
