from __future__ import annotations

import os

import pytest

# A Ray cluster a test starts listens on loopback only, and reports no usage (Ray reads these
# when it is first imported in a process: qeval/run/ray_executor.py sets them the same way).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from qeval.run.config import RunConfig
from qeval.types import Method, Risk, Sample, Task, TaskSpec, SourceSpec, VariantSpec


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Tests never touch the user's cache; the materialised model is shared across one session.
    # Session scope: module-scoped fixtures that run the CLI must see it too.
    old = os.environ.get("QEVAL_CACHE")
    os.environ["QEVAL_CACHE"] = str(tmp_path_factory.getbasetemp() / "qeval-cache")
    yield
    if old is None:
        os.environ.pop("QEVAL_CACHE", None)
    else:
        os.environ["QEVAL_CACHE"] = old


def make_task(n: int, n_choices: int = 4, task_id: str = "synthetic", high_every: int = 3) -> Task:
    samples = tuple(
        Sample(
            id=f"s{i:04d}", question=f"Synthetic question number {i}?",
            choices=tuple(f"option {j} of item {i}" for j in range(n_choices)),
            target=(i * 7) % n_choices, category=f"area{i % 3}",
            risk=Risk.high if i % high_every == 0 else Risk.standard,
        )
        for i in range(n)
    )
    spec = TaskSpec(id=task_id, source=SourceSpec(path="."))
    return Task(spec=spec, samples=samples, content_hash=f"{task_id}-{n}-{n_choices}", path="<memory>")


def fake_variant(name: str, **params) -> VariantSpec:
    return VariantSpec(name=name, method=Method.fake, backend="fake", params=params)


def fake_config(base: VariantSpec, *cands: VariantSpec, tasks=("synthetic",), n_boot=2000) -> RunConfig:
    return RunConfig(baseline=base, candidates=cands, tasks=tasks, n_boot=n_boot)
