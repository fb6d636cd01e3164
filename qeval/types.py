"""The core records that flow cli → config → tasks + variants → runner → compare → gate → report.

Everything here is a plain pydantic model with `extra="forbid"`, so a typo in a YAML file or a stale
record is an error, not a silently ignored field. No type here holds prompt or response text unless
the user opted in: records carry hashes and scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

if TYPE_CHECKING:
    import numpy as np

RECORD_SCHEMA = 1  # bump when ItemRecord changes meaning; part of every record-store key


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- tasks


class Risk(str, Enum):
    high = "high"
    standard = "standard"


class NumericAnswer(Strict):
    """The key of a numeric item (a dose, rate or volume): the answer is right when the number
    extracted from the output lies within the tolerance of `value`. Exactly one of
    `tolerance_abs` (in `unit`) and `tolerance_rel` (a fraction of `value`) is given."""

    value: float = Field(strict=True, allow_inf_nan=False)
    unit: str = Field(min_length=1)
    tolerance_abs: float | None = Field(None, strict=True, ge=0, allow_inf_nan=False)
    tolerance_rel: float | None = Field(None, strict=True, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_tolerance(self) -> NumericAnswer:
        if (self.tolerance_abs is None) == (self.tolerance_rel is None):
            raise ValueError("give exactly one of tolerance_abs (in the answer's unit) and "
                             "tolerance_rel (a fraction, e.g. 0.02)")
        return self

    def tolerance(self) -> float:
        """The largest accepted distance from `value`, in `unit`."""
        if self.tolerance_abs is not None:
            return self.tolerance_abs
        return self.tolerance_rel * abs(self.value)

    def accepts(self, x: float, reference: float | None = None) -> bool:
        """|x − reference| within the tolerance (reference: the key's value by default); a
        relative rounding slack of 1e-9 keeps decimal arithmetic (0.1 + 0.2) from deciding."""
        ref = self.value if reference is None else reference
        slack = 1e-9 * max(1.0, abs(ref), abs(x))
        return abs(x - ref) <= self.tolerance() + slack


class Sample(Strict):
    """One item. `id` is stable across releases of the task; records are paired on it."""

    id: str
    question: str
    choices: tuple[str, ...]
    target: int  # index into choices
    category: str = "all"
    risk: Risk = Risk.standard
    # The source this item shares with others (a passage, a case); items of one cluster are not
    # independent, and a task declaring `cluster_by: cluster` gets clustered standard errors.
    cluster: str | None = None
    rationale: str = ""
    # Reading-comprehension context (PubMedQA's abstract): `{passage}` in a prompt template.
    passage: str = ""
    # A prompt rendered elsewhere (the lm-eval bridge renders with lm-eval's own code): used
    # verbatim instead of the task's template, with these continuations (one per choice).
    prompt_text: str | None = None
    continuations: tuple[str, ...] | None = None
    # generate tasks without choices: the accepted answers (after extraction); `target` is then -1.
    answers: tuple[str, ...] = ()
    # generate tasks with `answer: numeric`: the number the answer must match, within a tolerance.
    numeric: NumericAnswer | None = None

    @field_validator("choices")
    @classmethod
    def _at_least_two(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) == 1:
            raise ValueError("a multiple-choice sample needs at least two choices")
        return v


class Passage(Strict):
    """One reference text (reference_text tasks): scored token by token, no labels."""

    id: str
    text: str
    category: str = "all"  # e.g. the writing style: discharge_summary, guideline, ...
    cluster: str | None = None


class PromptSpec(Strict):
    """How a sample becomes the identical text every variant scores.

    `template` is a str.format template over {question} and {choices} (the lettered option block);
    `continuation` says what is scored after it: the option letter (" A") or the option's own text
    (" <choice>", cloze style).
    """

    template: str = "{question}\n{choices}\nAnswer:"
    continuation: Literal["letter", "choice_text"] = "letter"
    letters: str = "ABCDEFGHIJ"


class HubSource(Strict):
    dataset: str
    config: str | None = None
    split: str


BENCHMARK_FORMATS = ("mmlu_csv", "medqa_jsonl", "medmcqa_jsonl", "pubmedqa_json", "headqa_json")


class SourceSpec(Strict):
    """Where the samples come from. `qeval_items` / `qeval_passages`: YAML files of this
    project's schemas, `path` relative to the task file. A benchmark format (see qeval/tasks/sources.py)
    reads the published file, `path` relative to the data directory (--data-dir)."""

    format: Literal["qeval_items", "qeval_passages", "mmlu_csv", "medqa_jsonl", "medmcqa_jsonl",
                    "pubmedqa_json", "headqa_json", "lm_eval"] = "qeval_items"
    path: str
    # PubMedQA: a file whose keys are the PMIDs of the split to keep (test_ground_truth.json).
    ids_path: str | None = None
    # The hub copy to fetch with --from-hub when the file is missing (never otherwise).
    hub: HubSource | None = None


class GenerationSpec(Strict):
    """generate tasks: greedy decoding, then the answer is extracted from the output text."""

    max_tokens: int = Field(256, ge=1, le=8192)
    stop: tuple[str, ...] = ()  # decoding stops at the first of these (not included in the output)
    # Python regex; the last match's group 1 (or the whole match) is the answer. Example for a
    # final letter after reasoning: "answer is \\(?([A-J])\\)?".
    answer_pattern: str = ""
    # How the extracted answer is graded. `text`: a letter of the item's options, or free text
    # against the accepted answers. `numeric`: the first number in it (digits, optional decimal
    # point, optional thousands commas: "1,000", "0.5", ".5") within the item's tolerance of its
    # value; items are then written in the numeric (dose) form (see tasks/clinical_dose_calc).
    answer: Literal["text", "numeric"] = "text"


class TaskSpec(Strict):
    id: str
    version: int = 1
    kind: str = "multiple_choice"  # a name in qeval.kinds.KINDS (checked where the task is loaded)
    description: str = ""
    source: SourceSpec
    prompt: PromptSpec = PromptSpec()
    # How a choice's score is formed from its token log-probs before argmax and softmax:
    # `sum` (total log-likelihood) or `mean_per_byte` (length-normalised, for cloze choices of
    # different lengths).
    # `mean_per_char` is lm-eval's acc_norm exactly: per character of the choice's own text, the
    # delimiter not counted.
    choice_score: Literal["sum", "mean_per_byte", "mean_per_char"] = "sum"
    chance_level: float | None = None  # None: 1/len(choices) per item
    # Cluster standard errors by this sample field (items sharing a passage or case).
    cluster_by: Literal["cluster", "category"] | None = None
    # reference_text: the baseline's next-token distribution is kept bounded, as its top-k
    # log-probs plus the tail's mass (KL over those k + 1 bins never exceeds the exact KL).
    baseline_top_k: int = Field(256, ge=1, le=4096)
    # reference_text: passages longer than this are scored in windows of this many tokens (each
    # window's first token is context only), so any engine's context length suffices.
    window_tokens: int = Field(1024, ge=16, le=32768)
    # reference_text: report the per-token KL also by position in the passage, in buckets that end
    # at these token positions ([0, e1), [e1, e2), ...; positions past the last edge form one more
    # bucket). Each bucket's mean has a bootstrap interval over passages. None: no buckets.
    position_buckets: tuple[int, ...] | None = None
    generation: GenerationSpec | None = None  # generate tasks only
    # Every item must carry `source`, `region` and `reviewed` (the built-in banks' audit trail;
    # tasks a user brings can leave it off and keep simpler item files).
    require_provenance: bool = False
    # multiple_choice with the options listed in the prompt: `cyclic` scores every item under each
    # of its k cyclic rotations of the options (same template; rotation r lists option r first),
    # and the item's choice scores are the mean over rotations of each option's log-softmax, so a
    # preference for a position (always "A") cancels out.
    rotations: Literal["none", "cyclic"] = "none"

    @field_validator("position_buckets")
    @classmethod
    def _increasing_edges(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None:
            if not v:
                raise ValueError("position_buckets needs at least one edge, e.g. [1024, 2048, 4096, 8192]")
            if v[0] < 1 or any(b <= a for a, b in zip(v, v[1:])):
                raise ValueError("position_buckets must be positive token positions in increasing "
                                 "order, e.g. [1024, 2048, 4096, 8192]")
        return v

    @model_validator(mode="after")
    def _rotations_need_listed_options(self) -> "TaskSpec":
        if self.rotations != "none":
            # (Whether the kind scores rotations at all: qeval.kinds.check_spec.)
            if "{choices}" not in self.prompt.template:
                raise ValueError(f"rotations: {self.rotations} needs a prompt template that lists "
                                 "the options ({choices}); without it every rotation is the same prompt")
        return self


class Task(Strict):
    """A loaded task: its spec, its samples and a hash of both (changes when any item changes)."""

    spec: TaskSpec
    samples: tuple[Sample, ...]
    content_hash: str
    path: str
    passages: tuple[Passage, ...] = ()  # reference_text tasks (samples is then empty)

    def size(self) -> int:
        return len(self.passages) if self.passages else len(self.samples)  # one of them is empty


# ---------------------------------------------------------------- variants


class Method(str, Enum):
    """The built-in quantization methods' names, for code and tests that name one. What each
    method is lives in its module, listed in qeval.methods.METHODS (the one source:
    VariantSpec.method accepts any name registered there)."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"  # bitsandbytes LLM.int8
    int8wo = "int8wo"  # torchao int8 weight-only
    fp8 = "fp8"  # FP8 e4m3 weights (per row) and dynamic per-token activations (torchao, or emulated)
    fp8wo = "fp8wo"  # FP8 e4m3 weight-only, per row (torchao)
    nf4 = "nf4"  # bitsandbytes 4-bit NormalFloat
    gguf = "gguf"  # a GGUF file on llama.cpp's kernels (exported and quantized, or brought)
    gptq = "gptq"  # gptqmodel GPTQ on a calibration set, or a GPTQ checkpoint brought
    awq = "awq"  # gptqmodel AWQ on a calibration set, or an AWQ checkpoint brought
    vllm = "vllm"  # scored by vLLM in its own environment (full precision, fp8, gptq/awq/ct)
    fake = "fake"  # statistics and gate tests only


class VariantSpec(Strict):
    name: str
    # A name in qeval.methods.METHODS, and the engine that scores it, a name in
    # qeval.engines.registry.ENGINES (both checked where specs are made: qeval.variants.spec,
    # and RunConfig).
    method: str
    backend: str = "hf"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    description: str = ""
    # The KV cache's dtype (`+kv=q8_0`, qeval/variants/spec.py), composable with any weight
    # variant whose engine can hold it; None: the engine's default cache. Left out of dumps and
    # of key() when None, so earlier results.json and record-store keys stay byte-identical.
    kv_cache: str | None = None

    @model_serializer(mode="wrap")
    def _without_default_kv(self, handler):
        out = handler(self)
        if self.kv_cache is None and isinstance(out, dict):
            out.pop("kv_cache", None)
        return out

    def key(self) -> str:
        """Canonical text of everything that changes the numbers this variant produces."""
        params = ",".join(f"{k}={self.params[k]}" for k in sorted(self.params))
        kv = "" if self.kv_cache is None else f"+kv={self.kv_cache}"
        return f"{self.backend}:{self.method}:{params}{kv}"


class BackendInfo(Strict):
    """What actually ran. Written beside every result so nobody has to guess."""

    variant: str
    backend: str
    device: str
    requested_dtype: str
    compute_dtype: str
    kernel: str  # e.g. "bitsandbytes Linear8bitLt x210; torch Linear x1"
    weight_bytes: int
    versions: dict[str, str]
    notes: tuple[str, ...] = ()
    # Parameters of the unquantized model (full-precision variants only: packed quantized tensors
    # do not count weights); the denominator of every variant's bits per weight.
    params: int | None = None
    # The KV cache's bytes as the engine allocated them (variants with `+kv=`; measured, see
    # the engine). Left out of dumps when None, so earlier results.json stay byte-identical.
    kv_cache_bytes: int | None = None

    @model_serializer(mode="wrap")
    def _without_unmeasured_kv(self, handler):
        out = handler(self)
        if self.kv_cache_bytes is None and isinstance(out, dict):
            out.pop("kv_cache_bytes", None)
        return out


# ---------------------------------------------------------------- efficiency


class Artefact(Strict):
    """What must be on disk to run a variant the way qeval ran it."""

    bytes: int | None  # None: nothing to measure (fake backend)
    description: str


class SpeedPoint(Strict):
    batch: int
    prefill_tok_s: float | None  # prompt tokens per second (None: not measurable on this engine)
    decode_tok_s: float | None  # generated tokens per second, all sequences of the batch together


class EfficiencyProbe(Strict):
    """The speed probe run on every variant: a fixed neutral prompt (no task text), one prefill
    and `new_tokens` greedy steps, at batch 1 and at `batch`; the best of `repeats` after a warm-up."""

    prompt_tokens: int = Field(128, ge=8, le=8192)
    new_tokens: int = Field(32, ge=1, le=1024)
    batch: int = Field(8, ge=2, le=256)
    repeats: int = Field(2, ge=1, le=20)


class Efficiency(Strict):
    """What a variant costs, measured in this run (timings are comparable only within one run)."""

    artefact: Artefact
    load_s: float  # opening the variant from its artefact (making the artefact excluded)
    memory_kind: str  # what peak_memory_bytes measures
    memory_before_bytes: int | None  # the process before loading the variant
    load_peak_bytes: int | None  # the process's peak while loading (quantize-on-load transients)
    peak_memory_bytes: int | None  # the process's peak after loading: scoring and the speed probe
    speed: tuple[SpeedPoint, ...]
    scored_here: bool  # False: records were reused, only the speed probe ran


# ---------------------------------------------------------------- records


class ItemRecord(Strict):
    """One sample scored by one variant. Hashes and numbers only."""

    schema_version: int = RECORD_SCHEMA
    task: str
    sample_id: str
    variant: str
    prompt_hash: str  # sha256 of the context token ids and every choice's continuation ids
    choice_logprobs: tuple[float, ...]  # summed log-prob of each continuation
    choice_scores: tuple[float, ...]  # the task's choice_score; argmax = prediction
    prediction: int
    target: int
    correct: bool
    category: str
    risk: Risk
    # Tasks with rotated options: the option (index in the item's own order) each rotation picked,
    # rotation r listing option r first. choice_logprobs and choice_scores are then means over the
    # rotations, in the item's own order.
    rotation_predictions: tuple[int, ...] | None = None


class TextRecord(Strict):
    """One reference passage scored by a candidate against the baseline's stored distributions.
    Numbers only: per-token KL, never token ids or text."""

    schema_version: int = RECORD_SCHEMA
    task: str
    sample_id: str
    variant: str
    prompt_hash: str
    n_tokens: int  # scored positions (every token after the first)
    kl: tuple[float, ...]  # KL(baseline ‖ candidate) per position, nats (top-k + tail bins)
    same_top: int  # positions where both put their highest probability on the same token
    nll_baseline: float  # −Σ log p(reference token), baseline
    nll_candidate: float
    category: str
    cluster: str | None = None


StopReason = Literal["stop", "eos", "max_tokens"]


class GenerationRecord(Strict):
    """One generate-task sample decoded greedily by one variant. Hashes and numbers only: never
    the output text (sha256 of it, of its normalised form and of the extracted answer)."""

    schema_version: int = RECORD_SCHEMA
    task: str
    sample_id: str
    variant: str
    prompt_hash: str  # sha256 of the prompt token ids
    output_hash: str  # sha256 of the output text (cut before the first stop string)
    normalised_hash: str  # sha256 of the output lowercased, punctuation stripped, spaces collapsed
    answer_hash: str | None  # sha256 of the normalised extracted answer; None: the pattern did not match
    # numeric tasks: the number read from the answer (a dose figure, never text); None otherwise
    answer_value: float | None = None
    prediction: int  # choice tasks: index of the extracted letter; -1 when no valid letter (or free-form)
    target: int  # choice tasks: the key's index; -1 for free-form answers
    n_choices: int  # 0 for free-form answers
    correct: bool
    n_output_tokens: int  # tokens generated (the end-of-sequence token included when it ended the output)
    stop_reason: StopReason
    category: str
    risk: Risk
    cluster: str | None = None


# ---------------------------------------------------------------- comparison and verdict


class Decision(str, Enum):
    GO = "GO"
    NO_GO = "NO_GO"
    INCONCLUSIVE = "INCONCLUSIVE"


EXIT_CODES = {Decision.GO: 0, Decision.NO_GO: 1, Decision.INCONCLUSIVE: 3}
EXIT_BAD_INPUT = 2


class Interval(Strict):
    estimate: float
    low: float
    high: float
    level: float = 0.95
    method: str


class CategoryBreakdown(Strict):
    category: str
    n: int
    baseline_accuracy: float
    candidate_accuracy: float
    delta: float
    flips_correct_to_wrong: int
    flips_wrong_to_correct: int


class PairedItems(Strict):
    """Per-item paired outcomes, in sample-id order: what the gate recomputes bounds from (at the
    one-sided and multiplicity-corrected levels its policy asks for). Numbers and ids only."""

    sample_ids: tuple[str, ...]
    baseline_correct: tuple[bool, ...]
    candidate_correct: tuple[bool, ...]
    choice_kl: tuple[float, ...]
    agree: tuple[bool, ...]
    high_risk: tuple[bool, ...]
    clusters: tuple[str, ...] | None = None


class RiskBreakdown(Strict):
    """Accounting for `risk: high` items, by sample id (never by text)."""

    n: int
    baseline_accuracy: float | None
    candidate_accuracy: float | None
    correct_to_wrong: tuple[str, ...]
    wrong_to_correct: tuple[str, ...]


class RotationStats(Strict):
    """One variant's answers under rotated options (tasks with `rotations: cyclic`)."""

    variant: str
    n: int  # items
    rotations: int  # (item, rotation) scorings
    accuracy: float  # of the rotation-averaged scores: the record's prediction
    mean_rotation_accuracy: float  # share of (item, rotation) scorings that picked the key
    all_rotations_accuracy: float  # items answered correctly under every rotation (CircularEval)
    consistency: Interval  # items whose picked option is the same under every rotation, Wilson CI
    # Share of all scorings that picked the option shown at each position (A, B, ...): an engine
    # with a position preference piles up on one letter.
    position_shares: tuple[float, ...]


class RotationComparison(Strict):
    """Rotation consistency of both variants, paired per item."""

    baseline: RotationStats
    candidate: RotationStats
    consistency_delta: Interval  # candidate − baseline share of consistent items, paired
    mean_rotation_accuracy_delta: Interval  # candidate − baseline, per-item means paired


class TaskComparison(Strict):
    """Paired baseline-vs-candidate numbers for one task. Pure function of the two record lists."""

    task: str
    candidate: str
    kind: Literal["multiple_choice"] = "multiple_choice"
    n: int
    baseline_accuracy: float
    candidate_accuracy: float
    delta: Interval  # candidate - baseline accuracy, Tango score CI (Rao–Scott when clustered)
    flips_correct_to_wrong: int
    flips_wrong_to_correct: int
    discordance: float  # share of items where exactly one side is correct
    mcnemar_p: float
    choice_kl_mean: Interval  # KL(baseline || candidate) over the softmax of choice scores, nats
    choice_kl_p95: Interval  # 95th percentile of per-item choice-KL, order-statistics CI
    choice_kl_p99: float
    choice_kl_max: float
    top1_agreement: Interval  # share of items where both pick the same choice, Wilson CI
    baseline_chance: float  # expected accuracy of random guessing
    baseline_above_chance_p: float  # one-sided exact test that baseline accuracy > chance
    # The best answer-cue heuristic (qeval/item_audit.py: longest option, last option, ...) on
    # these items, its accuracy, and the one-sided exact binomial p that the baseline beats it.
    # None for items without options. The gate's chance guard needs both p-values significant.
    cue_heuristic: str | None = None
    cue_accuracy: float | None = None
    baseline_above_cue_p: float | None = None
    cluster_by: str | None = None
    n_clusters: int | None = None
    design_effect: float = 1.0  # of the per-item accuracy differences; 1 when not clustered
    high_risk: RiskBreakdown
    categories: tuple[CategoryBreakdown, ...]
    rotation: RotationComparison | None = None  # tasks scored under rotated options
    items: PairedItems = Field(exclude=True, repr=False)


class TextUnits(Strict):
    """Per-unit sums (a unit is a passage, or a cluster of passages): what the gate recomputes
    its bootstrap bounds from. Numbers only."""

    ids: tuple[str, ...]
    tokens: tuple[int, ...]
    kl_sum: tuple[float, ...]
    same_top: tuple[int, ...]
    delta_nll: tuple[float, ...]  # candidate − baseline summed negative log-likelihood


class EngineFloor(Strict):
    """What the engine alone costs a GGUF candidate, on the same tokens: the unquantized (F32)
    GGUF of the baseline's weights, scored on llama.cpp, against the baseline. A GGUF candidate's
    KLD up to this is llama.cpp's own arithmetic and conversion, not its quantization."""

    variant: str  # the F32 GGUF variant that measured it, e.g. gguf:f32
    kld_mean: Interval
    same_top: Interval


class PositionBucket(Strict):
    """Per-token KL of the tokens at positions [start, end) of their passage (position: the
    number of tokens before the predicted one). The interval resamples passages, never tokens."""

    start: int
    end: int | None  # None: every position from `start` on
    n: int  # passages with tokens in this bucket
    n_tokens: int
    kld_mean: Interval  # nats per token, KL(baseline ‖ candidate)
    kld_p99: float


class TextComparison(Strict):
    """Token-level, label-free comparison on reference text, following llama.cpp's
    --kl-divergence statistics. Intervals resample passages (or their clusters), never tokens:
    tokens of one passage are not independent."""

    task: str
    candidate: str
    kind: Literal["reference_text"] = "reference_text"
    n: int  # passages
    n_units: int  # resampling units (passages, or clusters of passages)
    n_tokens: int
    top_k: int  # baseline distributions kept as top-k + tail
    kld_mean: Interval  # nats per token, KL(baseline ‖ candidate)
    kld_se: float  # standard error of the mean, passages as clusters
    kld_median: float
    kld_p90: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    same_top: Interval  # share of positions where both rank the same token first
    delta_log_ppl: Interval  # log PPL(candidate) − log PPL(baseline)
    ppl_baseline: float
    ppl_candidate: float
    ppl_ratio: Interval  # PPL(candidate) / PPL(baseline) = exp(Δ log PPL)
    engine_floor: EngineFloor | None = None  # GGUF candidates on llama.cpp: the F32 GGUF's numbers
    # Tasks with `position_buckets`: the KL by position in the passage (left out when None, so
    # tasks without buckets write what they always wrote).
    by_position: tuple[PositionBucket, ...] | None = Field(None, exclude_if=lambda v: v is None)
    units: TextUnits = Field(exclude=True, repr=False)


class GenerationComparison(Strict):
    """Paired baseline-vs-candidate numbers for one generate task: accuracy of the extracted
    answers, and label-free agreement of the answers and outputs themselves."""

    task: str
    candidate: str
    kind: Literal["generate"] = "generate"
    n: int
    baseline_accuracy: float
    candidate_accuracy: float
    delta: Interval  # candidate − baseline accuracy, Tango score CI (Rao–Scott when clustered)
    flips_correct_to_wrong: int
    flips_wrong_to_correct: int
    discordance: float
    mcnemar_p: float
    # Same extracted answer on both sides (two failed extractions count as the same), Wilson CI.
    answer_agreement: Interval
    exact_output_agreement: Interval  # byte-identical output text
    normalised_output_agreement: Interval  # identical after lowercasing, punctuation and spaces
    baseline_extraction_failure: Interval  # share of outputs where the answer pattern did not match
    candidate_extraction_failure: Interval
    baseline_mean_output_tokens: float
    candidate_mean_output_tokens: float
    baseline_stop_reasons: dict[str, int]  # stop / eos / max_tokens counts
    candidate_stop_reasons: dict[str, int]
    baseline_chance: float
    baseline_above_chance_p: float
    cue_heuristic: str | None = None  # as in TaskComparison
    cue_accuracy: float | None = None
    baseline_above_cue_p: float | None = None
    cluster_by: str | None = None
    n_clusters: int | None = None
    design_effect: float = 1.0
    high_risk: RiskBreakdown
    categories: tuple[CategoryBreakdown, ...]
    # agree = same extracted answer; choice_kl is empty (no choice distribution is scored).
    items: PairedItems = Field(exclude=True, repr=False)


class RuleResult(Strict):
    rule: str
    decision: Decision
    reason: str


class TaskVerdict(Strict):
    task: str
    candidate: str
    decision: Decision
    rules: tuple[RuleResult, ...]


class Verdict(Strict):
    decision: Decision
    per_candidate: dict[str, Decision]
    tasks: tuple[TaskVerdict, ...]
    reasons: tuple[str, ...]
    # How per-task verdicts were combined and how multiplicity was handled, in words.
    combination: str = ""


class PowerRow(Strict):
    """Minimum detectable accuracy drop for one task (and candidate), before anything runs."""

    task: str
    candidate: str | None  # None: the same for every candidate (no earlier run to tell them apart)
    n: int
    # Items the detectable drop is computed on: n, or n²/Σ(cluster size²) when the task declares
    # clusters (items of one cluster counted as one observation: the worst case, ρ = 1).
    n_effective: float | None = None
    # `high_risk`: the row of the risk: high items alone, against high_risk_accuracy_margin.
    subset: Literal["all", "high_risk"] = "all"
    discordance: float
    discordance_source: str
    mde: float  # at the policy's alpha (two-sided) and power
    margin: float | None
    underpowered: bool  # mde > margin: a real drop of `margin` would likely go unseen
    n_needed: int | None  # items for mde = margin


# ---------------------------------------------------------------- reference text


@dataclass(frozen=True)
class BaselineDist:
    """One window's bounded baseline distributions (in memory only)."""

    top_ids: np.ndarray  # (positions, k) int32, highest probability first
    top_logprobs: np.ndarray  # (positions, k) float32
    tail_mass: np.ndarray  # (positions,) float64: probability outside the top k
    reference_logprob: np.ndarray  # (positions,) float64: log p(the token that follows)
