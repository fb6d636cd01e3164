"""Crash safety and resume: records are journaled chunk by chunk, a run killed with SIGKILL resumes
without scoring finished chunks again and ends with the same results, and two processes sharing
one record store neither corrupt it nor score the same key twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import fake_config, fake_variant, make_task
from qeval.engines.fake import FakeFactory
from qeval.run.config import RunConfig
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.util.fileio import atomic_write_text
from qeval.gate import GatePolicy
from qeval.run.pipeline import run_compare, run_variant
from qeval.kinds.choice import build_requests, score_items
from qeval.run.executor import LocalExecutor
from qeval.run.store import CHUNK_ITEMS, Journal, RecordStore, chunk_items, resumable_count, score_in_chunks
from qeval.types import ItemRecord, TextRecord
from test_generate import gen_task
from test_reference_text import make_text_task

POLICY = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
TESTS = Path(__file__).parent


def _records(n: int, task_id: str = "synthetic") -> list[ItemRecord]:
    task = make_task(n, task_id=task_id)
    backend = FakeFactory([task]).open(fake_variant("base"), None)
    return score_items(task, build_requests(task, backend.tokenize), backend)


def _expected(records) -> list[tuple[str, str]]:
    return [(r.sample_id, r.prompt_hash) for r in records]


# ---------------------------------------------------------------- the journal


def test_journal_round_trip_holds_numbers_and_hashes_only(tmp_path):
    recs = _records(10)
    journal = Journal(tmp_path / "k.partial.jsonl", ItemRecord)
    journal.restart([])
    journal.append(recs[:4])
    journal.append(recs[4:])
    assert journal.read("base") == recs
    assert [r.variant for r in journal.read("renamed")] == ["renamed"] * 10
    for line in journal.path.read_text().splitlines():
        assert set(json.loads(line)) == set(ItemRecord.model_fields)  # no field for text
    assert "Synthetic question" not in journal.path.read_text()
    journal.discard()
    assert not journal.path.exists() and journal.read("base") == []


def test_a_torn_last_line_is_dropped_and_only_whole_chunks_count(tmp_path):
    recs = _records(10)
    journal = Journal(tmp_path / "k.partial.jsonl", ItemRecord)
    journal.append(recs[:7])
    with open(journal.path, "a") as fh:  # what a SIGKILL in the middle of a write leaves
        fh.write(recs[7].model_dump_json()[:25])
    found = journal.read("base")
    assert found == recs[:7]
    assert resumable_count(found, _expected(recs), "synthetic", chunk_size=3) == 6
    assert resumable_count(found, _expected(recs[:7]), "synthetic", chunk_size=3) == 7  # all: complete


def test_records_of_another_task_or_item_set_are_not_resumed():
    recs = _records(8)
    assert resumable_count(recs, _expected(recs), "synthetic", 4) == 8
    assert resumable_count(recs, _expected(recs), "another", 4) == 0
    other = _records(8, task_id="other")
    assert resumable_count(other, _expected(recs), "synthetic", 4) == 0
    shuffled = _expected(recs)
    shuffled[5] = ("s9999", shuffled[5][1])  # a different item at position 5
    assert resumable_count(recs, shuffled, "synthetic", 4) == 4
    rehashed = _expected(recs)
    rehashed[1] = (rehashed[1][0], "0" * 64)  # same id, other token ids
    assert resumable_count(recs, rehashed, "synthetic", 4) == 0


def test_chunked_scoring_equals_scoring_in_one_go_and_resumes_whole_chunks(tmp_path):
    task = make_task(150)
    backend = FakeFactory([task]).open(fake_variant("base"), None)
    items = build_requests(task, backend.tokenize)
    whole = score_items(task, items, backend)
    calls: list[int] = []

    def score_chunk(chunk):
        calls.append(len(chunk))
        return score_items(task, chunk, backend)

    ident = dict(task_id="synthetic", identify=lambda it: (it.sample.id, it.prompt_hash))
    chunked, resumed = score_in_chunks(items, score_chunk, chunk_size=64, **ident)
    assert chunked == whole and resumed == 0 and calls == [64, 64, 22]

    # A journal holding one chunk and a half: the whole chunk is reused, the half scored again.
    journal = Journal(tmp_path / "k.partial.jsonl", ItemRecord)
    journal.append(whole[:96])
    calls.clear()
    ticks: list[int] = []
    again, resumed = score_in_chunks(items, score_chunk, chunk_size=64, journal=journal, resume_as="base",
                                     units=lambda it: len(it.requests), advance=ticks.append, **ident)
    assert again == whole and resumed == 64 and calls == [64, 22]
    assert ticks == [64 * 4]  # the bar jumps over the resumed items' requests at once
    assert journal.read("base") == whole  # rewritten: the stale half chunk is gone

    # Without resume_as (--no-reuse) the journal starts over.
    calls.clear()
    fresh, resumed = score_in_chunks(items, score_chunk, chunk_size=64, journal=journal, **ident)
    assert fresh == whole and resumed == 0 and calls == [64, 64, 22]


def test_chunks_keep_large_batches_full():
    assert chunk_items(1) == chunk_items(16) == CHUNK_ITEMS
    assert chunk_items(128) == 512


# ---------------------------------------------------------------- a run stopped in the middle


class _Stop(Exception):
    """Stands for a kill: raised from inside the backend in the middle of a task."""


class _StoppingFactory(FakeFactory):
    """Fake backends that raise after `calls` scoring calls of `variant` (one call per chunk of
    items, one per window of reference text), and count the items each variant scores."""

    def __init__(self, tasks, *, variant: str | None = None, calls: int = 0):
        super().__init__(tasks)
        self.stop_variant, self.calls = variant, calls
        self.scored: dict[str, int] = {}

    def open(self, variant, baseline_compute):
        backend = super().open(variant, baseline_compute)
        for name in ("loglikelihood", "generate", "token_logprobs"):
            setattr(backend, name, self._wrap(variant.name, getattr(backend, name), name))
        return backend

    def _wrap(self, variant_name, inner, name):
        def wrapped(arg, *rest):
            if variant_name == self.stop_variant:
                if self.calls <= 0:
                    raise _Stop(variant_name)
                self.calls -= 1
            # Items scored: requests name theirs; each passage here is one window of text.
            n = 1 if name == "token_logprobs" else len({r.sample_id for r in arg})
            self.scored[variant_name] = self.scored.get(variant_name, 0) + n
            return inner(arg, *rest)
        return wrapped


def _compare(task, store, factory):
    cfg = fake_config(fake_variant("base"), fake_variant("cand", damage=0.1, noise=0.3), tasks=(task.spec.id,))
    return run_compare(cfg, [task], factory=factory, store=store, model_fingerprint="fake", policy=POLICY,
                       ui=QuietUI())


def _results(res) -> str:
    return json.dumps({"comparisons": [c.model_dump(mode="json") for c in res.comparisons],
                       "verdict": res.verdict.model_dump(mode="json")}, sort_keys=True)


@pytest.mark.parametrize("kind", ["multiple_choice", "generate", "reference_text"])
def test_a_run_stopped_mid_task_resumes_and_ends_with_the_same_results(tmp_path, kind):
    task = {"multiple_choice": lambda: make_task(200), "generate": lambda: gen_task(150),
            "reference_text": lambda: make_text_task(20)}[kind]()
    store = RecordStore(tmp_path / "records")
    # Stop the candidate after its first chunk (first 8 passages of one window each for text).
    with pytest.raises(_Stop):
        _compare(task, store, _StoppingFactory([task], variant="cand", calls=8 if kind == "reference_text" else 1))
    assert len(list(store.root.glob("*.partial.jsonl"))) == 1  # the candidate's; the baseline finished

    rerun = _StoppingFactory([task])
    res = _compare(task, store, rerun)
    chunk = 8 if kind == "reference_text" else 64
    assert res.timings["resumed_items"] == {"base": {}, "cand": {task.spec.id: chunk}}
    assert res.baseline.reused_tasks == ([] if kind == "reference_text" else [task.spec.id])
    # Nothing finished is scored again; the baseline's distributions are in memory only, so they
    # are computed again whenever a candidate still needs them.
    n = len(task.passages or task.samples)
    assert rerun.scored == ({"base": n, "cand": n - chunk} if kind == "reference_text" else {"cand": n - chunk})
    assert not list(store.root.glob("*.partial.jsonl"))  # removed once the final records are saved

    fresh = _compare(task, RecordStore(tmp_path / "fresh"), _StoppingFactory([task]))
    assert _results(res) == _results(fresh)
    recs = (res.candidates[0].text if kind == "reference_text" else res.candidates[0].records)[task.spec.id]
    fresh_recs = (fresh.candidates[0].text if kind == "reference_text" else fresh.candidates[0].records)[task.spec.id]
    assert recs == fresh_recs


def test_no_reuse_starts_the_journal_over(tmp_path):
    task = make_task(200)
    store = RecordStore(tmp_path / "records")
    with pytest.raises(_Stop):
        _compare(task, store, _StoppingFactory([task], variant="base", calls=2))
    cfg = fake_config(fake_variant("base"), fake_variant("cand")).model_copy(update={"reuse_records": False})
    rerun = _StoppingFactory([task])
    res = run_compare(cfg, [task], factory=rerun, store=store, model_fingerprint="fake", policy=POLICY,
                      ui=QuietUI())
    assert res.timings["resumed_items"] == {"base": {}, "cand": {}} and rerun.scored == {"base": 200, "cand": 200}


def test_tiny_transformers_model_resumed_is_bit_identical_to_uninterrupted(tmp_path):
    """Batch composition moves a real model's numbers: fixed chunks make them the same either way.
    bf16 on the CPU, because there padding moves them (here 6 of 280 log-probs differ between the
    task scored in one go and in chunks); fp32 on the CPU happens not to move at all."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from qeval.engines.hf import HFFactory
    from qeval.model_source import resolve_model
    from qeval.types import Artefact, Method, PromptSpec, VariantSpec
    from tiny_models import tiny_checkpoint

    tiny_checkpoint(tmp_path / "model")
    hf = HFFactory(resolve_model(str(tmp_path / "model")), device="cpu", batch_size=4, strict_dtype=True)
    # Short prompts of very different lengths, so that batches are padded differently.
    base_task = make_task(140, n_choices=2)
    task = base_task.model_copy(update={
        "spec": base_task.spec.model_copy(update={"prompt": PromptSpec(template="{question}\nAnswer:")}),
        "samples": tuple(s.model_copy(update={"question": "Blood pressure review. " * (i % 7) + f"Item {i}?"})
                         for i, s in enumerate(base_task.samples))})

    class Factory:
        def __init__(self, stop_after: int | None = None):
            self.stop_after = stop_after

        def identity(self, variant):
            return hf.identity(variant)

        def prepare(self, variant):
            return Artefact(bytes=None, description="tiny random model")

        def open(self, variant, baseline_compute):
            backend = hf.open(variant, baseline_compute)
            if self.stop_after is not None:
                inner, left = backend.loglikelihood, [self.stop_after]

                def loglikelihood(requests, advance=None):
                    if left[0] == 0:
                        raise _Stop()
                    left[0] -= 1
                    return inner(requests, advance)
                backend.loglikelihood = loglikelihood
            return backend

    cfg = RunConfig(baseline=VariantSpec(name="bf16", method=Method.bf16), candidates=(), tasks=("synthetic",),
                    batch_size=4, strict_dtype=True, efficiency=None)
    common = dict(model_fingerprint="tiny", cfg=cfg, ui=QuietUI())
    store = RecordStore(tmp_path / "records")
    with pytest.raises(_Stop):
        run_variant(cfg.baseline, [task], executor=LocalExecutor(Factory(stop_after=1)), store=store, **common)
    resumed = run_variant(cfg.baseline, [task], executor=LocalExecutor(Factory()), store=store, **common)
    assert resumed.resumed == {"synthetic": 64}
    straight = run_variant(cfg.baseline, [task], executor=LocalExecutor(Factory()), store=RecordStore(tmp_path / "fresh"),
                           **common)
    assert resumed.records["synthetic"] == straight.records["synthetic"]  # every float, exactly


# ---------------------------------------------------------------- real processes

_SCRIPT = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import fake_config, fake_variant, make_task
from qeval.engines.fake import FakeFactory
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.gate import GatePolicy
from qeval.run.pipeline import run_compare
from qeval.run.store import RecordStore

store_dir, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
task = make_task({n})
scored = []
statuses = []

class SlowFactory(FakeFactory):
    # Each chunk takes `delay` seconds, as a real model would take a while.
    def open(self, variant, baseline_compute):
        backend = super().open(variant, baseline_compute)
        inner = backend.loglikelihood
        def loglikelihood(requests, advance=None):
            time.sleep(delay)
            scored.extend({{r.sample_id for r in requests}})
            return inner(requests, advance)
        backend.loglikelihood = loglikelihood
        return backend

class UI(QuietUI):
    def status(self, message):
        statuses.append(message)

cfg = fake_config(fake_variant("base"), fake_variant("cand", damage=0.1, noise=0.3))
res = run_compare(cfg, [task], factory=SlowFactory([task]), store=RecordStore(Path(store_dir)),
                  model_fingerprint="fake", ui=UI(),
                  policy=GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml"))
Path(out).write_text(json.dumps({{
    "scored": len(scored), "statuses": statuses, "resumed": res.timings["resumed_items"],
    "results": json.dumps({{"comparisons": [c.model_dump(mode="json") for c in res.comparisons],
                           "verdict": res.verdict.model_dump(mode="json")}}, sort_keys=True)}}))
"""
N_ITEMS = 320  # five chunks per variant


def _start(tmp_path: Path, store: Path, out: Path, delay: float) -> subprocess.Popen:
    script = tmp_path / "run_compare.py"
    if not script.exists():
        script.write_text(_SCRIPT.format(tests=str(TESTS), n=N_ITEMS))
    return subprocess.Popen([sys.executable, str(script), str(store), str(out), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return json.loads(out.read_text())


def _journaled_lines(store: Path) -> int:
    # Whole lines only: the chunk being written may have reached the file in part.
    return sum(p.read_bytes().count(b"\n") for p in store.glob("*.partial.jsonl"))


def _uninterrupted() -> str:
    task = make_task(N_ITEMS)
    return _results(_compare(task, None, FakeFactory([task])))


def test_a_run_killed_with_sigkill_resumes_without_rescoring_finished_chunks(tmp_path):
    store = tmp_path / "records"
    proc = _start(tmp_path, store, tmp_path / "killed.json", delay=0.3)
    deadline = time.monotonic() + 120
    while _journaled_lines(store) < CHUNK_ITEMS:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before a chunk was journaled"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    rerun = _finish(_start(tmp_path, store, tmp_path / "rerun.json", delay=0.0), tmp_path / "rerun.json")
    resumed = sum(n for tasks in rerun["resumed"].values() for n in tasks.values())
    assert resumed >= CHUNK_ITEMS and resumed % CHUNK_ITEMS == 0
    assert rerun["scored"] == 2 * N_ITEMS - resumed < 2 * N_ITEMS  # finished chunks not recomputed
    assert rerun["results"] == _uninterrupted()
    assert not list(store.glob("*.partial.jsonl")) and not list(store.glob(".*.tmp"))


def test_two_processes_sharing_a_store_score_each_key_once_and_agree(tmp_path):
    store = tmp_path / "records"
    procs = [(_start(tmp_path, store, tmp_path / f"p{i}.json", delay=0.2), tmp_path / f"p{i}.json")
             for i in range(2)]
    first, second = (_finish(p, out) for p, out in procs)
    assert first["results"] == second["results"] == _uninterrupted()
    # Each of the two keys (baseline, candidate) was scored by exactly one of them; the other
    # waited for the lock, or came later, and reused the stored records.
    assert first["scored"] + second["scored"] == 2 * N_ITEMS
    files = sorted(store.iterdir())
    assert not [p for p in files if ".partial." in p.name or p.name.endswith(".tmp")]
    jsonl = [p for p in files if p.suffix == ".jsonl"]
    assert len(jsonl) == 2
    for path in jsonl:
        lines = path.read_text().splitlines()
        assert len(lines) == N_ITEMS and all(json.loads(line)["task"] == "synthetic" for line in lines)
    for path in store.glob("*.info.json"):
        json.loads(path.read_text())


def test_a_second_process_waits_for_the_lock_and_says_so(tmp_path):
    store = RecordStore(tmp_path)
    waited, entered = threading.Event(), threading.Event()

    def other():
        with store.locked("k", on_wait=waited.set):
            entered.set()

    with store.locked("k"):
        thread = threading.Thread(target=other)
        thread.start()  # flock: another open file description conflicts, even in one process
        assert waited.wait(10)
        time.sleep(0.1)
        assert not entered.is_set()
    thread.join(10)
    assert entered.is_set()


def test_atomic_writes_from_many_writers_leave_one_whole_file(tmp_path):
    path = tmp_path / "out.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 200_000}) for i in range(8)]
    threads = [threading.Thread(target=atomic_write_text, args=(path, t)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def test_text_records_in_the_journal_are_numbers(tmp_path):
    task = make_text_task(12)
    store = RecordStore(tmp_path / "records")
    with pytest.raises(_Stop):
        _compare(task, store, _StoppingFactory([task], variant="cand", calls=10))
    (journal,) = store.root.glob("*.partial.jsonl")
    lines = journal.read_text().splitlines()
    assert len(lines) == 8
    for line in lines:
        assert set(json.loads(line)) == set(TextRecord.model_fields)
    assert "renal" not in journal.read_text() and "dose" not in journal.read_text()
