"""The application service behind `qeval compare` and `qeval calibrate`, and the public Python API
(`qeval.compare(...)`, `qeval.calibrate(...)`, as lm-eval's `simple_evaluate` is for its users):
typed options mirroring the command's flags → validation (before any model time) → pipeline →
run directory → the run document. The CLI parses flags and calls these same functions.

    import qeval
    run = qeval.compare(candidates="int8wo,nf4", tasks="clinical_core", limit=30, out="runs/r1")
    run.results["verdict"], run.path

Bad input raises QevalInputError (or FileNotFoundError) naming the problem and the fix. Nothing
is printed unless a rich `console` is given; qeval's warnings go to stderr (`warn=` to redirect).
`engines=` is the seam a test uses to score with the fake backend."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from qeval.run.audit_log import audited
from qeval.errors import QevalInputError
from qeval.types import EXIT_BAD_INPUT, EXIT_CODES, EfficiencyProbe

# What compare and calibrate report as bad input (exit 2); the audit log says so too.
BAD_INPUT = (QevalInputError,)  # every error qeval raises on purpose (qeval/errors.py)
LOG_FILE = "qeval.log"


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str = "smollm2-135m"
    base: str = "fp16"
    suite: str = "clinical-core"
    tasks: Optional[str] = None
    policy: str = "default"
    out: Optional[Path] = None
    device: str = "auto"
    batch_size: int = Field(16, ge=1)
    limit: Optional[int] = Field(None, ge=1)
    allow_contamination: bool = False
    data_dir: Optional[Path] = None
    executor: str = "local"
    ray_address: Optional[str] = None
    ray_cpus: int = Field(1, ge=1)

    def placement(self) -> dict:
        """Where variants run (qeval/run/executor.py), checked before any model time. Not part
        of the run's configuration: both executors give the same results.json."""
        from qeval.run.executor import EXECUTORS

        if self.executor not in EXECUTORS:
            raise QevalInputError(f"--executor {self.executor!r}: choose {' or '.join(EXECUTORS)}")
        if self.ray_address is not None and self.executor != "ray":
            raise QevalInputError("--ray-address is for --executor ray; add --executor ray or drop it")
        if self.executor == "ray":
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise QevalInputError("--executor ray: Ray is not installed in this environment; "
                                      "pip install 'qeval[ray]' (or ray), or use --executor local")
        return {"name": self.executor, "address": self.ray_address, "cpus_per_job": self.ray_cpus}


class CompareOptions(_Options):
    """`qeval compare`'s flags (see `qeval compare --help`), as keyword arguments of qeval.compare."""

    candidates: str = "int8,int8wo,nf4"
    strict_dtype: bool = False
    reuse: bool = True
    log_text: bool = False
    keep_distributions: bool = False
    n_boot: int = Field(10_000, ge=100)
    noise_floor: Optional[str] = None
    skip_missing_data: bool = False
    from_hub: bool = False
    lm_eval_include: Optional[Path] = None
    efficiency: bool = True
    speed_batch: int = Field(8, ge=2, le=256)
    include: tuple[Path, ...] = ()
    junit_xml: Optional[Path] = None
    inconclusive_fails: bool = False
    mlflow: bool = False
    mlflow_uri: Optional[str] = None
    mlflow_model: Optional[str] = None


class CalibrateOptions(_Options):
    """`qeval calibrate`'s flags, as keyword arguments of qeval.calibrate."""

    methods: str = "gptq,awq"
    sets: str = "generic,clinical"
    seeds: int = Field(2, ge=1)
    params: str = ""
    n_boot: int = Field(2000, ge=100)


def warn(message: str) -> None:
    """qeval's own warning line, on the real stderr (also while library noise is captured)."""
    from qeval.util.noise import terminal_stderr

    stream = terminal_stderr()
    print(f"qeval: warning: {message}", file=stream, flush=True)


def engine_factory(resolved, tasks, cfg, ui):
    """The factory that opens each variant of a run (the real engines)."""
    from qeval.run.factory import EngineFactory
    from qeval.settings import cache_dir, resource_dir

    return EngineFactory(resolved, device=cfg.device, strict_dtype=cfg.strict_dtype,
                         batch_size=cfg.batch_size, cache=cache_dir(), progress=ui.status,
                         calibration_root=resource_dir("calibration"), bar=ui.bar)


def _api_argv(command: str, options: BaseModel) -> list[str]:
    """The audit log's command line for an API call: the options the caller set."""
    return [f"qeval.{command}", *(f"{k}={v}" for k, v in options.model_dump(exclude_unset=True).items())]


def compare(*, console=None, engines: Callable | None = None, argv: Sequence[str] | None = None,
            warn: Callable[[str], None] = warn, **options: Any):
    """Score baseline and candidates on identical prompts, pair per item, gate, write the run
    directory; returns the run document (qeval.load_run of that directory). Options: the flags
    of `qeval compare` (CompareOptions). The verdict's exit code is `run.results["exit_code"]`."""
    from qeval.publish.targets import Publish
    from qeval.run.config import include_dirs

    o = CompareOptions(**options)
    started = time.perf_counter()
    console = _console(console)
    cfg = _run_config(model=o.model, base=o.base, candidates=o.candidates, suite=o.suite, tasks=o.tasks,
                      policy=o.policy, device=o.device, strict_dtype=o.strict_dtype,
                      batch_size=o.batch_size, limit=o.limit, reuse_records=o.reuse, log_text=o.log_text,
                      keep_distributions=o.keep_distributions,
                      n_boot=o.n_boot, noise_floor=_noise_path(o.noise_floor),
                      data_dir=o.data_dir, skip_missing_data=o.skip_missing_data, from_hub=o.from_hub,
                      lm_eval_include=existing_dir(o.lm_eval_include, "--lm-eval-include"),
                      efficiency=EfficiencyProbe(batch=o.speed_batch) if o.efficiency else None,
                      include=include_dirs(o.include))
    publish = Publish.checked(junit_xml=o.junit_xml, inconclusive_fails=o.inconclusive_fails, mlflow=o.mlflow,
                              mlflow_uri=o.mlflow_uri, mlflow_model=o.mlflow_model,
                              runs_parent=o.out.parent if o.out else Path("runs"))
    with audited("compare", cfg, bad_input=BAD_INPUT + (FileNotFoundError,), bad_input_code=EXIT_BAD_INPUT,
                 argv=list(argv) if argv is not None else _api_argv("compare", o), warn=warn) as trail:
        res, run_dir = _execute(console, cfg, out=o.out, allow_contamination=o.allow_contamination,
                                started=started, trail=trail, engines=engines, warn=warn, executor=o.placement())
        publish.run(console, run_dir, variants=trail.variants())
        trail.exit_code = EXIT_CODES[res.verdict.decision]
    from qeval.rundir.read import load_run

    return load_run(run_dir)


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console(quiet=True)


def existing_dir(path: Path | None, flag: str) -> str | None:
    if path is None:
        return None
    if not path.is_dir():
        raise QevalInputError(f"{flag} {path}: not a directory; give an existing folder")
    return str(path.resolve())


def task_ids(tasks: str | None, suite: str, include: tuple[str, ...] = ()) -> tuple[str, ...]:
    """--tasks (comma-separated ids, task YAML files or folders of them), else the tasks of --suite
    (one suite, or several comma-separated: their tasks in order, each once)."""
    from qeval.run.config import suite_tasks

    if tasks is None:
        names = [s.strip() for s in suite.split(",") if s.strip()]
        if not names:
            raise QevalInputError(f"--suite {suite!r} names no suite; give a suite name or several "
                                  "comma-separated (`qeval tasks` lists them)")
        return tuple(dict.fromkeys(t for name in names for t in suite_tasks(name, include)))
    ids = tuple(t.strip() for t in tasks.split(",") if t.strip())
    if not ids:
        raise QevalInputError(f"--tasks {tasks!r} names no task; give comma-separated task ids "
                              "(`qeval tasks` lists them) or leave --tasks out to run --suite")
    from qeval.tasks.registry import expand_task_refs

    return expand_task_refs(ids)


def _run_config(*, base: str, candidates: str | list[str], suite: str, tasks: str | None,
                data_dir: Path | None = None, **rest):
    from qeval.run.config import RunConfig, check_roles, known_variants, parse_variant, split_variants
    from qeval.settings import data_dir_from

    known = known_variants()
    ids = task_ids(tasks, suite, rest.get("include", ()))
    texts = split_variants(candidates) if isinstance(candidates, str) else candidates
    found = data_dir_from(data_dir)
    cfg = RunConfig(baseline=parse_variant(base, known),
                    candidates=tuple(parse_variant(c, known) for c in texts), tasks=ids,
                    data_dir=str(found) if found else None, **rest)
    check_roles(cfg)
    return cfg


def _execute(console, cfg, *, out: Path | None, allow_contamination: bool, started: float,
             extra=None, trail=None, engines=None, warn=warn, executor: dict | None = None):
    """config → tasks + variants → runner → compare → gate → report, written atomically.
    `extra(res, factory)` returns more files (name → text) for the run directory; `trail`
    (audit.Trail) collects what the audit log records, as it becomes known. Library noise while
    models load and score goes to <run>/qeval.log."""
    from qeval.run.audit_log import Trail
    from qeval.gate import GatePolicy
    from qeval.run.config import policy_path, task_roots
    from qeval.tasks.registry import load_tasks

    trail = trail if trail is not None else Trail("", cfg, [])
    gate_file = policy_path(cfg.policy)
    gate_policy = GatePolicy.from_yaml(gate_file)
    loaded, skipped = load_tasks(
        cfg.tasks, roots=task_roots(cfg.include), data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
        lm_eval_include=Path(cfg.lm_eval_include) if cfg.lm_eval_include else None,
        limit=cfg.limit, skip_missing_data=cfg.skip_missing_data, from_hub=cfg.from_hub)
    trail.tasks = loaded
    for line in skipped:
        console.print(f"[yellow]skipped:[/] {line}", highlight=False)
    for line in _cue_warnings(loaded):
        warn(line)
    run_dir = Path(out) if out else Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if run_dir.exists():
        raise QevalInputError(f"run directory {run_dir} already exists; pass a new --out")
    trail.run_dir = run_dir
    if cfg.log_text:
        warn(f"--log-text: prompt, option, passage and output text (PHI) will be written to "
             f"{run_dir / 'texts'}{os.sep} and nowhere else; protect or delete that folder")
    if cfg.keep_distributions:
        from qeval.settings import cache_dir

        warn(f"--keep-distributions: the baseline's reference-text distributions (top-k token ids, "
             f"which reveal the passages' text) will be stored in {cache_dir() / 'records'}"
             f"{os.sep}*.dists.npz; protect or delete them")

    from qeval.engines.hf import resolve_device
    from qeval.report.terminal import RichUI
    from qeval.util.noise import capture_noise

    resolve_device(cfg.device)  # a GPU-only option fails before minutes of model preparation
    ui = RichUI(console)
    try:
        with capture_noise() as noise:
            res, results, files = _score(cfg, loaded, skipped, ui, run_dir, gate_file, gate_policy,
                                         allow_contamination=allow_contamination, extra=extra,
                                         trail=trail, engines=engines or engine_factory, started=started,
                                         executor=executor or {"name": "local"})
            from qeval.run.document import write_run

            write_run(run_dir, res, results, log_text=cfg.log_text, extra_files=files)
    except BAD_INPUT + (FileNotFoundError,):
        raise  # bad input is one line naming the problem; library chatter adds nothing to it
    except BaseException:
        _keep_noise(noise, None, warn)  # a crash: what libraries said may explain it
        raise
    from qeval.report.tables import time_breakdown
    from qeval.report.terminal import print_summary

    print_summary(console, results.as_dict(), run_dir)
    console.print(f"[dim]{time_breakdown(res.timings)}[/]")
    _keep_noise(noise, run_dir, lambda line: console.print(line, highlight=False, markup=False))
    return res, run_dir


def _keep_noise(noise, run_dir: Path | None, say: Callable[[str], None]) -> None:
    """What libraries printed, into <run>/qeval.log (a run that failed: a temporary file), and
    one line naming the file."""
    text = noise.text()
    if not text.strip():
        return
    from qeval.util.fileio import atomic_write_text

    if run_dir is not None:
        path = run_dir / LOG_FILE
        atomic_write_text(path, text)
    else:
        import tempfile

        fd, name = tempfile.mkstemp(prefix="qeval-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        path = Path(name)
    say(f"library messages (warnings, native-library output): {path}")


def _score(cfg, loaded, skipped, ui, run_dir: Path, gate_file: Path, gate_policy, *, allow_contamination,
           extra, trail, engines, started, executor: dict):
    from qeval.model_source import resolve_model
    from qeval.power import discordance_history
    from qeval.run.document import results_document
    from qeval.settings import cache_dir
    from qeval.run.pipeline import run_compare
    from qeval.run.store import RecordStore

    t_model = time.perf_counter()
    resolved = resolve_model(cfg.model, progress=ui.status)
    trail.model = resolved
    model_seconds = time.perf_counter() - t_model
    from qeval.run.config import fit_contexts

    cfg = fit_contexts(cfg, loaded)  # llama.cpp's n_ctx for a long-context task, unless given
    factory = engines(resolved, loaded, cfg, ui)
    trail.factory = factory
    overlaps = factory.preflight([cfg.baseline, *cfg.candidates], loaded,
                                 allow_contamination=allow_contamination)
    runner = make_executor(executor, factory, log_text=cfg.log_text)
    try:
        res = run_compare(cfg, loaded, factory=factory, store=RecordStore(cache_dir() / "records"),
                          model_fingerprint=resolved.fingerprint, policy=gate_policy, ui=ui,
                          history=discordance_history(run_dir.parent), executor=runner)
    finally:
        runner.close()
    trail.result = res
    res.timings["model_preparation_s"] = model_seconds
    results = results_document(
        res,
        model={"spec": resolved.spec, "source": resolved.source, "fingerprint": resolved.fingerprint,
               "notes": list(resolved.notes)},
        policy={"file": str(gate_file), **gate_policy.model_dump(mode="json")},
        **({"efficiency": _efficiency(res, cfg, resolved)} if cfg.efficiency is not None else {}),
        artefacts=calibration_summary(factory, overlaps, [cfg.baseline, *cfg.candidates]), skipped_tasks=skipped,
    )
    files = extra(res, factory) if extra else {}
    res.timings["total_s"] = time.perf_counter() - started
    return res, results, files


def make_executor(placement: dict, factory, *, log_text: bool = False):
    """The executor `--executor` names (qeval/run/executor.py), around the run's factory."""
    if placement["name"] == "local":
        from qeval.run.executor import LocalExecutor

        return LocalExecutor(factory)
    from qeval.run.ray_executor import RayExecutor

    return RayExecutor(factory, address=placement.get("address"), cpus_per_job=placement.get("cpus_per_job"),
                       log_text=log_text)


def _efficiency(res, cfg, resolved) -> dict:
    from qeval.efficiency import efficiency_table
    from qeval.vram import load_shape

    try:
        shape = load_shape(str(resolved.path))
    except QevalInputError:
        shape = None  # not a llama-like config: no planner prediction, the measurements stand
    runs = [("baseline", res.baseline.spec, res.baseline)] + [("candidate", c.spec, c) for c in res.candidates]
    return efficiency_table(runs, probe=cfg.efficiency, shape=shape, comparisons=res.comparisons,
                            verdicts=res.verdict.tasks, per_candidate=res.verdict.per_candidate)


def calibrate(*, console=None, engines: Callable | None = None, argv: Sequence[str] | None = None,
              warn: Callable[[str], None] = warn, **options: Any):
    """Which calibration text degrades clinical behaviour least? Sweep methods x sets x seeds
    against one baseline; writes calibrate.json/.md/.svg into the run directory and returns the
    run document. Options: the flags of `qeval calibrate` (CalibrateOptions)."""
    from qeval.kinds import kind_of
    from qeval.report.plots import calibrate_plot
    from qeval.run.calibrate import HIGHER_IS_BETTER, markdown, summarise

    o = CalibrateOptions(**options)
    started = time.perf_counter()
    console = _console(console)
    arms, names = _arms(o)
    cfg = _run_config(model=o.model, base=o.base, candidates=names, suite=o.suite, tasks=o.tasks,
                      policy=o.policy, device=o.device, batch_size=o.batch_size, limit=o.limit,
                      n_boot=o.n_boot, data_dir=o.data_dir,
                      efficiency=None)  # every arm has the same format: one speed, nothing to learn
    holder = {}

    def experiment(res, factory):
        records = {c.spec.name: {**c.records, **c.text} for c in res.candidates}
        made = {c.spec.name: factory.made_artefact(c.spec) or {} for c in res.candidates}
        seconds = {k: float(v.get("quantize_seconds", 0.0)) for k, v in made.items() if v}
        summary = summarise(res.tasks, res.baseline.records, records, arms, seconds,
                            n_boot=o.n_boot, seed=cfg.seed)
        holder["summary"] = summary
        panels = [(t.spec.id, kind_of(t.spec.kind).label_free_metric) for t in res.tasks]
        panels += [(t.spec.id, "delta_accuracy") for t in res.tasks if kind_of(t.spec.kind).has_labels]
        return {"calibrate.json": summary.model_dump_json(indent=1) + "\n",
                "calibrate.md": markdown(summary, "calibrate.svg"),
                "calibrate.svg": calibrate_plot(summary, panels, higher_is_better=HIGHER_IS_BETTER)}

    with audited("calibrate", cfg, bad_input=BAD_INPUT, bad_input_code=EXIT_BAD_INPUT,
                 argv=list(argv) if argv is not None else _api_argv("calibrate", o), warn=warn) as trail:
        _, run_dir = _execute(console, cfg, out=o.out, allow_contamination=o.allow_contamination,
                              started=started, extra=experiment, trail=trail, engines=engines, warn=warn,
                              executor=o.placement())
        _print_calibrate(console, holder["summary"], run_dir)
    from qeval.rundir.read import load_run

    return load_run(run_dir)


def _arms(o: CalibrateOptions):
    """The sweep's arms (method x set, each over the seeds) and every candidate variant's text."""
    from qeval.run.calibrate import Arm

    methods, sets, params, seeds = o.methods, o.sets, o.params, o.seeds
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    set_list = [x.strip() for x in sets.split(",") if x.strip()]
    from qeval.quantize.gguf import QUANT_TYPES

    gguf_types = [t for t in QUANT_TYPES if t not in ("f32", "f16")]
    bad = [m for m in method_list if m not in ("gptq", "awq") and m.removeprefix("gguf:") not in gguf_types]
    if bad or not method_list:
        raise QevalInputError(f"--methods {methods!r}: choose from gptq, awq, gguf:<type> (importance "
                              f"matrix; type one of {', '.join(gguf_types)})")
    if len(set(set_list)) != len(set_list) or not set_list:
        raise QevalInputError(f"--sets {sets!r}: name each calibration set once")
    if params and any("=" not in p for p in params.split(",")):
        raise QevalInputError(f"--params {params!r}: use key=value pairs, e.g. bits=4,group=64")
    if any(p.split("=")[0].strip() in ("calib", "imatrix", "seed") for p in params.split(",") if p):
        raise QevalInputError("--params: calib (imatrix for gguf) and seed are set by --sets and --seeds")
    # A set given as a file is labelled by its stem in the tables.
    labels = {cs: Path(cs).stem if cs.endswith((".jsonl", ".txt", ".md")) else cs for cs in set_list}
    if len(set(labels.values())) != len(labels):
        raise QevalInputError(f"--sets {sets!r}: two sets would share the label "
                              "(same file name); rename one")
    arms, names = [], []
    for m in method_list:
        for cs in set_list:
            # gguf:<type> calibrates llama.cpp's quantizer with an importance matrix on the set.
            head = f"{m},imatrix={cs}" if m.startswith("gguf:") else f"{m}:calib={cs}"
            cands = tuple(f"{head},seed={k}" + (f",{params}" if params else "") for k in range(seeds))
            arms.append(Arm(m, labels[cs], tuple(range(seeds)), cands))
            names.extend(cands)
    return arms, names


def _print_calibrate(console, summary, run_dir: Path) -> None:
    from rich.table import Table

    table = Table(title="calibration sets: per seed, seed SD, pooled 95% CI (items/passages x seeds)")
    for col in ("method", "set", "task", "metric", "per seed", "seed SD", "pooled"):
        table.add_column(col)
    for r in summary.arms:
        for s in r.stats:
            if s.metric in ("delta_log_ppl", "same_top"):
                continue
            table.add_row(r.method, r.calib, r.task, s.metric, ", ".join(f"{v:.4f}" for v in s.per_seed),
                          f"{s.seed_sd:.4f}",
                          f"{s.pooled.estimate:.4f} [{s.pooled.low:.4f}, {s.pooled.high:.4f}]")
    console.print(table)
    for method, order in summary.ranking.items():
        console.print(f"{method}: best calibration set by {summary.primary[method]}: {' < '.join(order)}",
                      highlight=False)
    for c in summary.contrasts:
        if c.metric in ("token_kld", "choice_kl", "delta_accuracy"):
            verdict = f"{c.better} better" if c.distinguishable else "not distinguishable"
            console.print(f"  {c.method} {c.task} {c.metric}: {c.a} - {c.b} = {c.difference.estimate:+.4f} "
                          f"[{c.difference.low:+.4f}, {c.difference.high:+.4f}] -> {verdict}", highlight=False)
    console.print(f"calibration report: {run_dir / 'calibrate.md'} (plot: calibrate.svg)", highlight=False)


def calibration_summary(factory, overlaps: dict, variants) -> dict:
    """How each calibrated artefact (GPTQ/AWQ, imatrix GGUF) was made and its calibration set's
    overlap with every task (ids and counts only, never text); the same whether this run made
    or opened the artefact or reused every record."""
    made = {v.name: factory.made_artefact(v) for v in variants if v.name in overlaps}
    return {name: {**(made.get(name) or {}),
                   "contamination": [{"task": o.task, "units": o.units, "overlapping": o.contaminated,
                                      "share": o.share, "examples": list(o.examples)} for o in ov]}
            for name, ov in overlaps.items()}


def _noise_path(value: str | None) -> str | None:
    from qeval.engines.hf import NUMERIC_PATHS

    if value is None or value in NUMERIC_PATHS:
        return value
    raise QevalInputError(f"--noise-floor {value!r}: choose {' or '.join(NUMERIC_PATHS)}")


def _cue_warnings(loaded) -> list[str]:
    """One line per task whose options give answers away beyond the item-writing limits."""
    from qeval.item_audit import audit_samples, has_options, warning_line

    lines = []
    for t in loaded:
        if any(has_options(s) for s in t.samples):  # (a passage task has no samples)
            line = warning_line(audit_samples(t.spec.id, t.samples, t.spec.prompt.letters))
            lines += [line] if line else []
    return lines
