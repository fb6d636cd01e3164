"""results.json is what it was before the architecture change (issue 19): the same commands on the
embedded model give the same file, byte for byte, apart from `created_at` and the checkout's own
path (task files and policy are named by absolute path), and a GPTQ artefact's build time.

The golden files under tests/golden/ were written by the code before the change (commit 58cbeec,
checked out at /work/wt-old; rewritten on 2026-12-03 by d53600e, which gave 58cbeec's files in the
old environment, because the package registry's newer dependencies changed int8/nf4 scores and
the landed code then failed them too) with `--no-efficiency` (timings are not part of results.json, and
efficiency.json is not deterministic), offline (HF_HUB_OFFLINE=1, as the test session is: the
materialised tokenizer's config records it, and the model fingerprint covers that file), each run
alone in its parent folder (the power table reads earlier runs beside a run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"

CASES = {
    "default8": ("--limit", "8"),
    "q4gptq8": ("--candidates", "gguf:q4_k_m,gptq:samples=8,seqlen=128,calib=generic", "--limit", "8"),
}
OLD_ROOT = "/work/wt-old"  # where the golden runs' checkout was


_BUILD_TIME = re.compile(r" in [0-9.]+ s from ")


def _without_build_time(x):
    """A GPTQ/AWQ artefact's manifest records how long quantizing took (wall time on the machine
    that built it; reused with the artefact), and its note repeats it: not a computed result."""
    if isinstance(x, dict):
        return {k: (None if k == "quantize_seconds" else _without_build_time(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [_without_build_time(v) for v in x]
    return _BUILD_TIME.sub(" in <s> s from ", x) if isinstance(x, str) else x


def normalised(text: str, root: str) -> str:
    data = json.loads(text)
    data.pop("created_at", None)
    return json.dumps(_without_build_time(data), indent=1, sort_keys=True).replace(root, "<checkout>")


def _run(name: str, args: tuple[str, ...], out: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "qeval.cli", "compare", *args, "--no-efficiency", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=5400)
    assert proc.returncode in (0, 1, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    return (out / "results.json").read_text()


def _check(name: str, args: tuple[str, ...], tmp_path: Path) -> None:
    got = normalised(_run(name, args, tmp_path / name), str(ROOT))
    want = normalised((GOLDEN / f"{name}.results.json").read_text(), OLD_ROOT)
    if got != want:
        (tmp_path / "got.json").write_text(got)
        (tmp_path / "want.json").write_text(want)
        import difflib

        diff = "\n".join(list(difflib.unified_diff(want.splitlines(), got.splitlines(), "golden", "now",
                                                   lineterm=""))[:80])
        pytest.fail(f"results.json of `qeval compare {' '.join(args)}` differs from {name}.results.json:\n{diff}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_json_is_unchanged(name, tmp_path):
    _check(name, CASES[name], tmp_path)


def test_normalising_keeps_every_measured_number():
    """Only created_at and the checkout path are ignored: a changed number is a difference."""
    doc = json.loads((GOLDEN / "default8.results.json").read_text())
    same = normalised(json.dumps(doc), OLD_ROOT)
    doc["comparisons"][0]["baseline_chance"] += 1e-12
    assert normalised(json.dumps(doc), OLD_ROOT) != same
    doc2 = json.loads((GOLDEN / "default8.results.json").read_text())
    doc2["created_at"] = "1999-01-01T00:00:00+00:00"
    assert normalised(json.dumps(doc2), OLD_ROOT) == same
