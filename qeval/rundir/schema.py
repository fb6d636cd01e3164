"""The run document, typed: results.json (`qeval.results/2`), efficiency.json (`qeval.efficiency/1`)
and paired.json (`qeval.paired/1`) as pydantic models. A leaf: pydantic, the standard library and
qeval.types only, so reading a run never loads the pipeline.

Each file is written as `json.dumps(doc.model_dump(mode="json", exclude_unset=True), indent=…,
sort_keys=True)` (see `dump`): a field that was never set stays absent, exactly as the dicts these
models replace left it out; a field set to None is written as null. Parsing a file and dumping it
again gives the same bytes (tests/test_run_schema.py).

`python -m qeval.rundir.schema DIR` writes the JSON Schemas of the three files into DIR
(the committed copies live in schemas/; a test regenerates and compares them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from qeval.types import (
    BackendInfo,
    Decision,
    GenerationComparison,
    PairedItems,
    PowerRow,
    RotationStats,
    RuleResult,
    SpeedPoint,
    TaskComparison,
    TextComparison,
    TextUnits,
)

RESULTS_SCHEMA = "qeval.results/2"
EFFICIENCY_SCHEMA = "qeval.efficiency/1"
PAIRED_SCHEMA = "qeval.paired/1"
RESULTS_FILE = "results.json"
EFFICIENCY_FILE = "efficiency.json"
PAIRED_FILE = "paired.json"

Number = Union[int, float]  # kept as written: an int stays an int, a float a float


class Doc(BaseModel):
    """A part of the run document: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Tagged(Doc):
    """A whole file: its `schema` tag is always written, given or defaulted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def model_post_init(self, context: Any) -> None:
        self.__pydantic_fields_set__.add("schema_")


# ---------------------------------------------------------------- comparisons as results.json holds them
# results.json keeps each comparison's summary numbers; the per-item (per-passage) parts the gate
# recomputes bounds from live in paired.json, so `items` / `units` are optional and never dumped.


class ChoiceSummary(TaskComparison):
    items: SkipJsonSchema[PairedItems | None] = Field(None, exclude=True, repr=False)


class GenerationSummary(GenerationComparison):
    items: SkipJsonSchema[PairedItems | None] = Field(None, exclude=True, repr=False)


class TextSummary(TextComparison):
    units: SkipJsonSchema[TextUnits | None] = Field(None, exclude=True, repr=False)


class _Judged(BaseModel):
    """What results.json adds to a comparison: the verdict of the policy it was judged with."""

    verdict: Decision
    rules: tuple[RuleResult, ...]


class JudgedChoice(ChoiceSummary, _Judged):
    pass


class JudgedGeneration(GenerationSummary, _Judged):
    pass


class JudgedText(TextSummary, _Judged):
    pass


JudgedComparison = Annotated[Union[JudgedChoice, JudgedGeneration, JudgedText], Field(discriminator="kind")]
FloorComparison = Annotated[Union[ChoiceSummary, GenerationSummary, TextSummary], Field(discriminator="kind")]
AnyComparison = Union[JudgedChoice, JudgedGeneration, JudgedText, ChoiceSummary, GenerationSummary, TextSummary]


# ---------------------------------------------------------------- results.json


class ModelInfo(Doc):
    spec: str
    source: str
    fingerprint: str
    notes: list[str] = []


class RunTaskInfo(Doc):
    """A task of the run: id, version, kind, items scored, content hash and file."""

    id: str
    version: int = 1
    kind: Literal["multiple_choice", "reference_text", "generate"] = "multiple_choice"
    n: int
    content_hash: str
    path: str


class NoiseFloor(Doc):
    variant: BackendInfo
    path: str | None
    comparisons: list[FloorComparison]


class Rejudged(Doc):
    """`qeval gate`: the run and the verdict this document was judged again from."""

    run_dir: str
    verdict: Decision
    exit_code: int
    policy: dict[str, Any] | None
    created_at: str | None
    at: str


class RunResults(Tagged):
    """results.json. `efficiency` is the content of efficiency.json (less its schema) when the run
    measured it: written beside results.json, never inside it (timings vary from run to run)."""

    schema_: Literal["qeval.results/2"] = Field(RESULTS_SCHEMA, alias="schema")
    qeval_version: str
    created_at: str
    verdict: Decision
    exit_code: int
    per_candidate: dict[str, Decision]
    reasons: list[str]
    model: ModelInfo
    config: dict[str, Any]  # the RunConfig, as dumped (qeval/run/config.py)
    policy: dict[str, Any]  # the GatePolicy's fields and the file it came from (qeval/gate.py)
    baseline: BackendInfo
    candidates: list[BackendInfo]
    tasks: list[RunTaskInfo]
    comparisons: list[JudgedComparison]
    combination: str = ""
    rotation: dict[str, dict[str, RotationStats]] = {}
    power: list[PowerRow] = []
    engine_floor: BackendInfo | None = None
    noise_floor: NoiseFloor | None = None
    artefacts: dict[str, dict[str, Any]] | None = None  # GPTQ/AWQ: how made, calibration overlap
    skipped_tasks: list[str] | None = None
    rejudged: Rejudged | None = None
    # Not in results.json: efficiency.json's table, merged in by load_run (and left out of the schema).
    efficiency: SkipJsonSchema[EfficiencyTable | None] = Field(None, exclude=True)

    def as_dict(self) -> dict[str, Any]:
        """results.json as a plain dict, efficiency.json's table (when measured) under
        `efficiency`: for readers that still index by key."""
        out = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if self.efficiency is not None:
            out["efficiency"] = self.efficiency.model_dump(mode="json", exclude_unset=True)
        return out

    def comparison(self, candidate: str, task: str) -> AnyComparison | None:
        return next((c for c in self.comparisons if c.candidate == candidate and c.task == task), None)

    def efficiency_row(self, variant: str) -> EfficiencyRow | None:
        if self.efficiency is None:
            return None
        return next((r for r in self.efficiency.variants if r.variant == variant), None)


# ---------------------------------------------------------------- efficiency.json


class Probe(Doc):
    prompt_tokens: int
    new_tokens: int
    batch: int
    repeats: int
    batch_sizes: list[int]
    torch_threads: int | None
    cpu_count: int | None
    text: str


class WorstDelta(Doc):
    estimate: float
    low: float
    high: float


class Quality(Doc):
    verdict: Decision
    worst_task: str | None
    worst_delta: WorstDelta | None


class EfficiencyRow(Doc):
    variant: str
    role: Literal["baseline", "candidate", "noise_floor"]
    backend: str
    device: str
    params: int | None
    bits_per_weight: Number | None
    artefact_bytes: int | None
    artefact: str
    weight_bytes: int
    predicted_weight_bytes: int | None
    plan_format: str | None = None  # None also in runs written before the planner column
    kv_cache_bytes: int | None = None  # measured; only for variants with `+kv=` (KV-cache dtype)
    peak_memory_bytes: int | None
    load_peak_bytes: int | None = None
    process_peak_bytes: int | None = None
    memory_kind: str
    load_s: Number
    scored_here: bool
    speed: list[SpeedPoint]
    vs_baseline: dict[str, Number | None] | None = None
    quality: Quality | None = None


class EfficiencyTable(Doc):
    """What each variant buys (memory, speed) beside what it costs (quality), measured in one run."""

    probe: Probe
    variants: list[EfficiencyRow]


class EfficiencyDoc(EfficiencyTable, Tagged):
    """efficiency.json: the table with its schema tag."""

    schema_: Literal["qeval.efficiency/1"] = Field(EFFICIENCY_SCHEMA, alias="schema")


# ---------------------------------------------------------------- paired.json


class PairedEntry(Doc):
    """Per-item outcomes (multiple choice, generate) or per-unit sums (reference text) of one
    comparison: what `qeval gate` recomputes its bounds from. Ids and numbers only."""

    task: str
    candidate: str
    kind: Literal["multiple_choice", "reference_text", "generate"]
    items: PairedItems | None = None
    units: TextUnits | None = None


class PairedDoc(Tagged):
    schema_: Literal["qeval.paired/1"] = Field(PAIRED_SCHEMA, alias="schema")
    comparisons: list[PairedEntry]
    noise_floor: list[PairedEntry]


RunResults.model_rebuild()


# ---------------------------------------------------------------- bytes


def dump(doc: BaseModel, *, indent: int | None = 1) -> str:
    """The file's text: set fields only, keys sorted, one trailing newline."""
    data = doc.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return json.dumps(data, indent=indent, sort_keys=True) + "\n"


SCHEMAS = {"results.schema.json": RunResults, "efficiency.schema.json": EfficiencyDoc,
           "paired.schema.json": PairedDoc}


def json_schemas() -> dict[str, str]:
    """File name → the JSON Schema text of each run-directory file (validation mode: what a
    reader accepts)."""
    return {name: json.dumps(model.model_json_schema(by_alias=True), indent=1, sort_keys=True) + "\n"
            for name, model in SCHEMAS.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m qeval.rundir.schema DIR  (writes results/efficiency/paired.schema.json)",
              file=sys.stderr)
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in json_schemas().items():
        (folder / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
