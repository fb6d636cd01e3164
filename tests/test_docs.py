"""The documentation: README.md (the quick start CI runs) and the docs/ pages (mkdocs-material).

`mkdocs build --strict` fails on a broken link or anchor between pages and on a page missing from
the nav (mkdocs.yml sets those checks to `warn`, strict turns warnings into errors). Paths to the
repository's own files are written as code in the pages (mkdocs cannot check links outside docs/),
so the paths they name are checked here instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Paths the pages name before they exist (a planned part, marked as such in the page). Empty:
# every path the docs name is checked.
PLANNED: set[str] = set()

# Paths in a user's own folder, not in this repository (what `qeval init` writes).
ELSEWHERE = {"tasks/my_task/"}

_TOP = ("qeval", "tests", "benchmarks", "configs", "tasks", "calibration", "notebooks", "examples",
        "scripts", "schemas", "docs")
_PATH = re.compile(r"`((?:%s)/[^`\s<>*]*)`" % "|".join(_TOP))


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_keeps_the_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert "bash scripts/setup.sh && .venv/bin/qeval compare" in text
    # .ci/run runs the test command written in README.md.
    assert "\n.venv/bin/python -m pytest -q\n" in text
    assert ".venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[^)#]+)", text))
    for target in linked:
        assert (ROOT / target).is_file(), f"README.md links {target}, which does not exist"
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} - {"docs/index.md"}
    assert pages <= linked, f"README.md does not link {sorted(pages - linked)}"


def test_paths_named_in_the_docs_exist():
    missing = []
    for page in _pages():
        for path in _PATH.findall(page.read_text(encoding="utf-8")):
            if path not in PLANNED | ELSEWHERE and not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "WARNING" not in output, output
    for page in ("index.html", "usage/index.html", "ARCHITECTURE/index.html", "ci/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
