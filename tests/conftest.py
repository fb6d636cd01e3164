from __future__ import annotations

import os
from pathlib import Path

import pytest

from qeval.config import RunConfig
from qeval.types import Method, Risk, Sample, Task, TaskSpec, SourceSpec, VariantSpec


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never touch the user's cache; the materialised model is shared across one session.
    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "qeval-cache"))


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
