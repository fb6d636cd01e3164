"""`qeval` command line. Thin: parse flags into a RunConfig, call the pipeline, print, exit."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .backends.base import NonFiniteScores
from .compare import PairingError, PromptMismatch
from .errors import QevalInputError
from .types import EXIT_BAD_INPUT, EXIT_CODES

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Is this quantized model safe to release instead of the full-precision one?")
err_console = Console(stderr=True)


def _fail(message: str) -> None:
    err_console.print(f"qeval: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def compare(
    model: Annotated[str, typer.Option(help="Built-in alias, .gguf file, HF checkpoint directory or hub id.")] = "smollm2-135m",
    base: Annotated[str, typer.Option("--base", help="Baseline variant: fp16, bf16 or fp32.")] = "fp16",
    candidates: Annotated[str, typer.Option(help="Comma-separated candidate variants, e.g. int8,int8wo,nf4 or gguf:q4_k_m, gguf=path/to/model.gguf (see `qeval variants`).")] = "int8,int8wo,nf4",
    suite: Annotated[str, typer.Option(help="Task suite from configs/suites/.")] = "clinical-core",
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated task ids; overrides --suite.")] = None,
    policy: Annotated[str, typer.Option(help="Gate policy: a name in configs/gates/ or a YAML path.")] = "default",
    out: Annotated[Optional[Path], typer.Option(help="Run directory to create (default: runs/<timestamp>).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    strict_dtype: Annotated[bool, typer.Option(help="Compute fp16/bf16 baselines in that dtype even on CPU (slow).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 16,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N items of each task (quick look; weaker statistics).")] = None,
    reuse: Annotated[bool, typer.Option(help="Reuse stored records of identical earlier runs (baseline included).")] = True,
    log_text: Annotated[bool, typer.Option(help="PHI opt-in: also write prompt text to the run directory.")] = False,
    n_boot: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for confidence intervals.")] = 10_000,
    noise_floor: Annotated[Optional[str], typer.Option(help="Also score the baseline along another numeric path (batch1: one sequence per pass; bf16: bfloat16) and report and gate against that floor.")] = None,
) -> None:
    """Score baseline and candidates on identical prompts, pair per item, and gate.

    Exit code: 0 GO, 1 NO_GO, 3 INCONCLUSIVE, 2 bad input.
    """
    console = Console()
    started = time.perf_counter()
    try:
        from .config import RunConfig, check_roles, known_variants, parse_variant, policy_path, split_variants, project_dir, suite_tasks
        from .gate import GatePolicy
        from .tasks import TaskRegistry, first_n

        known = known_variants()
        task_ids = tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else suite_tasks(suite)
        cfg = RunConfig(
            model=model, baseline=parse_variant(base, known),
            candidates=tuple(parse_variant(c, known) for c in split_variants(candidates)),
            tasks=task_ids, policy=policy, device=device, strict_dtype=strict_dtype,
            batch_size=batch_size, limit=limit, reuse_records=reuse, log_text=log_text, n_boot=n_boot,
            noise_floor=_noise_path(noise_floor),
        )
        check_roles(cfg)
        gate_file = policy_path(policy)
        gate_policy = GatePolicy.from_yaml(gate_file)
        registry = TaskRegistry([project_dir("tasks")])
        loaded = [first_n(registry.load(t), limit) for t in task_ids]
        run_dir = out or Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        if run_dir.exists():
            raise QevalInputError(f"run directory {run_dir} already exists; pass a new --out")

        from .backends.engines import EngineFactory
        from .backends.hf import resolve_device
        from .models import cache_dir, resolve_model
        from .pipeline import run_compare
        from .console import RichUI
        from .report import print_summary, results_dict, write_run
        from .runner import RecordStore

        resolve_device(device)  # a GPU-only option fails before minutes of model preparation
        ui = RichUI(console)
        t_model = time.perf_counter()
        resolved = resolve_model(model, progress=ui.status)
        model_seconds = time.perf_counter() - t_model
        factory = EngineFactory(resolved, device=device, strict_dtype=strict_dtype,
                                batch_size=batch_size, cache=cache_dir(), progress=ui.status)
        from .power import discordance_history

        res = run_compare(cfg, loaded, factory=factory, store=RecordStore(cache_dir() / "records"),
                          model_fingerprint=resolved.fingerprint, policy=gate_policy, ui=ui,
                          history=discordance_history(run_dir.parent))
        res.timings["model_preparation_s"] = model_seconds
        results = results_dict(
            res,
            model={"spec": resolved.spec, "source": resolved.source, "fingerprint": resolved.fingerprint,
                   "notes": list(resolved.notes)},
            policy={"file": str(gate_file), **gate_policy.model_dump(mode="json")},
        )
        res.timings["total_s"] = time.perf_counter() - started
        write_run(run_dir, res, results, log_text=log_text)
        print_summary(console, results, run_dir)
        console.print(f"[dim]wall time {res.timings['total_s']:.1f} s[/]")
        raise typer.Exit(EXIT_CODES[res.verdict.decision])
    except (QevalInputError, PromptMismatch, PairingError, NonFiniteScores) as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(f"{exc.filename or exc}: file not found")


def _noise_path(value: str | None) -> str | None:
    from .backends.hf import NUMERIC_PATHS

    if value is None or value in NUMERIC_PATHS:
        return value
    raise QevalInputError(f"--noise-floor {value!r}: choose {' or '.join(NUMERIC_PATHS)}")


@app.command()
def power(
    suite: Annotated[str, typer.Option(help="Task suite from configs/suites/.")] = "clinical-core",
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated task ids; overrides --suite.")] = None,
    policy: Annotated[str, typer.Option(help="Gate policy: a name in configs/gates/ or a YAML path.")] = "default",
    candidates: Annotated[str, typer.Option(help="Candidates to look up in earlier runs.")] = "int8,int8wo,nf4",
    discordance: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Assume this share of items flips either way (default: earlier runs, else the policy's).")] = None,
    runs: Annotated[Path, typer.Option(help="Directory of earlier runs to read discordance from.")] = Path("runs"),
    limit: Annotated[Optional[int], typer.Option(min=1, help="As `compare --limit`: only the first N items.")] = None,
) -> None:
    """Print the smallest accuracy drop each task can detect, and the items a margin needs."""
    from .config import policy_path, project_dir, split_variants, suite_tasks
    from .console import RichUI
    from .gate import GatePolicy
    from .power import discordance_history, power_table
    from .tasks import TaskRegistry, first_n

    console = Console()
    try:
        task_ids = tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else suite_tasks(suite)
        gate_policy = GatePolicy.from_yaml(policy_path(policy))
        registry = TaskRegistry([project_dir("tasks")])
        loaded = [first_n(registry.load(t), limit) for t in task_ids]
        if discordance is not None:
            gate_policy = gate_policy.model_copy(update={"assumed_discordance": max(discordance, 1e-9)})
            history = {}
        else:
            history = discordance_history(runs)
        names = split_variants(candidates)
        RichUI(console).power(power_table(loaded, names, gate_policy, history))
    except QevalInputError as exc:
        _fail(str(exc))


@app.command("tasks")
def list_tasks() -> None:
    """List the tasks in tasks/ and the suites in configs/suites/."""
    from .config import project_dir, suite_tasks
    from .tasks import TaskRegistry

    console = Console()
    try:
        reg = TaskRegistry([project_dir("tasks")])
        for tid in reg.ids():
            t = reg.load(tid)
            unit = "passages" if t.spec.kind == "reference_text" else "items   "
            console.print(f"{tid:24} v{t.spec.version}  {t.size():4d} {unit}  {t.spec.description}")
        for p in sorted((project_dir("configs") / "suites").glob("*.yaml")):
            console.print(f"suite {p.stem}: {', '.join(suite_tasks(p.stem))}")
    except QevalInputError as exc:
        _fail(str(exc))


@app.command("variants")
def list_variants() -> None:
    """List the variants in configs/variants/ (usable as --base / --candidates)."""
    from .config import known_variants

    console = Console()
    try:
        for name, spec in sorted(known_variants().items()):
            params = ",".join(f"{k}={v}" for k, v in spec.params.items())
            console.print(f"{name:8} {params:22} {spec.description}", highlight=False)
    except QevalInputError as exc:
        _fail(str(exc))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `qeval compare`.")],
) -> None:
    """Print the verdict table of an earlier run; exits with that run's exit code."""
    import json

    from .report import RESULTS_SCHEMA, print_summary

    path = run_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"{path}: cannot read results ({getattr(exc, 'strerror', None) or exc}); pass a run directory")
    if results.get("schema") != RESULTS_SCHEMA:
        _fail(f"{path}: schema {results.get('schema')!r} is not {RESULTS_SCHEMA!r}; use the qeval that wrote it")
    print_summary(Console(), results, run_dir)
    raise typer.Exit(results["exit_code"])


@app.command()
def prepare(
    model: Annotated[str, typer.Option(help="Built-in alias, .gguf file, HF checkpoint directory or hub id.")] = "smollm2-135m",
) -> None:
    """Materialise a model into the qeval cache and print its fingerprint."""
    from .models import cache_dir, resolve_model

    console = Console()
    try:
        r = resolve_model(model, progress=lambda m: console.print(f"[cyan]•[/] {m}"))
    except QevalInputError as exc:
        _fail(str(exc))
    console.print(f"{r.spec}: {r.path}\nfingerprint {r.fingerprint}\ncache {cache_dir()}", highlight=False)
    for n in r.notes:
        console.print(f"note: {n}", highlight=False)


def main() -> None:
    # Quiet third-party chatter (PHI-safe: never echo inputs) without hiding our own errors.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    sys.exit(app())


if __name__ == "__main__":
    main()
