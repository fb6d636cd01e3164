"""The `qeval` commands: each parses its flags and calls the application service (qeval.run.app)
or a reader, prints, and exits with the verdict's code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qeval.cli.common import (
    Base, BatchSize, DataDir, Device, Executor, Include, Model, Out, Policy, RayAddress, RayCpus, Suite, Tasks, app,
    fail as _fail,
    out_console as Console, publish_options,
)
from qeval.errors import QevalInputError

# What compare and calibrate turn into one `qeval: error:` line (exit 2).
_BAD_INPUT = (QevalInputError,)  # every error qeval raises on purpose (qeval/errors.py)


@app.command()
@publish_options
def compare(
    ctx: typer.Context,
    model: Model = "smollm2-135m",
    base: Base = "fp16",
    candidates: Annotated[str, typer.Option(help="Comma-separated candidate variants, e.g. int8,int8wo,nf4, gguf:q4_k_m, gptq:bits=4,group=64,calib=clinical, awq, or a file you bring: gguf=model.gguf, gptq=DIR, awq=DIR; a KV-cache suffix on llama.cpp and vLLM variants: gguf:q4_k_m+kv=q8_0|q4_0|f16, vllm:fp8+kv=fp8 (see `qeval variants`).")] = "int8,int8wo,nf4",
    suite: Suite = "clinical-core",
    tasks: Tasks = None,
    policy: Policy = "default",
    out: Out = None,
    device: Device = "auto",
    strict_dtype: Annotated[bool, typer.Option(help="Compute fp16/bf16 baselines in that dtype even on CPU (slow).")] = False,
    batch_size: BatchSize = 16,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N items of each task (quick look; weaker statistics).")] = None,
    reuse: Annotated[bool, typer.Option(help="Reuse stored records of identical earlier runs (baseline included).")] = True,
    log_text: Annotated[bool, typer.Option(help="PHI opt-in: also write prompt text to the run directory.")] = False,
    keep_distributions: Annotated[bool, typer.Option(help="PHI opt-in: store the baseline's reference-text distributions (top-k token ids, which reveal the passages) in the cache, so a later compare adding a candidate does not rerun the baseline.")] = False,
    n_boot: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for confidence intervals.")] = 10_000,
    noise_floor: Annotated[Optional[str], typer.Option(help="Also score the baseline along another numeric path (batch1: one sequence per pass; bf16: bfloat16) and report and gate against that floor.")] = None,
    allow_contamination: Annotated[bool, typer.Option(help="Quantize even when a GPTQ/AWQ calibration set shares 13-word sequences with more than 1% of a task's items.")] = False,
    data_dir: DataDir = None,
    skip_missing_data: Annotated[bool, typer.Option(help="Run the tasks whose data files exist and report the others as skipped, instead of stopping.")] = False,
    from_hub: Annotated[bool, typer.Option(help="Online only: fetch a benchmark file missing from the data directory from the hub copy its task names (cached once).")] = False,
    lm_eval_include: Annotated[Optional[Path], typer.Option(help="Folder of extra lm-eval task YAMLs for --tasks lm-eval:<task> (lm-eval's --include_path).")] = None,
    efficiency: Annotated[bool, typer.Option(help="Measure each variant's artefact size, memory, load time and prefill/decode speed in this run (opens variants whose records are reused, for the speed probe).")] = True,
    speed_batch: Annotated[int, typer.Option(min=2, max=256, help="The larger batch of the speed probe (batch 1 is always measured).")] = 8,
    include: Include = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = 1,
    *,
    publish: dict,
) -> None:
    """Score baseline and candidates on identical prompts, pair per item, and gate.

    Exit code: 0 GO, 1 NO_GO, 3 INCONCLUSIVE, 2 bad input.
    """
    from qeval.run.audit_log import command_line
    from qeval.run import app as service

    options = {k: v for k, v in ctx.params.items() if k not in publish}
    options["include"] = tuple(include or ())
    try:
        run = service.compare(console=Console(), argv=command_line(ctx), **options, **publish)
    except _BAD_INPUT as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(f"{exc.filename or exc}: file not found")
    raise typer.Exit(run.results["exit_code"])


@app.command()
def calibrate(
    ctx: typer.Context,
    methods: Annotated[str, typer.Option(help="Comma-separated quantization methods: gptq, awq, gguf:<type> (llama.cpp with an importance matrix, e.g. gguf:q4_k_m).")] = "gptq,awq",
    sets: Annotated[str, typer.Option(help="Comma-separated calibration sets: built-in names (see `qeval calibration-sets`), .jsonl/.txt files or hf:<dataset>.")] = "generic,clinical",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method x set (seed 0..N-1 picks the calibration windows).")] = 2,
    params: Annotated[str, typer.Option(help="Parameters for every arm, e.g. bits=4,group=64,samples=64,seqlen=256.")] = "",
    model: Model = "smollm2-135m",
    base: Base = "fp16",
    suite: Suite = "clinical-core",
    tasks: Tasks = None,
    policy: Annotated[str, typer.Option(help="Gate policy for the per-candidate verdicts.")] = "default",
    out: Out = None,
    device: Device = "auto",
    batch_size: BatchSize = 16,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N items of each task.")] = None,
    n_boot: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 2000,
    allow_contamination: Annotated[bool, typer.Option(help="Quantize even when a calibration set overlaps an evaluated task.")] = False,
    data_dir: DataDir = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = 1,
) -> None:
    """Which calibration text degrades clinical behaviour least? Sweep methods x sets x seeds.

    Every artefact is scored against one baseline on the suite; per set the report gives paired
    deltas with intervals over items and seeds, the seed spread, choice-KL and reference-text KLD,
    a ranking, whether the sets are distinguishable, and a plot (calibrate.svg). Exit 0, or 2.
    """
    from qeval.run.audit_log import command_line
    from qeval.run import app as service

    try:
        service.calibrate(console=Console(), argv=command_line(ctx), **ctx.params)
    except _BAD_INPUT as exc:
        _fail(str(exc))


@app.command()
def power(
    suite: Suite = "clinical-core",
    tasks: Tasks = None,
    policy: Policy = "default",
    candidates: Annotated[str, typer.Option(help="Candidates to look up in earlier runs.")] = "int8,int8wo,nf4",
    discordance: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Assume this share of items flips either way (default: earlier runs, else the policy's).")] = None,
    runs: Annotated[Path, typer.Option(help="Directory of earlier runs to read discordance from.")] = Path("runs"),
    limit: Annotated[Optional[int], typer.Option(min=1, help="As `compare --limit`: only the first N items.")] = None,
    data_dir: DataDir = None,
    lm_eval_include: Annotated[Optional[Path], typer.Option(help="Folder of extra lm-eval task YAMLs.")] = None,
) -> None:
    """Print the smallest accuracy drop each task can detect, and the items a margin needs."""
    from qeval.run.config import include_dirs, policy_path, split_variants, task_roots
    from qeval.settings import data_dir_from
    from qeval.report.terminal import RichUI
    from qeval.gate import GatePolicy
    from qeval.power import discordance_history, power_table
    from qeval.run.app import existing_dir as _existing_dir, task_ids as _task_ids
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
    format: Annotated[str, typer.Option("--format", help="Weight format: fp16, bf16, fp32, fp8, int8, nf4, gptq[:group=N], awq[:group=N], gguf:<type>.")] = "fp16",
    context: Annotated[int, typer.Option(min=1, help="Tokens per sequence (prompt + output).")] = 4096,
    sequences: Annotated[int, typer.Option(min=1, help="Concurrent sequences.")] = 1,
    kv_dtype: Annotated[Optional[str], typer.Option(help="KV-cache element type: fp16, bf16, fp8, int8, int4, q8_0, q4_0, fp32 (default: the --format's +kv= suffix, e.g. gguf:q4_k_m+kv=q8_0, else fp16).")] = None,
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
    emit: Annotated[Optional[str], typer.Option("--emit", help="Print the plan as an engine's arguments: vllm (the `vllm serve` command and the qeval candidate that scores the same configuration).")] = None,
) -> None:
    """How much GPU memory a deployment needs: weights + KV cache + CUDA overhead + 15% headroom,
    the GPUs and tensor-parallel size, gpu_memory_utilization, and how many sequences fit."""
    from qeval.vram import GiB, ModelShape, load_shape, plan as make_plan, vllm_serve

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
        if emit not in (None, "vllm"):
            raise QevalInputError(f"--emit {emit!r}: the engines it can emit for are: vllm")
        serve = vllm_serve(result, model or "MODEL_DIR") if emit else None
    except QevalInputError as exc:
        _fail(str(exc))
    if serve is not None:
        import shlex

        if as_json:
            console.print_json(serve.model_dump_json())
            return
        print(shlex.join(serve.argv))
        if serve.variant:
            print(f"# the same configuration in qeval: --candidates {shlex.quote(serve.variant)}")
        for note in serve.notes:
            print(f"# note: {note}")
        return
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
    from qeval.kinds import kind_of
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
@publish_options
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `qeval compare`.")],
    *,
    publish: dict,
) -> None:
    """Print the verdict table of an earlier run and render its report.html again; exits with that
    run's exit code."""
    from qeval.publish.targets import Publish
    from qeval.report.html import write_html
    from qeval.report.terminal import print_summary
    from qeval.rundir.read import load_run

    try:
        publish = Publish.checked(**publish, runs_parent=run_dir.parent)
        results = load_run(run_dir).results  # results.json with efficiency.json beside it
        html = write_html(run_dir)  # rendered again: an older run gets the current report
    except QevalInputError as exc:
        _fail(str(exc))
    console = Console()
    print_summary(console, results, run_dir)
    console.print(f"HTML report: {html}", highlight=False)
    try:
        publish.run(console, run_dir, results=results)
    except QevalInputError as exc:
        _fail(str(exc))
    raise typer.Exit(results["exit_code"])


@app.command()
def prepare(
    model: Model = "smollm2-135m",
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


@app.command("audit-items")
def audit_items(
    task: Annotated[str, typer.Argument(help="A task id (`qeval tasks` lists them).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit as JSON.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder of benchmark files in their original formats.")] = None,
) -> None:
    """Answer-cue audit of a multiple-choice task: can the key be found from the options alone
    (longest option, last option, …)? Exit code 0 when the items meet the limits, 1 when not."""
    from qeval.item_audit import audit_lines, audit_samples, has_options
    from qeval.run.config import task_roots
    from qeval.settings import data_dir_from
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


