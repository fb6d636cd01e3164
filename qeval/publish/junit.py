"""JUnit XML for CI systems (GitHub Actions, GitLab CI, Jenkins read it natively).

One <testsuite> per candidate, one <testcase> per task: GO passes, NO_GO is a <failure> whose
message is the verdict's reason, INCONCLUSIVE is <skipped> (or a <failure> when the CI should
treat "the data cannot tell" as a failure). The run's overall verdict and exit code are
properties of every suite. Built from results.json alone: task ids, candidate names, numbers and
the gate's reasons (sample ids at most), never the text of an item.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from qeval.errors import QevalInputError
from qeval.util.fileio import atomic_write_text

_NOT_GO = {"NO_GO": "failure", "INCONCLUSIVE": "skipped"}


def _reason(comparison: dict) -> str:
    """The first rule whose decision is the task's verdict: what decided it."""
    rules = comparison.get("rules") or []
    first = next((r for r in rules if r["decision"] == comparison["verdict"]), None)
    return first["reason"] if first else f"{comparison['verdict']}"


def _details(comparison: dict) -> str:
    return "\n".join(f"{r['rule']}: {r['decision']} — {r['reason']}" for r in comparison.get("rules") or [])


def task_seconds(run_dir: Path) -> dict[str, dict[str, float]]:
    """variant → task → seconds scored in that run, from timings.json (empty when absent)."""
    try:
        return json.loads((Path(run_dir) / "timings.json").read_text()).get("task_s", {})
    except (OSError, ValueError):
        return {}


def junit_tree(results: dict, *, seconds: dict[str, dict[str, float]] | None = None,
               inconclusive_fails: bool = False) -> ET.Element:
    seconds = seconds or {}
    root = ET.Element("testsuites", name="qeval")
    totals = {"tests": 0, "failures": 0, "skipped": 0, "time": 0.0}
    for cand in [c["variant"] for c in results["candidates"]]:
        mine = [c for c in results["comparisons"] if c["candidate"] == cand]
        suite = ET.SubElement(root, "testsuite", name=cand)
        props = ET.SubElement(suite, "properties")
        for name, value in [("qeval.verdict", results["verdict"]),
                            ("qeval.exit_code", str(results["exit_code"])),
                            ("qeval.candidate_verdict", results["per_candidate"].get(cand, "")),
                            ("qeval.baseline", results["baseline"]["variant"]),
                            ("qeval.model_fingerprint", results["model"]["fingerprint"]),
                            ("qeval.policy", str(results["policy"].get("name", "")))]:
            ET.SubElement(props, "property", name=name, value=value)
        counts = {"tests": 0, "failures": 0, "skipped": 0, "time": 0.0}
        for c in mine:
            t = float(seconds.get(cand, {}).get(c["task"], 0.0))
            case = ET.SubElement(suite, "testcase", name=c["task"], classname=f"qeval.{cand}",
                                 time=f"{t:.3f}")
            kind = _NOT_GO.get(c["verdict"])
            if kind == "skipped" and inconclusive_fails:
                kind = "failure"
            if kind is not None:
                el = ET.SubElement(case, kind, message=f"{c['verdict']}: {_reason(c)}")
                if kind == "failure":
                    el.set("type", c["verdict"])
                    el.text = _details(c)
                counts["failures" if kind == "failure" else "skipped"] += 1
            counts["tests"] += 1
            counts["time"] += t
        for k, v in counts.items():
            suite.set(k, f"{v:.3f}" if k == "time" else str(v))
            totals[k] += v
        suite.set("errors", "0")
    for k, v in totals.items():
        root.set(k, f"{v:.3f}" if k == "time" else str(v))
    root.set("errors", "0")
    return root


def junit_xml(results: dict, **kw) -> str:
    root = junit_tree(results, **kw)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def check_target(path: Path | None, flag: str = "--junit-xml") -> None:
    """Before any model time: the file's folder must exist and the path must not be a folder."""
    if path is None:
        return
    if path.is_dir():
        raise QevalInputError(f"{flag} {path}: is a directory; give a file name, e.g. {path}/qeval.xml")
    if not path.parent.is_dir():
        raise QevalInputError(f"{flag} {path}: folder {path.parent} does not exist; create it first")


def write_junit(path: Path, results: dict, run_dir: Path, *, inconclusive_fails: bool = False) -> Path:
    atomic_write_text(path, junit_xml(results, seconds=task_seconds(run_dir),
                                      inconclusive_fails=inconclusive_fails))
    return path
