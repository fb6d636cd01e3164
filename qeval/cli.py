"""`qeval` command line. Thin: parse flags into a RunConfig, call the pipeline, print, exit."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

try:
    from typer import _click as click  # the click typer parses with (vendored since typer 0.20)
except ImportError:  # an older typer, on the click package
    import click

from qeval.run.audit_log import audited
from qeval.errors import QevalInputError
from qeval.kinds import kind_of
from qeval.publish.targets import InconclusiveFails, JunitXml, Mlflow, MlflowModel, MlflowUri, Publish
from qeval.types import EXIT_BAD_INPUT, EXIT_CODES, EfficiencyProbe

err_console = Console(stderr=True)


Include = Annotated[Optional[list[Path]], typer.Option(
    help="A folder of your own tasks/ and suites/ (as `qeval init` writes it); repeatable; also $QEVAL_TASK_PATH.")]


def _error_line(message: str) -> None:
    err_console.print(f"qeval: error: {message}", markup=False, highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    _error_line(message)
    raise typer.Exit(EXIT_BAD_INPUT)


class _FlagError(click.exceptions.ClickException):
    """A flag click refused (out of range, not a number, unknown option or command): one
    `qeval: error:` line like every other bad input, not click's usage block."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        _error_line(self.message)


def flag_error_line(exc) -> str:
    """click's own words for the problem (which flag, which value, the allowed range), then where
    to look for the right spelling."""
    text = exc.format_message().strip().rstrip(".")
    text = " ".join(text.split())  # click's messages may span lines ("Did you mean ...")
    command = " ".join(["qeval", *exc.ctx.command_path.split()[1:]]) if exc.ctx is not None else "qeval"
    return f"{text[:1].lower()}{text[1:]}; see `{command} --help`"


class _OneLineErrors(TyperGroup):
    """Usage errors of the group and of every command become one line (exit 2). Parsing of the
    group's own flags happens in make_context, a command's in the group's invoke."""

    def make_context(self, *args, **kwargs):
        with _one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line():
            return super().invoke(ctx)


_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextlib.contextmanager
def _one_line():
    try:
        yield
    except _NO_ARGS_HELP:
        raise  # `qeval` alone prints the help (click >= 8.2 raises it as a usage error)
    except click.exceptions.UsageError as exc:
        raise _FlagError(flag_error_line(exc)) from None


# No local variables in tracebacks: they hold prompt text (PHI). main() also withholds messages.
app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False,
                  help="Is this quantized model safe to release instead of the full-precision one?")


@app.command()
def compare(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Built-in alias, .gguf file, HF checkpoint directory or hub id.")] = "smollm2-135m",
    base: Annotated[str, typer.Option("--base", help="Baseline variant: fp16, bf16 or fp32.")] = "fp16",
    candidates: Annotated[str, typer.Option(help="Comma-separated candidate variants, e.g. int8,int8wo,nf4, gguf:q4_k_m, gptq:bits=4,group=64,calib=clinical, awq, or a file you bring: gguf=model.gguf, gptq=DIR, awq=DIR (see `qeval variants`).")] = "int8,int8wo,nf4",
    suite: Annotated[str, typer.Option(help="Task suite from configs/suites/.")] = "clinical-core",
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated task ids, task YAML files or folders of them; overrides --suite.")] = None,
    policy: Annotated[str, typer.Option(help="Gate policy: a name in configs/gates/ or a YAML path.")] = "default",
    out: Annotated[Optional[Path], typer.Option(help="Run directory to create (default: runs/<timestamp>).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    strict_dtype: Annotated[bool, typer.Option(help="Compute fp16/bf16 baselines in that dtype even on CPU (slow).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 16,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N items of each task (quick look; weaker statistics).")] = None,
    reuse: Annotated[bool, typer.Option(help="Reuse stored records of identical earlier runs (baseline included).")] = True,
    log_text: Annotated[bool, typer.Option(help="PHI opt-in: also write prompt text to the run directory.")] = False,
    keep_distributions: Annotated[bool, typer.Option(help="PHI opt-in: store the baseline's reference-text distributions (top-k token ids, which reveal the passages) in the cache, so a later compare adding a candidate does not rerun the baseline.")] = False,
    n_boot: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for confidence intervals.")] = 10_000,
    noise_floor: Annotated[Optional[str], typer.Option(help="Also score the baseline along another numeric path (batch1: one sequence per pass; bf16: bfloat16) and report and gate against that floor.")] = None,
    allow_contamination: Annotated[bool, typer.Option(help="Quantize even when a GPTQ/AWQ calibration set shares 13-word sequences with more than 1% of a task's items.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of benchmark files in their original formats (open-medical suite; default $QEVAL_DATA_DIR or configs/data.yaml).")] = None,
    skip_missing_data: Annotated[bool, typer.Option(help="Run the tasks whose data files exist and report the others as skipped, instead of stopping.")] = False,
    from_hub: Annotated[bool, typer.Option(help="Online only: fetch a benchmark file missing from the data directory from the hub copy its task names (cached once).")] = False,
    lm_eval_include: Annotated[Optional[Path], typer.Option(help="Folder of extra lm-eval task YAMLs for --tasks lm-eval:<task> (lm-eval's --include_path).")] = None,
    efficiency: Annotated[bool, typer.Option(help="Measure each variant's artefact size, memory, load time and prefill/decode speed in this run (opens variants whose records are reused, for the speed probe).")] = True,
    speed_batch: Annotated[int, typer.Option(min=2, max=256, help="The larger batch of the speed probe (batch 1 is always measured).")] = 8,
    include: Include = None,
    junit_xml: JunitXml = None,
    inconclusive_fails: InconclusiveFails = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_model: MlflowModel = None,
) -> None:
    """Score baseline and candidates on identical prompts, pair per item, and gate.

    Exit code: 0 GO, 1 NO_GO, 3 INCONCLUSIVE, 2 bad input.
    """
    console = Console()
    started = time.perf_counter()
    try:
        from qeval.run.config import include_dirs

        cfg = _run_config(model=model, base=base, candidates=candidates, suite=suite, tasks=tasks,
                          policy=policy, device=device, strict_dtype=strict_dtype,
                          batch_size=batch_size, limit=limit, reuse_records=reuse, log_text=log_text,
                          keep_distributions=keep_distributions,
                          n_boot=n_boot, noise_floor=_noise_path(noise_floor),
                          data_dir=data_dir, skip_missing_data=skip_missing_data, from_hub=from_hub,
                          lm_eval_include=_existing_dir(lm_eval_include, "--lm-eval-include"),
                          efficiency=EfficiencyProbe(batch=speed_batch) if efficiency else None,
                          include=include_dirs(include or ()))
        publish = Publish.checked(junit_xml=junit_xml, inconclusive_fails=inconclusive_fails, mlflow=mlflow,
                                  mlflow_uri=mlflow_uri, mlflow_model=mlflow_model,
                                  runs_parent=out.parent if out else Path("runs"))
        with audited("compare", cfg, bad_input=_BAD_INPUT + (FileNotFoundError,),
                     bad_input_code=EXIT_BAD_INPUT, ctx=ctx, warn=_warn) as trail:
            res, run_dir = _execute(console, cfg, out=out, allow_contamination=allow_contamination,
                                    started=started, trail=trail)
            publish.run(console, run_dir, variants=trail.variants())
            raise typer.Exit(EXIT_CODES[res.verdict.decision])
    except QevalInputError as exc:  # every error qeval raises on purpose (qeval/errors.py)
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(f"{exc.filename or exc}: file not found")


# What the compare and calibrate commands report as bad input (exit 2); the audit log says so too.
_BAD_INPUT = (QevalInputError,)


def _warn(message: str) -> None:
    err_console.print(f"qeval: warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _existing_dir(path: Path | None, flag: str) -> str | None:
    if path is None:
        return None
    if not path.is_dir():
        raise QevalInputError(f"{flag} {path}: not a directory; give an existing folder")
    return str(path.resolve())


def _task_ids(tasks: str | None, suite: str, include: tuple[str, ...] = ()) -> tuple[str, ...]:
    from qeval.run.config import suite_tasks

    if tasks is None:
        return suite_tasks(suite, include)
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
    task_ids = _task_ids(tasks, suite, rest.get("include", ()))
    texts = split_variants(candidates) if isinstance(candidates, str) else candidates
    found = data_dir_from(data_dir)
    cfg = RunConfig(baseline=parse_variant(base, known),
                    candidates=tuple(parse_variant(c, known) for c in texts), tasks=task_ids,
                    data_dir=str(found) if found else None, **rest)
    check_roles(cfg)
    return cfg


def _execute(console: Console, cfg, *, out: Path | None, allow_contamination: bool, started: float,
             extra=None, trail=None):
    """config → tasks + variants → runner → compare → gate → report, written atomically.
    `extra(res, factory)` returns more files (name → text) for the run directory; `trail`
    (audit.Trail) collects what the audit log records, as it becomes known."""
    from qeval.run.audit_log import Trail
    from qeval.run.config import policy_path, task_roots
    from qeval.gate import GatePolicy
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
        _warn(line)
    run_dir = out or Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if run_dir.exists():
        raise QevalInputError(f"run directory {run_dir} already exists; pass a new --out")
    trail.run_dir = run_dir
    if cfg.log_text:
        _warn(f"--log-text: prompt, option, passage and output text (PHI) will be written to "
              f"{run_dir / 'texts'}{os.sep} and nowhere else; protect or delete that folder")
    if cfg.keep_distributions:
        from qeval.settings import cache_dir

        _warn(f"--keep-distributions: the baseline's reference-text distributions (top-k token ids, "
              f"which reveal the passages' text) will be stored in {cache_dir() / 'records'}"
              f"{os.sep}*.dists.npz; protect or delete them")

    from qeval.run.factory import EngineFactory
    from qeval.engines.hf import resolve_device
    from qeval.settings import cache_dir, resource_dir
    from qeval.report.terminal import RichUI
    from qeval.model_source import resolve_model
    from qeval.run.pipeline import run_compare
    from qeval.power import discordance_history
    from qeval.report.terminal import print_summary
    from qeval.run.document import results_document, write_run
    from qeval.report.tables import time_breakdown
    from qeval.run.store import RecordStore

    resolve_device(cfg.device)  # a GPU-only option fails before minutes of model preparation
    ui = RichUI(console)
    t_model = time.perf_counter()
    resolved = resolve_model(cfg.model, progress=ui.status)
    trail.model = resolved
    model_seconds = time.perf_counter() - t_model
    factory = EngineFactory(resolved, device=cfg.device, strict_dtype=cfg.strict_dtype,
                            batch_size=cfg.batch_size, cache=cache_dir(), progress=ui.status,
                            calibration_root=resource_dir("calibration"), bar=ui.bar)
    trail.factory = factory
    overlaps = factory.preflight([cfg.baseline, *cfg.candidates], loaded,
                                 allow_contamination=allow_contamination)
    res = run_compare(cfg, loaded, factory=factory, store=RecordStore(cache_dir() / "records"),
                      model_fingerprint=resolved.fingerprint, policy=gate_policy, ui=ui,
                      history=discordance_history(run_dir.parent))
    trail.result = res
    res.timings["model_preparation_s"] = model_seconds
    results = results_document(
        res,
        model={"spec": resolved.spec, "source": resolved.source, "fingerprint": resolved.fingerprint,
               "notes": list(resolved.notes)},
        policy={"file": str(gate_file), **gate_policy.model_dump(mode="json")},
        **({"efficiency": _efficiency(res, cfg, resolved)} if cfg.efficiency is not None else {}),
        artefacts=calibration_summary(factory, overlaps), skipped_tasks=skipped,
    )
    files = extra(res, factory) if extra else {}
    res.timings["total_s"] = time.perf_counter() - started
    write_run(run_dir, res, results, log_text=cfg.log_text, extra_files=files)
    print_summary(console, results.as_dict(), run_dir)
    console.print(f"[dim]{time_breakdown(res.timings)}[/]")
    return res, run_dir


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


@app.command()
def calibrate(
    ctx: typer.Context,
    methods: Annotated[str, typer.Option(help="Comma-separated quantization methods: gptq, awq.")] = "gptq,awq",
    sets: Annotated[str, typer.Option(help="Comma-separated calibration sets: built-in names (see `qeval calibration-sets`), .jsonl/.txt files or hf:<dataset>.")] = "generic,clinical",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method x set (seed 0..N-1 picks the calibration windows).")] = 2,
    params: Annotated[str, typer.Option(help="Parameters for every arm, e.g. bits=4,group=64,samples=64,seqlen=256.")] = "",
    model: Annotated[str, typer.Option(help="Built-in alias, .gguf file, HF checkpoint directory or hub id.")] = "smollm2-135m",
    base: Annotated[str, typer.Option("--base", help="Baseline variant: fp16, bf16 or fp32.")] = "fp16",
    suite: Annotated[str, typer.Option(help="Task suite from configs/suites/.")] = "clinical-core",
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated task ids, task YAML files or folders of them; overrides --suite.")] = None,
    policy: Annotated[str, typer.Option(help="Gate policy for the per-candidate verdicts.")] = "default",
    out: Annotated[Optional[Path], typer.Option(help="Run directory to create (default: runs/<timestamp>).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 16,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N items of each task.")] = None,
    n_boot: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 2000,
    allow_contamination: Annotated[bool, typer.Option(help="Quantize even when a calibration set overlaps an evaluated task.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of benchmark files in their original formats (open-medical suite; default $QEVAL_DATA_DIR or configs/data.yaml).")] = None,
) -> None:
    """Which calibration text degrades clinical behaviour least? Sweep methods x sets x seeds.

    Every artefact is scored against one baseline on the suite; per set the report gives paired
    deltas with intervals over items and seeds, the seed spread, choice-KL and reference-text KLD,
    a ranking, whether the sets are distinguishable, and a plot (calibrate.svg). Exit 0, or 2.
    """
    console = Console()
    started = time.perf_counter()
    try:
        from qeval.report.plots import calibrate_plot
        from qeval.run.calibrate import HIGHER_IS_BETTER, Arm, markdown, summarise

        method_list = [m.strip() for m in methods.split(",") if m.strip()]
        set_list = [x.strip() for x in sets.split(",") if x.strip()]
        bad = [m for m in method_list if m not in ("gptq", "awq")]
        if bad or not method_list:
            raise QevalInputError(f"--methods {methods!r}: choose from gptq, awq")
        if len(set(set_list)) != len(set_list) or not set_list:
            raise QevalInputError(f"--sets {sets!r}: name each calibration set once")
        if params and any("=" not in p for p in params.split(",")):
            raise QevalInputError(f"--params {params!r}: use key=value pairs, e.g. bits=4,group=64")
        if any(p.split("=")[0].strip() in ("calib", "seed") for p in params.split(",") if p):
            raise QevalInputError("--params: calib and seed are set by --sets and --seeds")
        # A set given as a file is labelled by its stem in the tables.
        labels = {cs: Path(cs).stem if cs.endswith((".jsonl", ".txt", ".md")) else cs for cs in set_list}
        if len(set(labels.values())) != len(labels):
            raise QevalInputError(f"--sets {sets!r}: two sets would share the label "
                                  "(same file name); rename one")
        arms, names = [], []
        for m in method_list:
            for cs in set_list:
                cands = tuple(f"{m}:calib={cs},seed={k}" + (f",{params}" if params else "")
                              for k in range(seeds))
                arms.append(Arm(m, labels[cs], tuple(range(seeds)), cands))
                names.extend(cands)
        cfg = _run_config(model=model, base=base, candidates=names, suite=suite, tasks=tasks,
                          policy=policy, device=device, batch_size=batch_size, limit=limit,
                          n_boot=n_boot, data_dir=data_dir,
                          efficiency=None)  # every arm has the same format: one speed, nothing to learn
        holder = {}

        def experiment(res, factory):
            records = {c.spec.name: {**c.records, **c.text} for c in res.candidates}
            seconds = {k: float(v.get("quantize_seconds", 0.0)) for k, v in factory.artefacts.items()}
            summary = summarise(res.tasks, res.baseline.records, records, arms, seconds,
                                n_boot=n_boot, seed=cfg.seed)
            holder["summary"] = summary
            panels = [(t.spec.id, kind_of(t.spec.kind).label_free_metric) for t in res.tasks]
            panels += [(t.spec.id, "delta_accuracy") for t in res.tasks if kind_of(t.spec.kind).has_labels]
            return {"calibrate.json": summary.model_dump_json(indent=1) + "\n",
                    "calibrate.md": markdown(summary, "calibrate.svg"),
                    "calibrate.svg": calibrate_plot(summary, panels, higher_is_better=HIGHER_IS_BETTER)}

        with audited("calibrate", cfg, bad_input=_BAD_INPUT, bad_input_code=EXIT_BAD_INPUT,
                     ctx=ctx, warn=_warn) as trail:
            _, run_dir = _execute(console, cfg, out=out, allow_contamination=allow_contamination,
                                  started=started, extra=experiment, trail=trail)
            _print_calibrate(console, holder["summary"], run_dir)
    except QevalInputError as exc:  # every error qeval raises on purpose (qeval/errors.py)
        _fail(str(exc))


def _print_calibrate(console: Console, summary, run_dir: Path) -> None:
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


def calibration_summary(factory, overlaps: dict) -> dict:
    """How each GPTQ/AWQ artefact was made and its calibration set's overlap with every task
    (ids and counts only, never text)."""
    return {name: {**factory.artefacts.get(name, {}),
                   "contamination": [{"task": o.task, "units": o.units, "overlapping": o.contaminated,
                                      "share": o.share, "examples": list(o.examples)} for o in ov]}
            for name, ov in overlaps.items()}


def _noise_path(value: str | None) -> str | None:
    from qeval.engines.hf import NUMERIC_PATHS

    if value is None or value in NUMERIC_PATHS:
        return value
    raise QevalInputError(f"--noise-floor {value!r}: choose {' or '.join(NUMERIC_PATHS)}")


@app.command()
def power(
    suite: Annotated[str, typer.Option(help="Task suite from configs/suites/.")] = "clinical-core",
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated task ids, task YAML files or folders of them; overrides --suite.")] = None,
    policy: Annotated[str, typer.Option(help="Gate policy: a name in configs/gates/ or a YAML path.")] = "default",
    candidates: Annotated[str, typer.Option(help="Candidates to look up in earlier runs.")] = "int8,int8wo,nf4",
    discordance: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Assume this share of items flips either way (default: earlier runs, else the policy's).")] = None,
    runs: Annotated[Path, typer.Option(help="Directory of earlier runs to read discordance from.")] = Path("runs"),
    limit: Annotated[Optional[int], typer.Option(min=1, help="As `compare --limit`: only the first N items.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of benchmark files in their original formats (open-medical suite; default $QEVAL_DATA_DIR or configs/data.yaml).")] = None,
    lm_eval_include: Annotated[Optional[Path], typer.Option(help="Folder of extra lm-eval task YAMLs.")] = None,
) -> None:
    """Print the smallest accuracy drop each task can detect, and the items a margin needs."""
    from qeval.run.config import include_dirs, policy_path, split_variants, task_roots
    from qeval.settings import data_dir_from
    from qeval.report.terminal import RichUI
    from qeval.gate import GatePolicy
    from qeval.power import discordance_history, power_table
    from qeval.tasks.registry import load_tasks

    console = Console()
    try:
        gate_policy = GatePolicy.from_yaml(policy_path(policy))
        include = _existing_dir(lm_eval_include, "--lm-eval-include")
        roots = include_dirs()
        loaded, _ = load_tasks(_task_ids(tasks, suite, roots), roots=task_roots(roots),
                               data_dir=data_dir_from(data_dir), limit=limit,
                               lm_eval_include=Path(include) if include else None)
        if discordance is not None:
            gate_policy = gate_policy.model_copy(update={"assumed_discordance": max(discordance, 1e-9)})
            history = {}
        else:
            history = discordance_history(runs)
        names = split_variants(candidates)
        RichUI(console).power(power_table(loaded, names, gate_policy, history))
    except QevalInputError as exc:
        _fail(str(exc))


@app.command()
def plan(
    model: Annotated[Optional[str], typer.Option(help="A preset (llama-2-70b, llama-3-70b, llama-3-8b), a built-in alias (smollm2-135m), a config.json or a checkpoint directory.")] = None,
    format: Annotated[str, typer.Option("--format", help="Weight format: fp16, bf16, fp32, int8, nf4, gptq[:group=N], awq[:group=N], gguf:<type>.")] = "fp16",
    context: Annotated[int, typer.Option(min=1, help="Tokens per sequence (prompt + output).")] = 4096,
    sequences: Annotated[int, typer.Option(min=1, help="Concurrent sequences.")] = 1,
    kv_dtype: Annotated[str, typer.Option(help="KV-cache element type: fp16, bf16, fp8, int8, fp32.")] = "fp16",
    gpu: Annotated[str, typer.Option(help="T4, A10G, L4, A100-40GB, A100-80GB, H100-80GB or H200.")] = "H100-80GB",
    gpu_memory: Annotated[Optional[float], typer.Option(min=0.1, help="Custom GPU memory in GiB (overrides --gpu).")] = None,
    layers: Annotated[Optional[int], typer.Option(min=1, help="Explicit shape: decoder layers.")] = None,
    hidden: Annotated[Optional[int], typer.Option(min=1, help="Explicit shape: hidden size.")] = None,
    heads: Annotated[Optional[int], typer.Option(min=1, help="Explicit shape: attention heads.")] = None,
    kv_heads: Annotated[Optional[int], typer.Option(min=1, help="Explicit shape: KV heads (GQA; default = heads).")] = None,
    head_dim: Annotated[Optional[int], typer.Option(min=1, help="Explicit shape: head dim (default hidden / heads).")] = None,
    vocab: Annotated[Optional[int], typer.Option(min=1, help="Explicit shape: vocabulary size.")] = None,
    intermediate: Annotated[Optional[int], typer.Option(min=1, help="Explicit shape: MLP intermediate size.")] = None,
    params: Annotated[Optional[float], typer.Option(min=1e6, help="Explicit total parameter count (else computed from the shape).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """How much GPU memory a deployment needs: weights + KV cache + CUDA overhead + 15% headroom,
    the GPUs and tensor-parallel size, gpu_memory_utilization, and how many sequences fit."""
    from qeval.vram import GiB, ModelShape, load_shape, plan as make_plan

    console = Console()
    try:
        explicit = dict(layers=layers, hidden=hidden, heads=heads, vocab=vocab, intermediate=intermediate)
        if model is None:
            missing = [f"--{k}" for k, v in explicit.items() if v is None]
            if missing:
                raise QevalInputError(f"give --model or the shape; missing {', '.join(missing)}")
            shape = ModelShape(**explicit, kv_heads=kv_heads or heads, head_dim=head_dim or hidden // heads,
                               params=int(params) if params else None)
        else:
            shape = load_shape(model)
        result = make_plan(shape, fmt=format, context=context, sequences=sequences, kv_dtype=kv_dtype,
                           gpu=gpu if gpu_memory is None else f"custom {gpu_memory:g} GiB",
                           gpu_bytes=int(gpu_memory * GiB) if gpu_memory is not None else None)
    except QevalInputError as exc:
        _fail(str(exc))
    if as_json:
        console.print_json(result.model_dump_json())
        return
    console.print(f"{result.model}, {result.format}: {result.sequences} × {result.context} tokens, "
                  f"KV {result.kv_dtype}, on {result.gpu} ({result.gpu_bytes / GiB:.1f} GiB)", highlight=False)
    for line in result.lines:
        console.print(f"  {line.item:20} {line.bytes / GiB:9.2f} GiB  {line.how}", highlight=False)
    tp = result.tensor_parallel
    console.print(f"GPUs: {result.gpus_needed} by memory; tensor-parallel size "
                  f"{tp if tp is not None else 'none up to 8'}; gpu_memory_utilization "
                  f"{result.gpu_memory_utilization:.2f}; {result.sequences_that_fit} sequences of "
                  f"{result.context} tokens fit in the KV budget", highlight=False)
    for note in result.notes:
        console.print(f"  note: {note}", highlight=False)


@app.command("tasks")
def list_tasks(
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of benchmark files (to count their items).")] = None,
    include: Include = None,
) -> None:
    """List the tasks in tasks/ and the suites in configs/suites/ (and in included folders)."""
    from qeval.run.config import include_dirs, suite_dirs, suite_tasks, task_roots
    from qeval.settings import data_dir_from
    from qeval.tasks.registry import MissingData, TaskRegistry

    console = Console()
    try:
        included = include_dirs(include or ())
        reg = TaskRegistry(task_roots(included), data_dir_from(data_dir))
        for tid in reg.ids():
            try:
                t = reg.load(tid)
            except MissingData:
                console.print(f"{tid:28} (data file not found: see --data-dir)", highlight=False)
                continue
            unit = kind_of(t.spec.kind).unit
            console.print(f"{tid:28} v{t.spec.version}  {t.size():4d} {unit:8}  {t.spec.description}",
                          highlight=False)
        for p in [p for d in suite_dirs(included) for p in sorted(d.glob("*.yaml"))]:
            console.print(f"suite {p.stem}: {', '.join(suite_tasks(p.stem, included))}")
    except QevalInputError as exc:
        _fail(str(exc))


@app.command("variants")
def list_variants() -> None:
    """List the variants in configs/variants/ (usable as --base / --candidates)."""
    from qeval.run.config import known_variants

    console = Console()
    try:
        for name, spec in sorted(known_variants().items()):
            params = ",".join(f"{k}={v}" for k, v in spec.params.items())
            console.print(f"{name:8} {params:22} {spec.description}", highlight=False)
    except QevalInputError as exc:
        _fail(str(exc))


@app.command("calibration-sets")
def calibration_sets() -> None:
    """List the calibration sets in calibration/ (GPTQ/AWQ `calib=`), verified against their manifests."""
    from qeval.quantize.calibration_sets import builtin_sets, load_builtin
    from qeval.settings import resource_dir

    console = Console()
    root = resource_dir("calibration")
    try:
        for name in builtin_sets(root):
            s = load_builtin(root / name)
            d = s.describe()
            console.print(f"{name:10} {d['n_samples']:4d} samples {d['n_words']:7d} words  "
                          f"sha256 {s.sha256[:12]}  {s.source}", highlight=False)
    except QevalInputError as exc:
        _fail(str(exc))


@app.command("calibration-manifest")
def calibration_manifest(
    directory: Annotated[Path, typer.Argument(help="A calibration set folder holding samples.jsonl.")],
    description: Annotated[str, typer.Option(help="One line: what the text is.")],
    source: Annotated[str, typer.Option(help="Where the text comes from.")],
    licence: Annotated[str, typer.Option(help="The text's licence.")],
    model: Annotated[str, typer.Option(help="Model whose tokenizer counts the tokens.")] = "smollm2-135m",
) -> None:
    """Write (or rewrite) manifest.yaml for a calibration set folder: counts and sha256."""
    from qeval.quantize.calibration_sets import write_manifest
    from qeval.model_source import resolve_model

    console = Console()
    try:
        if not (directory / "samples.jsonl").is_file():
            raise QevalInputError(f"{directory}/samples.jsonl does not exist; put one "
                                  '{"text": ...} object per line there first')
        from transformers import AutoTokenizer

        resolved = resolve_model(model)
        tok = AutoTokenizer.from_pretrained(resolved.path)
        m = write_manifest(directory, name=directory.name, description=description, source=source,
                           licence=licence, tokenizer_name=resolved.spec,
                           count_tokens=lambda t: len(tok(t, add_special_tokens=False).input_ids))
    except QevalInputError as exc:
        _fail(str(exc))
    console.print(f"{directory / 'manifest.yaml'}: {m.n_samples} samples, {m.n_tokens} tokens, "
                  f"sha256 {m.sha256[:12]}", highlight=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `qeval compare`.")],
    junit_xml: JunitXml = None,
    inconclusive_fails: InconclusiveFails = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_model: MlflowModel = None,
) -> None:
    """Print the verdict table of an earlier run and render its report.html again; exits with that
    run's exit code."""
    from qeval.report.html import write_html
    from qeval.report.terminal import print_summary
    from qeval.rundir.read import load_run

    try:
        publish = Publish.checked(junit_xml=junit_xml, inconclusive_fails=inconclusive_fails, mlflow=mlflow,
                                  mlflow_uri=mlflow_uri, mlflow_model=mlflow_model,
                                  runs_parent=run_dir.parent)
        results = load_run(run_dir).results  # results.json with efficiency.json beside it
        html = write_html(run_dir)  # rendered again: an older run gets the current report
    except QevalInputError as exc:
        _fail(str(exc))
    print_summary(Console(), results, run_dir)
    Console().print(f"HTML report: {html}", highlight=False)
    try:
        publish.run(Console(), run_dir, results=results)
    except QevalInputError as exc:
        _fail(str(exc))
    raise typer.Exit(results["exit_code"])


@app.command()
def prepare(
    model: Annotated[str, typer.Option(help="Built-in alias, .gguf file, HF checkpoint directory or hub id.")] = "smollm2-135m",
) -> None:
    """Materialise a model into the qeval cache and print its fingerprint."""
    from qeval.model_source import resolve_model
    from qeval.settings import cache_dir

    console = Console()
    try:
        r = resolve_model(model, progress=lambda m: console.print(f"[cyan]•[/] {m}"))
    except QevalInputError as exc:
        _fail(str(exc))
    console.print(f"{r.spec}: {r.path}\nfingerprint {r.fingerprint}\ncache {cache_dir()}", highlight=False)
    for n in r.notes:
        console.print(f"note: {n}", highlight=False)


def _cue_warnings(loaded) -> list[str]:
    """One line per task whose options give answers away beyond the item-writing limits."""
    from qeval.tasks.item_audit import audit_samples, has_options, warning_line

    lines = []
    for t in loaded:
        if any(has_options(s) for s in t.samples):  # (a passage task has no samples)
            line = warning_line(audit_samples(t.spec.id, t.samples, t.spec.prompt.letters))
            lines += [line] if line else []
    return lines


@app.command("audit-items")
def audit_items(
    task: Annotated[str, typer.Argument(help="A task id (`qeval tasks` lists them).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit as JSON.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of benchmark files in their original formats.")] = None,
) -> None:
    """Answer-cue audit of a multiple-choice task: can the key be found from the options alone
    (longest option, last option, …)? Exit code 0 when the items meet the limits, 1 when not."""
    from qeval.run.config import task_roots
    from qeval.settings import data_dir_from
    from qeval.tasks.item_audit import audit_lines, audit_samples, has_options
    from qeval.tasks.registry import load_tasks

    try:
        (loaded,), _ = load_tasks([task], roots=task_roots(), data_dir=data_dir_from(data_dir))
        if not any(has_options(s) for s in loaded.samples):  # (a passage task has no samples)
            raise QevalInputError(f"task {task!r} has no multiple-choice items to audit; give a "
                                  "multiple-choice task (or a generate task whose items have options)")
        audit = audit_samples(loaded.spec.id, loaded.samples, loaded.spec.prompt.letters)
    except QevalInputError as exc:
        _fail(str(exc))
    console = Console()
    if as_json:
        console.print_json(audit.model_dump_json())
    else:
        for line in audit_lines(audit):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if audit.passed else 1)


from qeval.release_cli import gate, init  # noqa: E402 - the release-gate commands

app.command()(gate)
app.command()(init)


def main() -> None:
    # Quiet third-party chatter (PHI-safe: never echo inputs) without hiding our own errors.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        sys.exit(app())
    except Exception as exc:  # a bug, not bad input (that exits 2 with one line)
        _internal_error(exc)
        sys.exit(1)


def _internal_error(exc: BaseException) -> None:
    """Where an unexpected exception came from — its class and the file, line and function of
    each frame — without its message or any local variable: either may quote prompt text (PHI)."""
    import traceback

    err = sys.stderr
    print(f"qeval: internal error: {type(exc).__module__}.{type(exc).__qualname__} (message withheld: "
          "it may quote prompt text); traceback, innermost last:", file=err)
    for frame in traceback.extract_tb(exc.__traceback__):
        print(f"  {frame.filename}:{frame.lineno} in {frame.name}", file=err)
    err.flush()


if __name__ == "__main__":
    main()
