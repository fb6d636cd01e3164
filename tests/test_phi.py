"""PHI: by default no prompt, option, rationale, passage or generated text is written anywhere.

`qeval compare` runs in a child process (real stdout and stderr, real library output) on a tiny
model built here and three tasks — multiple choice, generate, reference text — whose every text
field carries a unique marker. The child's cache, audit log, home, temp and working directories
all lie in a sandbox under tmp_path, and after each run every file there (run directories with
their qeval.log of library output, stored records, GGUF artefacts read as bytes, the audit log,
whatever a library dropped under ~ or in TMPDIR) and the
child's stdout and stderr are searched for the markers, as text and as their token ids. The first
run also writes a JUnit file and logs to MLflow's default store beside the run directory: both
are scanned too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parent.parent
HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None

# Runs qeval's real entry point (qeval.cli:main) with tasks/ pointed at the test's own folder.
# With PHI_TEST_FAIL set, a candidate's scoring raises an exception whose message quotes an item
# and whose frame holds item text in local variables: what a bug deep in a backend could do.
ENTRY = textwrap.dedent("""
    import os
    from pathlib import Path

    import qeval.settings

    _real = qeval.settings.resource_dir
    qeval.settings.resource_dir = lambda name: Path(os.environ["PHI_TEST_TASKS"]) if name == "tasks" else _real(name)

    if os.environ.get("PHI_TEST_FAIL"):
        import qeval.run.pipeline

        _run_variant = qeval.run.pipeline.run_variant

        def run_variant(variant, tasks, **kw):
            if kw.get("baseline") is not None:  # the baseline is scored and stored by now
                question = tasks[0].samples[0].question
                raise RuntimeError(f"could not score {question!r}")
            return _run_variant(variant, tasks, **kw)

        qeval.run.pipeline.run_variant = run_variant

    from qeval.cli import main

    main()
""")


class Markers:
    def __init__(self):
        self.all: list[str] = []

    def __call__(self, what: str) -> str:
        m = f"PHIMARK{uuid.uuid4().hex}{what}"
        self.all.append(m)
        return m


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny checkpoint, the marked tasks and the entry script, outside the scanned sandbox."""
    from tiny_models import tiny_checkpoint

    base = tmp_path_factory.mktemp("phi-input")
    ckpt = base / "ckpt"
    tok, _ = tiny_checkpoint(ckpt, "llama", initializer_range=0.2)
    mark = Markers()
    tasks = base / "tasks"

    def items(prefix, n):
        return [{"id": f"{prefix}{i}", "question": f"Patient {mark('question')} on metformin: dose {i}?",
                 "choices": [f"500 mg {mark('choice')}", f"aspirin {mark('choice')}", f"stop {mark('choice')}"],
                 "answer": "ABC"[i % 3], "rationale": f"because {mark('rationale')}", "risk": "high" if i % 2 else "standard"}
                for i in range(n)]

    (tasks / "mc" / "items").mkdir(parents=True)
    (tasks / "mc" / "items" / "a.yaml").write_text(json.dumps({"area": "dosing", "items": items("mc", 8)}))
    (tasks / "mc" / "phi_mc.yaml").write_text(json.dumps({
        "id": "phi_mc", "kind": "multiple_choice", "description": "marked multiple choice",
        "source": {"format": "qeval_items", "path": "items"},
        "prompt": {"template": f"Clinic letter {mark('template')}.\n{{question}}\n{{choices}}\nAnswer:"}}))
    (tasks / "gen" / "items").mkdir(parents=True)
    (tasks / "gen" / "items" / "a.yaml").write_text(json.dumps({"area": "dosing", "items": items("gen", 5)}))
    (tasks / "gen" / "phi_gen.yaml").write_text(json.dumps({
        "id": "phi_gen", "kind": "generate", "description": "marked generation",
        "source": {"format": "qeval_items", "path": "items"},
        "prompt": {"template": "{question}\n{choices}\nAnswer:"},
        "generation": {"max_tokens": 10, "stop": ["\n\n"], "answer_pattern": "([ABC])"}}))
    passages = [{"id": f"r{i}", "title": f"Note {mark('title')}", "specialty": f"renal {mark('specialty')}",
                 "text": f"Renal function: eGFR 42, {mark('passage')}. Chest pain radiating to the left "
                         f"arm, {mark('passage')}; review in 2 weeks."} for i in range(4)]
    (tasks / "ref" / "passages").mkdir(parents=True)
    (tasks / "ref" / "passages" / "a.yaml").write_text(json.dumps({"style": "case_note", "passages": passages}))
    (tasks / "ref" / "phi_ref.yaml").write_text(json.dumps({
        "id": "phi_ref", "kind": "reference_text", "description": "marked passages",
        "source": {"format": "qeval_passages", "path": "passages"},
        "baseline_top_k": 32, "window_tokens": 48}))
    # Bad input that shows only once a model tokenises it: a one-token passage beside marked ones.
    bad = passages[:2] + [{"id": "r-short", "title": "t", "specialty": "s", "text": "x"}]
    (tasks / "bad" / "passages").mkdir(parents=True)
    (tasks / "bad" / "passages" / "a.yaml").write_text(json.dumps({"style": "case_note", "passages": bad}))
    (tasks / "bad" / "phi_bad.yaml").write_text(json.dumps({
        "id": "phi_bad", "kind": "reference_text", "source": {"format": "qeval_passages", "path": "passages"},
        "baseline_top_k": 32, "window_tokens": 48}))
    entry = base / "entry.py"
    entry.write_text(ENTRY)
    # Each marker's token ids (context-free middle part): text stored as ids would be found too.
    id_seqs = []
    for m in mark.all:
        ids = tok(m, add_special_tokens=False).input_ids
        assert len(ids) > 12, ids
        id_seqs.append(ids[2:-2])
    sandbox = base.parent / (base.name + "-sandbox")
    sandbox.mkdir()
    return {"ckpt": ckpt, "tasks": tasks, "entry": entry, "markers": mark.all, "id_seqs": id_seqs,
            "sandbox": sandbox, "tok": tok}


def _qeval(world, *args, fail=False, timeout=900, audit="audit.jsonl", cache="cache"):
    sb = world["sandbox"]
    for d in ("home", "tmp", "xdg-cache", "work"):
        (sb / d).mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QEVAL_", "PYTEST", "HF_", "XDG_", "MLFLOW_"))}
    env.update({
        "HOME": str(sb / "home"), "TMPDIR": str(sb / "tmp"), "XDG_CACHE_HOME": str(sb / "xdg-cache"),
        "QEVAL_CACHE": str(sb / cache), "QEVAL_AUDIT_LOG": str(sb / "audit" / audit),
        "HF_HUB_OFFLINE": "1", "PHI_TEST_TASKS": str(world["tasks"]), "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "200",
    })
    if fail:
        env["PHI_TEST_FAIL"] = "1"
    proc = subprocess.run(
        [sys.executable, str(world["entry"]), "compare", "--model", str(world["ckpt"]), "--base", "fp32",
         "--device", "cpu", "--n-boot", "200", "--batch-size", "4", *args],
        cwd=sb / "work", env=env, capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def _hits(world, data: bytes) -> set[str]:
    found = {m for m in world["markers"] if m.encode() in data or m.encode("utf-16-le") in data}
    text = data.decode("utf-8", errors="ignore")
    for m, seq in zip(world["markers"], world["id_seqs"]):
        if any(sep.join(map(str, seq)) in text for sep in (",", ", ", " ")):
            found.add(m + " (as token ids)")
    return found


def _scan(world, *, allowed: Path | None = None) -> dict[str, set[str]]:
    """Marker hits per file under the sandbox, except under `allowed`."""
    out = {}
    for path in sorted(world["sandbox"].rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if allowed is not None and allowed in path.parents:
            continue
        hits = _hits(world, path.read_bytes())
        if hits:
            out[str(path.relative_to(world["sandbox"]))] = hits
    return out


def _audit(world) -> list[dict]:
    return [json.loads(line) for line in (world["sandbox"] / "audit" / "audit.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(world):
    """The three runs in order, each scanned right after it ends (later ones share the cache)."""
    sb = world["sandbox"]
    tasks = "phi_mc,phi_gen,phi_ref"
    out = {}
    # 1. Default: no text anywhere — nor in the JUnit file, nor in the MLflow store (the default
    #    SQLite store and its artifacts, beside the run directory) when MLflow is installed.
    publish = ["--junit-xml", str(sb / "work" / "qeval.xml")] + (["--mlflow"] if HAVE_MLFLOW else [])
    code, stdout, stderr = _qeval(world, "--candidates", "bf16,gguf:q8_0", "--tasks", tasks,
                                  "--out", str(sb / "work" / "run-plain"), *publish)
    out["plain"] = dict(code=code, stdout=stdout, stderr=stderr, files=_scan(world),
                        streams=_hits(world, (stdout + stderr).encode()))
    # 2. Opted in: text under <run>/texts/ only, and a warning saying so.
    code, stdout, stderr = _qeval(world, "--candidates", "bf16,gguf:q8_0", "--tasks", tasks, "--log-text",
                                  "--no-efficiency", "--out", str(sb / "work" / "run-text"))
    texts = sb / "work" / "run-text" / "texts"
    out["text"] = dict(code=code, stdout=stdout, stderr=stderr, files=_scan(world, allowed=texts),
                       streams=_hits(world, (stdout + stderr).encode()),
                       in_texts={h for p in texts.rglob("*") if p.is_file() for h in _hits(world, p.read_bytes())})
    # 3. A bug in a candidate's scoring, after the baseline was scored and stored: an exception
    #    quoting an item, with item text in its frame's locals.
    code, stdout, stderr = _qeval(world, "--candidates", "bf16", "--tasks", tasks, "--no-efficiency",
                                  "--no-reuse", "--out", str(sb / "work" / "run-crash"), fail=True)
    out["crash"] = dict(code=code, stdout=stdout, stderr=stderr, files=_scan(world, allowed=texts),
                        streams=_hits(world, (stdout + stderr).encode()))
    # 4. Bad input found only once the model tokenises the tasks (a one-token passage).
    code, stdout, stderr = _qeval(world, "--candidates", "bf16", "--tasks", "phi_mc,phi_bad", "--no-efficiency",
                                  "--out", str(sb / "work" / "run-bad"))
    out["bad"] = dict(code=code, stdout=stdout, stderr=stderr, files=_scan(world, allowed=texts),
                      streams=_hits(world, (stdout + stderr).encode()))
    return out


def test_default_run_writes_no_text_anywhere(world, runs):
    r = runs["plain"]
    assert r["code"] in (0, 1, 3), r["stderr"][-3000:]
    assert r["files"] == {} and r["streams"] == set()
    sb = world["sandbox"]
    # The scan did cover what a run writes: the run directory, stored records, GGUF artefacts,
    # the audit log.
    run = sb / "work" / "run-plain"
    assert (run / "results.json").is_file() and list((run / "records").rglob("*.jsonl"))
    assert not (run / "texts").exists()
    assert list((sb / "cache" / "records").glob("*.jsonl"))
    assert list((sb / "cache").rglob("*.gguf"))
    assert (sb / "work" / "qeval.xml").is_file()
    if HAVE_MLFLOW:
        assert (sb / "work" / "mlflow.db").is_file() and list((sb / "work" / "mlartifacts").rglob("results.json"))
    assert "qeval: warning" not in r["stderr"]
    # What libraries printed while models loaded and scored went to <run>/qeval.log (among the
    # files scanned above; a failed run's goes to a qeval-*.log in TMPDIR, scanned too), named
    # on stdout, and not to the terminal.
    log = run / "qeval.log"
    assert (f"{log}" in r["stdout"]) == log.is_file()
    assert "Failed to load" not in r["stderr"] and "_pytree" not in r["stderr"]


def test_log_text_writes_text_to_the_run_texts_folder_only_and_warns(world, runs):
    r = runs["text"]
    assert r["code"] in (0, 1, 3), r["stderr"][-3000:]
    assert r["files"] == {} and r["streams"] == set()
    texts = world["sandbox"] / "work" / "run-text" / "texts"
    warnings = [line for line in r["stderr"].splitlines() if line.startswith("qeval: warning:")]
    assert len(warnings) == 1 and f"{texts}{os.sep}" in warnings[0] and "--log-text" in warnings[0]
    # What the prompts hold (template, questions, options, passages) is there; the rationale,
    # titles and specialties are never part of a prompt and appear nowhere.
    kinds = {m[len("PHIMARK") + 32:] for m in r["in_texts"]}
    assert kinds == {"template", "question", "choice", "passage"}
    assert {json.loads(x)["variant"] for x in (texts / "outputs.jsonl").read_text().splitlines()} == {
        "fp32", "bf16", "gguf:q8_0"}


def test_a_crash_while_scoring_prints_no_text_and_no_locals(world, runs):
    r = runs["crash"]
    assert r["code"] == 1, r["stderr"][-3000:]
    assert r["files"] == {} and r["streams"] == set()
    assert "qeval: internal error: builtins.RuntimeError (message withheld" in r["stderr"]
    assert "run_variant" in r["stderr"] and "could not score" not in r["stderr"]
    assert not (world["sandbox"] / "work" / "run-crash").exists()


def test_bad_input_found_mid_run_prints_ids_not_text(world, runs):
    r = runs["bad"]
    assert r["code"] == 2, r["stderr"][-3000:]
    assert r["files"] == {} and r["streams"] == set()
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    assert lines == ["qeval: error: task phi_bad, passage r-short: fewer than 2 tokens; "
                     "reference passages need text to score"]


def test_every_run_has_an_audit_line_without_text(world, runs):
    lines = _audit(world)
    assert len(lines) == 4
    plain, text, crash, bad = lines
    assert [x["outcome"] for x in lines] == ["ok", "ok", "error", "error"]
    assert [x["exit_code"] for x in lines] == [runs[k]["code"] for k in ("plain", "text", "crash", "bad")]
    assert crash["error"] == "RuntimeError" and bad["error"] == "QevalInputError"
    assert crash["verdict"] is None and bad["verdict"] is None and crash["per_candidate"] is None
    assert plain["verdict"] in ("GO", "NO_GO", "INCONCLUSIVE")
    assert set(plain["per_candidate"]) == {"bf16", "gguf:q8_0"}
    results = json.loads((world["sandbox"] / "work" / "run-plain" / "results.json").read_text())
    assert plain["verdict"] == results["verdict"] and plain["per_candidate"] == results["per_candidate"]
    assert plain["model"] == {"spec": str(world["ckpt"]), "fingerprint": results["model"]["fingerprint"]}
    assert plain["run_dir"] == str(world["sandbox"] / "work" / "run-plain")
    assert plain["argv"][:4] == ["qeval", "compare", "--model", str(world["ckpt"])]
    assert "--log-text" in text["argv"] and "--log-text" not in plain["argv"]
    tasks = {t["id"]: t for t in plain["tasks"]}
    assert {k: v["n"] for k, v in tasks.items()} == {"phi_mc": 8, "phi_gen": 5, "phi_ref": 4}
    by_id = {t["id"]: t for t in results["tasks"]}
    assert all(tasks[k]["content_hash"] == by_id[k]["content_hash"] for k in tasks)
    # The same items give the same item-set hash from run to run; the variants' fingerprints too.
    assert plain["item_set_sha256"] == text["item_set_sha256"] == crash["item_set_sha256"]
    assert plain["variants"] == text["variants"]
    assert [v["name"] for v in plain["variants"]] == ["fp32", "bf16", "gguf:q8_0"]
    assert all(len(v["fingerprint"]) == 64 for v in plain["variants"])
    # The crashed run knew its variants; the bad-input run its tasks (phi_bad with 3 passages).
    assert all(v["fingerprint"] for v in crash["variants"])
    assert {t["id"]: t["n"] for t in bad["tasks"]} == {"phi_mc": 8, "phi_bad": 3}
    assert _hits(world, (world["sandbox"] / "audit" / "audit.jsonl").read_bytes()) == set()


def _new_files_in_tmp(since: float, skip: Path) -> dict[str, bytes]:
    """Files under the system's /tmp changed since `since` (what a worker might drop there
    whatever TMPDIR says), except the test's own inputs."""
    found = {}
    for path in Path("/tmp").rglob("*"):
        try:
            if (path.is_file() and not path.is_symlink() and path.stat().st_mtime >= since
                    and skip not in path.parents and path.stat().st_size < (256 << 20)):
                found[str(path)] = path.read_bytes()
        except OSError:
            continue
    return found


def test_a_vllm_run_writes_no_text_anywhere(world, tmp_path_factory):
    """Baseline and candidate on the vLLM engine (its worker in .venv-vllm): the run directory,
    the cache (vLLM's own cache folders are under it), HOME, TMPDIR, new files in /tmp, the
    worker's output (qeval.log) and the terminal hold no marker, as text or token ids."""
    from tiny_models import tiny_checkpoint

    from qeval.engines.vllm.client import worker_python

    worker_python()  # built by scripts/setup.sh: missing is a failure
    ckpt = world["entry"].parent / "ckpt-vllm"  # head size 64: one vLLM's CPU attention takes
    tiny_checkpoint(ckpt, "llama", hidden=256, intermediate=512, initializer_range=0.2, max_position_embeddings=1024)
    since = time.time()
    sb = world["sandbox"]
    run = sb / "work" / "run-vllm"
    code, stdout, stderr = _qeval(world, "--model", str(ckpt), "--base", "vllm:fp32", "--candidates",
                                  "vllm:bf16", "--tasks", "phi_mc,phi_gen,phi_ref", "--out", str(run),
                                  audit="audit-vllm.jsonl")
    assert code in (0, 1, 3), stderr[-3000:]
    # The opted-in run's texts/ (another test's run in the same sandbox) hold text by design.
    assert _scan(world, allowed=sb / "work" / "run-text" / "texts") == {}
    assert _hits(world, (stdout + stderr).encode()) == set()
    tmp_hits = {p: h for p, data in _new_files_in_tmp(since, world["entry"].parent).items()
                if (h := _hits(world, data))}
    assert tmp_hits == {}
    results = json.loads((run / "results.json").read_text())
    assert results["baseline"]["backend"] == "vllm"
    # The scan covered what the worker wrote: its messages in the run's log, vLLM's cache folder.
    assert (run / "qeval.log").is_file()
    assert (sb / "cache" / "vllm").is_dir()


def test_a_ray_run_writes_no_text_anywhere(world):
    """Baseline and candidates as Ray jobs on a local cluster (--executor ray): Ray's session
    directory (every worker's stdout and stderr, the raylet's and GCS's logs) under /tmp/ray, the
    object store's spill folder, the sandbox (cache, HOME with Ray's ~/.ray, TMPDIR) and the
    terminal hold no marker, as text or token ids."""
    pytest.importorskip("ray")
    since = time.time()
    sb = world["sandbox"]
    run = sb / "work" / "run-ray"
    code, stdout, stderr = _qeval(world, "--candidates", "bf16,gguf:q8_0", "--tasks", "phi_mc,phi_gen,phi_ref",
                                  "--executor", "ray", "--out", str(run), audit="audit-ray.jsonl",
                                  cache="cache-ray")  # its own cache: the jobs run here, not earlier tests' records
    assert code in (0, 1, 3), stderr[-3000:]
    assert _scan(world, allowed=sb / "work" / "run-text" / "texts") == {}
    assert _hits(world, (stdout + stderr).encode()) == set()
    new = _new_files_in_tmp(since, world["entry"].parent)
    assert {p: h for p, data in new.items() if (h := _hits(world, data))} == {}
    # The scan covered Ray's session: its worker logs were written during this run, and no
    # object was spilled to disk (spilling is off on a cluster qeval starts).
    ray_files = [p for p in new if p.startswith("/tmp/ray/session_")]
    assert any("/logs/worker-" in p for p in ray_files), sorted(new)[:20]
    assert not [p for p in ray_files if "spill" in p]
    timings = json.loads((run / "timings.json").read_text())
    assert timings["executor"] == "ray" and {j["task"] for j in timings["jobs"]} == {"phi_mc", "phi_gen", "phi_ref"}
