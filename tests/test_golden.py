"""results.json is what it was before the architecture change (issue 19), and stays so: the same
commands on the embedded model give the same file, byte for byte, apart from `created_at`, the
checkout's own path (task files and policy are named by absolute path) and a GPTQ artefact's build
time.

Byte for byte holds on one kind of CPU, not across kinds: torch's float32 matmuls (MKL, oneDNN)
pick their kernels, and so their accumulation order, by CPU vendor and instruction set, so the
baseline's log-probabilities move in the 8th digit (ppl 22.570333266 vs 22.570333105) and an int8
candidate, which rounds activations, turns that into another choice-KL and an item that flips.
So the golden files live under tests/golden/<CPU>/, named by `numeric_platform()` (vendor,
torch's CPU capability, the matmul extensions present). A run must equal one of the recorded files;
on a CPU that has files it must equal that CPU's (else the test fails with the diff); on a CPU with
none whose results equal no file, the test is skipped and says how to record them
(`python tests/test_golden.py --record`, on a checkout known to give the old numbers).

The first files (tests/golden/unrecorded-2026-12-03/) were written by the code before the change
(commit 58cbeec; rewritten on 2026-12-03 by d53600e in the then environment) on a CPU whose kind
was not noted, and the landed code passed them in CI. tests/golden/AuthenticAMD-AVX512-*/ was
recorded on 2026-12-05 with the code of c17f909 (which had passed the first files in CI) and main,
which gave identical files. All with `--no-efficiency` (timings are not part of results.json, and
efficiency.json is not deterministic), offline (HF_HUB_OFFLINE=1, as the test session is: the
materialised tokenizer's config records it, and the model fingerprint covers that file), each run
alone in its parent folder (the power table reads earlier runs beside a run). Files are stored
normalised."""

from __future__ import annotations

import json
import os
import platform
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


# Instruction-set extensions that change which float kernels MKL/oneDNN run (as /proc/cpuinfo names them).
_MATMUL_FLAGS = ("avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def numeric_platform() -> str:
    """The kind of CPU whose float results a golden file holds: vendor, torch's CPU capability
    (the ATen kernels' instruction set) and the matmul extensions present."""
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", info, re.M)
    listed = re.search(r"^flags\s*:(.*)$", info, re.M)
    flags = set(listed.group(1).split()) if listed else set()
    parts = [vendor.group(1) if vendor else platform.machine(), torch.backends.cpu.get_cpu_capability()]
    return "-".join(parts + [f for f in _MATMUL_FLAGS if f in flags])


def recorded(name: str) -> dict[str, str]:
    """Golden file of one case per CPU kind it was recorded on."""
    return {p.parent.name: normalised(p.read_text(), "<checkout>")
            for p in sorted(GOLDEN.glob(f"*/{name}.results.json"))}


def _check(name: str, args: tuple[str, ...], tmp_path: Path) -> None:
    got = normalised(_run(name, args, tmp_path / name), str(ROOT))
    files, here = recorded(name), numeric_platform()
    assert files, f"no golden file for {name} under {GOLDEN}"
    if got in files.values():
        return
    if here not in files:
        pytest.skip(f"{name}: no golden results.json for this kind of CPU ({here}) and the run equals none of "
                    f"{sorted(files)} (float kernels differ by CPU); record them with "
                    "`python tests/test_golden.py --record` on a checkout known to give the old numbers")
    (tmp_path / "got.json").write_text(got)
    import difflib

    diff = "\n".join(list(difflib.unified_diff(files[here].splitlines(), got.splitlines(), "golden", "now",
                                               lineterm=""))[:80])
    pytest.fail(f"results.json of `qeval compare {' '.join(args)}` differs from {here}/{name}.results.json:\n{diff}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_json_is_unchanged(name, tmp_path):
    _check(name, CASES[name], tmp_path)


def test_normalising_keeps_every_measured_number():
    """Only created_at, the checkout path and build times are ignored: a changed number is a difference."""
    [path, *_] = sorted(GOLDEN.glob("*/default8.results.json"))
    doc = json.loads(path.read_text())
    same = normalised(json.dumps(doc), "<checkout>")
    assert same == path.read_text()  # stored normalised
    doc["comparisons"][0]["baseline_chance"] += 1e-12
    assert normalised(json.dumps(doc), "<checkout>") != same
    doc2 = json.loads(path.read_text())
    doc2["created_at"] = "1999-01-01T00:00:00+00:00"
    assert normalised(json.dumps(doc2), "<checkout>") == same


def test_the_numeric_platform_names_the_cpu_kind():
    import torch

    here = numeric_platform()
    assert torch.backends.cpu.get_cpu_capability() in here.split("-") and "/" not in here


if __name__ == "__main__":  # python tests/test_golden.py --record: this CPU's golden files from this checkout
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="run every case and write tests/golden/<CPU>/")
    if parser.parse_args().record:
        target = GOLDEN / numeric_platform()
        target.mkdir(parents=True, exist_ok=True)
        for case, case_args in CASES.items():
            with tempfile.TemporaryDirectory() as tmp:  # each run alone in its parent folder
                text = normalised(_run(case, case_args, Path(tmp) / case), str(ROOT))
            (target / f"{case}.results.json").write_text(text)
            print(f"wrote {target / case}.results.json")
