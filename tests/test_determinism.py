"""The same compare twice gives the same results.json, apart from its timestamp: on real engines
(a tiny transformers model built here and its GGUF on llama.cpp), records recomputed from scratch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tiny_models import tiny_checkpoint


def _compare(model, out, cache):
    proc = subprocess.run(
        [sys.executable, "-m", "qeval.cli", "compare", "--model", str(model), "--base", "fp32",
         "--candidates", "bf16,gguf:q8_0", "--tasks", "clinical_core,clinical_core_cloze", "--limit", "24",
         "--n-boot", "500", "--no-reuse", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "QEVAL_CACHE": str(cache)})
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr
    return json.loads((out / "results.json").read_text())


def test_same_compare_twice_gives_identical_results(tmp_path):
    pytest.importorskip("llama_cpp")
    tiny_checkpoint(tmp_path / "ckpt", "llama")
    # Separate parent folders: the pre-run power table learns discordance from earlier runs in the
    # same folder (by design, and named in its `discordance_source`); everything else is the run's own.
    first = _compare(tmp_path / "ckpt", tmp_path / "a" / "one", tmp_path / "cache")
    second = _compare(tmp_path / "ckpt", tmp_path / "b" / "two", tmp_path / "cache")
    assert first.pop("created_at") and second.pop("created_at")
    assert first == second
    # Not vacuous: both candidates were scored on both tasks, and timings stayed out of results.json.
    assert {(c["task"], c["candidate"]) for c in first["comparisons"]} == {
        (t, v) for t in ("clinical_core", "clinical_core_cloze") for v in ("bf16", "gguf:q8_0")}
    assert "efficiency" not in first and (tmp_path / "a" / "one" / "efficiency.json").is_file()
    # The records were recomputed (--no-reuse), not copied: two runs, two scorings.
    for run in ("a/one", "b/two"):
        timings = json.loads((tmp_path / run / "timings.json").read_text())
        assert all(v == [] for v in timings["reused_tasks"].values())
