"""Log a finished run to MLflow (the optional `mlflow` extra), and mark a registered model version
with the verdict.

One MLflow run per qeval run: parameters (model and variant fingerprints, policy, tasks with their
content hashes, library versions), metrics per candidate × task (Δ accuracy and its bounds, flips,
choice-KL, token KLD, perplexity ratio) and per candidate (efficiency ratios to the baseline),
tags (`qeval.verdict`, one per candidate and per task, the exit code) and artifacts (results.json,
efficiency.json, report.html, report.md, the JUnit file). Everything comes from the run directory:
ids, hashes and numbers, never item text or token ids.

The store: `--mlflow-uri`, else $MLFLOW_TRACKING_URI, else a SQLite store beside the run
directories (`<runs>/mlflow.db`, artifacts in `<runs>/mlartifacts/`). MLflow's telemetry is off
and its log lines stay out of the terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from qeval.errors import QevalInputError

EXPERIMENT = "qeval"
ARTIFACTS = ("results.json", "efficiency.json", "report.html", "report.md")
_KEY_CHARS = re.compile(r"[^\w.\- :]")  # what MLflow accepts in one segment of a key
# MLflow's limits per log_batch call.
_BATCH = {"metrics": 1000, "params": 100, "tags": 100}


def _quiet_env() -> None:
    """No telemetry, no usage pings, short bounded retries against a server; set before import.
    A user's own settings win."""
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                       "MLFLOW_LOGGING_LEVEL": "ERROR", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                       "GIT_PYTHON_REFRESH": "quiet"}.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's and alembic's log lines and warnings kept off the terminal for the call."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic", "sqlalchemy", "urllib3")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def is_file_store(uri: str) -> bool:
    """A local folder store (`file:` URI or a plain path), not a database or a server."""
    scheme = uri.split(":", 1)[0] if re.match(r"^[A-Za-z][\w+.-]+:", uri) else ""
    return scheme in ("", "file")


def _client_class(uri: str):
    _quiet_env()
    if is_file_store(uri):
        # MLflow 3 refuses its folder store unless opted in; naming one is that opt-in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        with _quiet():
            from mlflow.tracking import MlflowClient
    except ImportError:
        raise QevalInputError("--mlflow needs the mlflow package, an optional extra: "
                              "pip install 'qeval[mlflow]'") from None
    return MlflowClient


def _client(uri: str):
    MlflowClient = _client_class(uri)
    try:
        with _quiet():
            return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:  # noqa: BLE001 - MlflowException for an unusable store URI
        raise QevalInputError(f"MLflow store {uri}: cannot open it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); fix --mlflow-uri or "
                              "MLFLOW_TRACKING_URI") from None


def default_uri(runs_parent: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store in the folder that holds the run directories."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{Path(runs_parent).resolve() / 'mlflow.db'}"


def parse_model_version(text: str | None) -> tuple[str, str] | None:
    """`NAME/VERSION` → (name, version); the version is a positive integer."""
    if text is None:
        return None
    name, _, version = text.rpartition("/")
    if not name or not version.isdigit() or int(version) < 1:
        raise QevalInputError(f"--mlflow-model {text!r}: give NAME/VERSION of a registered model "
                              "version, e.g. clinical-llm/3")
    return name, version


def _local_sqlite(uri: str) -> Path | None:
    """The database file of a local SQLite store URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def preflight(uri: str, model_version: str | None) -> None:
    """Before any model time: MLflow is installed, the store answers, and the registered model
    version to mark exists. A local SQLite store that does not exist yet is created when the run
    is logged, not now (a run refused later leaves nothing behind)."""
    parsed = parse_model_version(model_version)
    db = _local_sqlite(uri)
    if db is not None and not db.exists():
        _client_class(uri)  # installed?
        if parsed is not None:
            raise QevalInputError(f"--mlflow-model {model_version}: no such registered model version: the "
                                  f"MLflow store {uri} does not exist yet; register it there first")
        return
    client = _client(uri)
    with _quiet():
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is the same fix
            raise QevalInputError(f"MLflow store {uri}: not reachable ({type(exc).__name__}); start the "
                                  "server or fix --mlflow-uri / MLFLOW_TRACKING_URI") from None
        if parsed is not None:
            try:
                client.get_model_version(*parsed)
            except Exception:  # noqa: BLE001 - MlflowException: RESOURCE_DOES_NOT_EXIST
                raise QevalInputError(f"--mlflow-model {model_version}: no such registered model version "
                                      f"in {uri}; register it first or fix the name") from None


def _key(*parts: str) -> str:
    return "/".join(_KEY_CHARS.sub("_", p) for p in parts)


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _comparison_metrics(c: dict) -> dict[str, float]:
    """What CI dashboards plot per candidate × task; absent metrics of other task kinds skipped."""
    out: dict[str, float | None] = {}
    for name, key in [("delta_accuracy", "delta"), ("choice_kl_mean", "choice_kl_mean"),
                      ("choice_kl_p95", "choice_kl_p95"), ("top1_agreement", "top1_agreement"),
                      ("answer_agreement", "answer_agreement"), ("token_kld_mean", "kld_mean"),
                      ("ppl_ratio", "ppl_ratio"), ("same_top", "same_top")]:
        i = c.get(key)
        if isinstance(i, dict):
            out[name], out[f"{name}_low"], out[f"{name}_high"] = i["estimate"], i["low"], i["high"]
    for key in ("n", "baseline_accuracy", "candidate_accuracy", "flips_correct_to_wrong",
                "flips_wrong_to_correct", "mcnemar_p", "choice_kl_max", "kld_p99", "n_tokens"):
        out[key] = _number(c.get(key))
    out["verdict_go"] = 1.0 if c.get("verdict") == "GO" else 0.0
    return {k: v for k, v in out.items() if v is not None}


def payload(results: dict, *, variants: list[dict] | None = None) -> tuple[dict, dict, dict]:
    """(params, metrics, tags) of a run from its results (efficiency merged, as load_run gives).
    `variants`: the audit's variant records (name, fingerprint), when the caller has them."""
    model, policy = results["model"], results.get("policy") or {}
    names = [results["baseline"]["variant"]] + [c["variant"] for c in results["candidates"]]
    params: dict[str, str] = {
        "qeval_version": results.get("qeval_version", ""), "model.spec": model.get("spec", ""),
        "model.fingerprint": model["fingerprint"], "baseline": names[0],
        "candidates": ",".join(names[1:]), "policy.name": str(policy.get("name", "")),
        "policy.file": str(policy.get("file", "")),
        "policy.sha256": hashlib.sha256(json.dumps({k: v for k, v in policy.items() if k != "file"},
                                                   sort_keys=True).encode()).hexdigest(),
    }
    for k, v in policy.items():
        if k == "defaults" and isinstance(v, dict):
            params.update({f"policy.defaults.{f}": str(x) for f, x in v.items()})
        elif k == "tasks" and v:
            params["policy.tasks"] = json.dumps(v, sort_keys=True)[:6000]
        elif k not in ("file", "name", "description"):
            params[f"policy.{k}"] = str(v)
    for v in variants or []:
        if v.get("fingerprint"):
            params[_key("variant", v["name"], "fingerprint")] = v["fingerprint"]
    for t in results["tasks"]:
        params[_key("task", t["id"], "content_hash")] = t["content_hash"]
        params[_key("task", t["id"], "n")] = str(t["n"])
        params[_key("task", t["id"], "version")] = str(t.get("version", ""))
    for info in [results["baseline"], *results["candidates"]]:
        for lib, version in info.get("versions", {}).items():
            params.setdefault(_key("version", lib), version)
    cfg = results.get("config") or {}
    for k in ("limit", "n_boot", "seed", "device", "batch_size", "strict_dtype", "noise_floor"):
        if k in cfg:
            params[f"config.{k}"] = str(cfg[k])

    metrics: dict[str, float] = {}
    for c in results["comparisons"]:
        for name, value in _comparison_metrics(c).items():
            metrics[_key(c["candidate"], c["task"], name)] = value
    for row in (results.get("efficiency") or {}).get("variants", []):
        for name, value in (row.get("vs_baseline") or {}).items():
            if _number(value) is not None:
                metrics[_key(row["variant"], "efficiency", f"{name}_ratio")] = float(value)
        for name in ("bits_per_weight", "weight_bytes", "peak_memory_bytes", "load_s"):
            if _number(row.get(name)) is not None:
                metrics[_key(row["variant"], "efficiency", name)] = float(row[name])

    tags = {"qeval.verdict": results["verdict"], "qeval.exit_code": str(results["exit_code"]),
            "qeval.model_fingerprint": model["fingerprint"]}
    # Dots, not slashes: a folder store keeps each tag in a file named by its key.
    for cand, verdict in results["per_candidate"].items():
        tags[_key(f"qeval.verdict.{cand}")] = verdict
    for c in results["comparisons"]:
        tags[_key(f"qeval.verdict.{c['candidate']}.{c['task']}")] = c["verdict"]
    if results.get("rejudged"):
        tags["qeval.rejudged_from"] = results["rejudged"]["run_dir"]
    return params, metrics, tags


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _experiment(client, uri: str) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    db = _local_sqlite(uri)  # a local database: its artifacts beside it, not in the cwd
    location = (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None
    return client.create_experiment(name, artifact_location=location)


def log_run(run_dir: Path, results: dict, *, uri: str, model_version: str | None = None,
            variants: list[dict] | None = None, extra_artifacts: tuple[Path, ...] = ()) -> str:
    """Log the run directory's results as one MLflow run; return its run id. With
    `model_version` (NAME/VERSION) also tag that registered model version with the verdict."""
    from mlflow.entities import Metric, Param, RunTag

    db = _local_sqlite(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    params, metrics, tags = payload(results, variants=variants)
    parsed = parse_model_version(model_version)
    with _quiet():
        exp = _experiment(client, uri)
        run = client.create_run(exp, run_name=Path(run_dir).name,
                                tags={"qeval.run_dir": str(Path(run_dir).resolve())})
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            batches = {"params": [Param(k, v) for k, v in sorted(params.items())],
                       "metrics": [Metric(k, v, now, 0) for k, v in sorted(metrics.items())],
                       "tags": [RunTag(k, v) for k, v in sorted(tags.items())]}
            for kind, entries in batches.items():
                for chunk in _batches(entries, _BATCH[kind]):
                    client.log_batch(run_id, **{kind: chunk})
            for name in ARTIFACTS:
                if (Path(run_dir) / name).is_file():
                    client.log_artifact(run_id, str(Path(run_dir) / name))
            for path in extra_artifacts:
                client.log_artifact(run_id, str(path))
            if parsed is not None:
                client.set_model_version_tag(*parsed, "qeval.verdict", results["verdict"])
                client.set_model_version_tag(*parsed, "qeval.run_id", run_id)
                client.set_model_version_tag(*parsed, "qeval.exit_code", str(results["exit_code"]))
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
    return run_id
