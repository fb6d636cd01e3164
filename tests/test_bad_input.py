"""Issue 8, bad input: every case below is one `qeval compare` run that stops with exit code 2 and
exactly one stderr line `qeval: error: ...` saying what is wrong, where (file, line, item,
variant) and how to fix it, leaves no run directory and no `.partial` file behind, and never
echoes item text (questions and choices are PHI in a clinical deployment).

The 15 cases of the issue, one test each (some parametrized over variants of the same case):

 1. unknown variant or method ............ test_01_unknown_variant_or_method
 2. malformed task YAML, unknown fields .. test_02_malformed_yaml_and_unknown_fields
 3. task file missing required fields .... test_03_missing_required_fields
 4. empty task ........................... test_04_empty_task
 5. duplicate sample ids ................. test_05_duplicate_sample_ids
 6. answer not among the choices ......... test_06_answer_not_among_choices (qeval items),
                                          test_06b_benchmark_answer_key_not_among_options
 7. missing data file .................... test_07_missing_data_file
 8. corrupt or truncated GGUF ............ test_08_corrupt_or_truncated_gguf
 9. GGUF tokenizer differs from baseline . test_09_gguf_tokenizer_differs_from_baseline
10. model path that does not exist ....... test_10_model_path_does_not_exist
11. candidate vocabulary differs ......... test_11_candidate_vocabulary_differs
12. NaN or inf log-probs ................. test_12_nan_or_inf_log_probs
13. GPU-only option without a GPU ........ test_13_gpu_only_option_without_gpu
14. group size does not divide a width ... test_14_group_size_does_not_divide_layer_width
15. out of memory while loading .......... test_15_out_of_memory_while_loading (a subprocess
                                          under a real address-space limit);
                                          test_15b_out_of_memory_while_scoring_is_explained_too

Issue 23 (the right words, and everything before model time):
16. a flag out of range or not a number . test_16_bad_flag_values_are_one_line
17. --tasks naming no task ............... test_17_tasks_flag_naming_no_task
18. a directory where a GGUF is expected . test_18_directories_where_a_gguf_file_is_expected
19. empty question or option, duplicates . test_19_item_content
20. unknown prompt-template field ........ test_20_prompt_template_fields_before_model_time
21. the LAST candidate infeasible ........ test_21_last_candidate_infeasible_scores_nothing
22. short names for brought files, the closing line with --no-efficiency
                                          test_22_brought_files_have_short_names_and_...

Other bad-input tests stay where they are (tests/test_cli.py, tests/test_tasks.py,
tests/test_sources.py, tests/test_gguf.py, tests/test_gptq_awq.py); these are the issue's list in
one place, each through the command line as a user meets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qeval.cli import app

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

runner = CliRunner()
PHI = "ZQXPHI"  # in every question and choice of the test tasks: must never reach an error line
CORPUS = ["The patient was given 500 mg of metformin twice daily.",
          "Blood pressure 142/88 mmHg; review in 2 weeks.",
          "Chest pain radiating to the left arm, sweating and nausea.",
          "Renal function: eGFR 42, creatinine 130 umol/L.\n\n1. Stop NSAIDs\n2. Recheck in 48 hours"]
OTHER_CORPUS = ["Quarterly revenue rose by seven percent in the northern region.",
                "The committee will vote on the harbour proposal next Tuesday.",
                "Wind turbines along the ridge produced a record output in March."]


# ------------------------------------------------------------------ helpers


def _checkpoint(path: Path, corpus=CORPUS, vocab: int = 320, *, hidden: int = 64,
                intermediate: int = 128, layers: int = 2):
    """A tiny random Llama with a byte-level BPE trained on `corpus` (no download)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.save_pretrained(path)
    cfg = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
        eos_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return fast, model.eval()


def _items(n: int = 6, **override) -> list[dict]:
    out = []
    for i in range(n):
        item = {"id": f"m{i}", "question": f"{PHI} patient {i}: which drug?",
                "choices": [f"{PHI} metformin", f"{PHI} aspirin"], "answer": "AB"[i % 2],
                "rationale": "r", "risk": "standard"}
        out.append({**item, **override} if i == 0 else item)
    return out


def _task_dir(root: Path, items: list[dict] | str | None = None, spec: dict | str | None = None,
              task_id: str = "mini") -> Path:
    """tasks/<task_id>/{<task_id>.yaml, items/a.yaml} under root; strings are written verbatim."""
    folder = root / "tasks" / task_id
    (folder / "items").mkdir(parents=True, exist_ok=True)
    items = _items() if items is None else items
    (folder / "items" / "a.yaml").write_text(
        items if isinstance(items, str) else json.dumps({"area": "x", "items": items}))
    spec = {"id": task_id, "kind": "multiple_choice",
            "source": {"format": "qeval_items", "path": "items"}} if spec is None else spec
    (folder / f"{task_id}.yaml").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return root / "tasks"


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    """Point qeval at a tasks directory of this test (as tests/test_generate.py does); returns a
    function that writes the task and gives back its directory."""
    import qeval.settings

    real = qeval.settings.resource_dir
    root = tmp_path / "project"

    def make(items=None, spec=None, task_id="mini"):
        folder = _task_dir(root, items, spec, task_id)
        monkeypatch.setattr(qeval.settings, "resource_dir",
                            lambda name: folder if name == "tasks" else real(name))
        return folder / task_id

    make()
    return make


def _partials() -> list[Path]:
    """Half-made models or artefacts in the cache. (The record store's per-task journals,
    records/<key>.partial.jsonl, are its resume mechanism, not results: not counted here.)"""
    cache = Path(os.environ["QEVAL_CACHE"])
    if not cache.is_dir():
        return []
    return [p for p in cache.rglob("*") if "partial" in p.name
            and not (p.parent.name == "records" and p.name.endswith(".partial.jsonl"))]


def _check_line(res, out: Path, tmp_path: Path, must: tuple[str, ...]) -> str:
    """The issue's contract for bad input."""
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qeval: error:"), res.stderr
    line = lines[0]
    for m in must:
        assert m in line, f"{m!r} not in {line!r}"
    assert PHI not in res.output and PHI not in res.stderr, line  # never echo item text
    assert not out.exists(), "a run directory was left behind"
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name or p.name.startswith(".run")]
    assert not _partials(), _partials()
    print(line)  # shown with pytest -s: the lines a user would read
    return line


def _bad(tmp_path: Path, args: list[str], *must: str) -> str:
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", "--out", str(out), "--n-boot", "200", "--no-efficiency",
                              *args])
    return _check_line(res, out, tmp_path, must)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The baseline checkpoint and its odd relatives, built once for the module."""
    root = tmp_path_factory.mktemp("bad-input-models")
    _checkpoint(root / "base")
    return root


def _tiny_args(models: Path, *candidates: str) -> list[str]:
    return ["--model", str(models / "base"), "--base", "fp32", "--tasks", "mini",
            "--candidates", ",".join(candidates or ("bf16",))]


# ------------------------------------------------------------------ 1-7: variants and task files


@pytest.mark.parametrize("args,must", [
    (["--candidates", "int9"], ("unknown variant 'int9'", "choose from", "int8wo")),
    (["--candidates", "gptq:methd=rtn"], ("variant 'gptq:methd=rtn'", "unknown parameter(s) methd",
                                          "gptq takes")),
    (["--candidates", "gguf:q9_k"], ("variant 'gguf:q9_k'", "unknown GGUF type 'q9_k'", "choose from")),
    (["--base", "nf4"], ("--base 'nf4'", "baseline must be one of")),
    (["--executor", "dask"], ("--executor 'dask'", "choose local or ray")),
    (["--ray-address", "auto"], ("--ray-address is for --executor ray", "add --executor ray")),
])
def test_01_unknown_variant_or_method(tmp_path, tasks, args, must):
    # (tests/test_cli.py::test_bad_input_exits_2_with_one_line covers more spellings.)
    _bad(tmp_path, ["--tasks", "mini", *args], *must)


@pytest.mark.parametrize("where,text,must", [
    # the task definition itself is broken YAML: file and line
    ("spec", "id: mini\nkind: [multiple_choice\nsource: {format: qeval_items, path: items}\n",
     ("mini.yaml line", "not valid YAML", "fix the syntax")),
    # an item file is broken YAML: file and line
    ("items", "area: x\nitems:\n  - id: [unclosed\n",
     ("a.yaml line 4", "not valid YAML", "flow sequence that starts at line 3", "fix the syntax")),
    # an unknown field in an item: file, item id, field, the allowed fields
    ("items", json.dumps({"area": "x", "items": _items(colour="red")}),
     ("a.yaml", "item 'm0'", "unknown field 'colour'", "allowed")),
    # an unknown field in the task definition: file, field, the allowed fields
    ("spec", json.dumps({"id": "mini", "kind": "multiple_choice", "promt": {"template": "x"},
                         "source": {"format": "qeval_items", "path": "items"}}),
     ("mini.yaml", "unknown field 'promt'", "allowed")),
    # a wrong value: file, item id, field and what it must be
    ("items", json.dumps({"area": "x", "items": _items(risk="severe")}),
     ("a.yaml", "item 'm0'", "risk", "'high' or 'standard'")),
])
def test_02_malformed_yaml_and_unknown_fields(tmp_path, tasks, where, text, must):
    tasks(items=text) if where == "items" else tasks(spec=text)
    _bad(tmp_path, ["--tasks", "mini", "--candidates", "bf16", "--base", "fp32"], *must)


@pytest.mark.parametrize("where,drop,must", [
    ("items", "rationale", ("a.yaml", "item 'm0'", "missing required field 'rationale'", "_SCHEMA.md")),
    ("items", "answer", ("a.yaml", "item 'm0'", "missing required field 'answer'")),
    ("spec", "source", ("mini.yaml", "missing required field 'source'")),
    ("area", "area", ("a.yaml", "missing required field 'area'")),
])
def test_03_missing_required_fields(tmp_path, tasks, where, drop, must):
    if where == "items":
        items = _items()
        del items[0][drop]
        tasks(items=items)
    elif where == "spec":
        tasks(spec={"id": "mini", "kind": "multiple_choice"})
    else:
        tasks(items=json.dumps({"items": _items()}))
    _bad(tmp_path, ["--tasks", "mini", "--candidates", "bf16", "--base", "fp32"], *must)


@pytest.mark.parametrize("text,must", [
    (json.dumps({"area": "x", "items": []}), ("task 'mini' has no items", "a.yaml", "add items")),
    ("", ("a.yaml", "the file is empty", "`items:`", "_SCHEMA.md")),
])
def test_04_empty_task(tmp_path, tasks, text, must):
    tasks(items=text)
    _bad(tmp_path, ["--tasks", "mini", "--candidates", "bf16", "--base", "fp32"], *must)


def test_05_duplicate_sample_ids(tmp_path, tasks):
    folder = tasks(items=_items(4))
    (folder / "items" / "b.yaml").write_text(json.dumps({"area": "y", "items": _items(2)}))
    _bad(tmp_path, ["--tasks", "mini", "--candidates", "bf16", "--base", "fp32"],
         "duplicate sample id 'm0'", "a.yaml", "b.yaml", "unique")


@pytest.mark.parametrize("answer,must", [
    ("C", ("a.yaml", "item 'm0'", "answer 'C'", "not among its choices (A, B)", "letter")),
    (f"{PHI} metformin", ("a.yaml", "item 'm0'", "not among its choices (A, B)", "letter")),
])
def test_06_answer_not_among_choices(tmp_path, tasks, answer, must):
    tasks(items=_items(answer=answer))
    _bad(tmp_path, ["--tasks", "mini", "--candidates", "bf16", "--base", "fp32"], *must)


def test_06b_benchmark_answer_key_not_among_options(tmp_path, monkeypatch):
    """The same in a benchmark's original file: file and line, and the key's text not shown."""
    monkeypatch.delenv("QEVAL_DATA_DIR", raising=False)
    f = tmp_path / "data" / "medqa" / "questions" / "US" / "4_options" / "phrases_no_exclude_test.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"question": f"{PHI} which drug?", "options": {"A": f"{PHI} a", "B": f"{PHI} b"},
                             "answer_idx": f"{PHI} a"}) + "\n")
    _bad(tmp_path, ["--tasks", "medqa", "--data-dir", str(tmp_path / "data")], f"{f} line 1",
         "'answer_idx' a text of 8 characters (not shown) is not one of the option letters A, B")


def test_07_missing_data_file(tmp_path, monkeypatch):
    # (tests/test_sources.py covers malformed benchmark files line by line.)
    monkeypatch.delenv("QEVAL_DATA_DIR", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    _bad(tmp_path, ["--tasks", "medqa", "--data-dir", str(data)],
         "task 'medqa'", str(data / "medqa"), "does not exist", "--data-dir", "--skip-missing-data")


# ------------------------------------------------------------------ 8-11: model files


def test_08_corrupt_or_truncated_gguf(tmp_path, tasks, models):
    from qeval.quantize.gguf import export_gguf

    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"NOPE" + b"\0" * 64)
    # as the model (tests/test_cli.py::test_corrupt_gguf_is_bad_input too)
    _bad(tmp_path, ["--model", str(bogus), "--tasks", "mini"], str(bogus), "not a GGUF file", "check the path")
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 40)
    _bad(tmp_path, ["--model", str(header_only), "--tasks", "mini"], str(header_only), "cannot read this GGUF",
         "truncated or damaged", "copy or download it again")
    # as a candidate brought with gguf=: the first bytes, then a file cut short
    good = tmp_path / "good.gguf"
    export_gguf(models / "base", good, dtype="f32", pre="gpt-2")
    _bad(tmp_path, _tiny_args(models, f"gguf={bogus}"), "variant 'gguf=broken.gguf'", str(bogus),
         "not a GGUF file")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _bad(tmp_path, _tiny_args(models, f"gguf={cut}"), "variant 'gguf=cut.gguf'", str(cut), "truncated",
         "copy or download it again")


def test_08b_gguf_export_of_an_architecture_the_converter_does_not_know(tmp_path, tasks, models, monkeypatch):
    """A `gguf:<type>` candidate is made by llama.cpp's converter from the baseline's checkpoint:
    an architecture it cannot export stops the run before the first model loads (not after the
    baseline and the other candidates were scored)."""
    import shutil

    from qeval.run.factory import EngineFactory

    def no_model(*a, **k):
        raise AssertionError("a model was prepared or loaded before the export check")

    monkeypatch.setattr(EngineFactory, "prepare", no_model)
    monkeypatch.setattr(EngineFactory, "open", no_model)
    odd = tmp_path / "odd"
    shutil.copytree(models / "base", odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    _bad(tmp_path, ["--model", str(odd), "--base", "fp32", "--tasks", "mini", "--candidates", "bf16,gguf:q8_0"],
         "variant 'gguf:q8_0'", "cannot export architecture NoSuchForCausalLM", "gguf=path/to/model.gguf")


@pytest.fixture(scope="module")
def other_gguf(models):
    """A GGUF exported from ANOTHER tiny checkpoint: same size, other tokenizer."""
    from qeval.quantize.gguf import export_gguf

    tok, _ = _checkpoint(models / "other", OTHER_CORPUS)
    assert len(tok) == 320  # the same vocabulary size as the baseline: only the tokens differ
    out = models / "other.gguf"
    export_gguf(models / "other", out, dtype="f32", pre="gpt-2")
    return out


def test_09_gguf_tokenizer_differs_from_baseline(tmp_path, tasks, models, other_gguf, monkeypatch):
    import qeval.engines.hf as hf

    def no_scoring(*a, **k):  # the check must come before any scoring time is spent
        raise AssertionError("the baseline was scored before the tokenizer check")

    monkeypatch.setattr(hf.HFBackend, "loglikelihood", no_scoring)
    line = _bad(tmp_path, _tiny_args(models, f"gguf={other_gguf}"), "variant 'gguf=other.gguf'", str(other_gguf),
                "tokenizer", "differs from the baseline", "quantization of the baseline model")
    assert "Traceback" not in line


def test_10_model_path_does_not_exist(tmp_path, tasks):
    # (tests/test_cli.py parametrizes the same for a .gguf path.)
    _bad(tmp_path, ["--model", str(tmp_path / "no" / "checkpoint"), "--tasks", "mini"],
         str(tmp_path / "no" / "checkpoint"), "does not exist", "pass an HF checkpoint directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _bad(tmp_path, ["--model", str(empty), "--tasks", "mini"], str(empty), "no config.json")


def test_11_candidate_vocabulary_differs(tmp_path, tasks, models, monkeypatch):
    from qeval.quantize.gguf import export_gguf

    # A GGUF whose vocabulary has another size than the baseline's embedding rows.
    big = models / "bigvocab"
    if not big.exists():
        _checkpoint(big, CORPUS + OTHER_CORPUS, vocab=384)
    gguf = tmp_path / "big.gguf"
    export_gguf(big, gguf, dtype="f32", pre="gpt-2")
    import qeval.engines.hf as hf

    monkeypatch.setattr(hf.HFBackend, "loglikelihood", lambda *a, **k: pytest.fail("scored"))
    _bad(tmp_path, _tiny_args(models, f"gguf={gguf}"), "variant 'gguf=big.gguf'", str(gguf), "vocabulary",
         "384 tokens", "the baseline 320", "quantization of the baseline model")
    # A GPTQ checkpoint brought as a directory whose config has another vocabulary size.
    pytest.importorskip("gptqmodel")
    brought = tmp_path / "gptq"
    brought.mkdir()
    config = json.loads((models / "base" / "config.json").read_text())
    config.update(vocab_size=512, quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 32})
    (brought / "config.json").write_text(json.dumps(config))
    _bad(tmp_path, _tiny_args(models, f"gptq={brought}"), "variant 'gptq=gptq'", str(brought), "vocabulary",
         "512", "320")


# ------------------------------------------------------------------ 12-15: numerics and machines


@pytest.fixture(scope="module")
def nan_model(models):
    """The baseline with NaN in one layer's weights, saved as a checkpoint."""
    import transformers

    path = models / "nan"
    if not path.exists():
        model = transformers.AutoModelForCausalLM.from_pretrained(models / "base")
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
        model.save_pretrained(path)
        transformers.AutoTokenizer.from_pretrained(models / "base").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def overflow_model(models):
    """Finite weights, but so large that one layer's output overflows to inf: NaN log-probs at
    scoring (the load-time weight check cannot see it)."""
    import transformers

    path = models / "overflow"
    if not path.exists():
        model = transformers.AutoModelForCausalLM.from_pretrained(models / "base")
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight.fill_(1e3)
            model.model.layers[0].mlp.down_proj.weight.fill_(3e38)
        model.save_pretrained(path)
        transformers.AutoTokenizer.from_pretrained(models / "base").save_pretrained(path)
    return path


def test_12_nan_or_inf_log_probs(tmp_path, tasks, nan_model, overflow_model):
    # NaN in the weights: found when the model loads, before any scoring, naming the tensor.
    _bad(tmp_path, ["--model", str(nan_model), "--base", "fp32", "--tasks", "mini", "--candidates", "bf16"],
         "fp32", "NaN or inf", "model.layers.1.mlp.down_proj.weight", str(nan_model))
    # Finite weights whose activations overflow: found at scoring, naming the variant and item.
    _bad(tmp_path, ["--model", str(overflow_model), "--base", "fp32", "--tasks", "mini",
                    "--candidates", "bf16"],
         "fp32", "task mini", "non-finite log-prob", "item m", "numerically broken")


def test_13_gpu_only_option_without_gpu(tmp_path, tasks, models):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _bad(tmp_path, ["--device", "cuda", *_tiny_args(models)], "--device cuda", "no CUDA GPU", "--device cpu")
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return
    _bad(tmp_path, _tiny_args(models, "gguf:q8_0,gpu_layers=99"), "variant 'gguf:q8_0,gpu_layers=99'",
         "gpu_layers", "without GPU offload", "drop gpu_layers")


def test_14_group_size_does_not_divide_layer_width(tmp_path, tasks, models):
    pytest.importorskip("gptqmodel")
    _bad(tmp_path, _tiny_args(models, "gptq:group=100"), "variant 'gptq:group=100'",
         "group=100 does not divide", "hidden_size (q/k/v, gate/up) 64",
         "choose group from -1, 16, 32, 64")


# ------------------------------------------------------------------ 15: out of memory


OOM_WRAPPER = textwrap.dedent("""
    # qeval's CLI with the address space capped while a model loads: at the moment transformers'
    # from_pretrained starts, the limit is set to what the process maps then plus a margin
    # smaller than the model's weights, so the allocation fails inside torch/safetensors on a
    # real limit, and nowhere else.
    import logging, resource, sys

    for name in ("torchao", "torch.utils._pytree"):  # as qeval's HF backend does before loading
        logging.getLogger(name).setLevel(logging.ERROR)
    # What loading imports lazily is imported before the cap (OpenBLAS, pulled in through scipy,
    # spins instead of failing when it cannot allocate its buffers).
    import safetensors.torch, torch, transformers
    import transformers.loss.loss_utils, transformers.models.llama.modeling_llama
    try:
        import scipy.linalg
    except ImportError:
        pass

    def mapped():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    margin = int(sys.argv.pop(1))
    load = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def limited(cls, *args, **kwargs):
        resource.setrlimit(resource.RLIMIT_AS, (mapped() + margin, resource.RLIM_INFINITY))
        return load(cls, *args, **kwargs)

    transformers.AutoModelForCausalLM.from_pretrained = classmethod(limited)
    sys.argv[0] = "qeval"
    import qeval.cli

    qeval.cli.main()
""")


@pytest.fixture(scope="module")
def big_model(models):
    """Hidden 1024, two layers: 127 MB of float32 weights."""
    path = models / "big"
    if not path.exists():
        _checkpoint(path, hidden=1024, intermediate=4096, layers=2)
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_15_out_of_memory_while_loading(tmp_path, big_model):
    """A real allocation failure: the CLI in a child process whose address space is capped 64 MB
    above what it maps when loading starts, below the 127 MB the weights need; loading fails in
    torch/safetensors and qeval says so in one line instead of a traceback."""
    wrapper = tmp_path / "oom_qeval.py"
    wrapper.write_text(OOM_WRAPPER)
    out = tmp_path / "run"
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, str(wrapper), str(64 << 20), "compare", "--model", str(big_model),
         "--base", "fp32", "--candidates", "bf16", "--tasks", "clinical_core", "--limit", "4",
         "--no-efficiency", "--no-reuse", "--n-boot", "200", "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)

    class Res:
        exit_code = proc.returncode
        stderr = proc.stderr
        output = proc.stdout + proc.stderr

    _check_line(Res, out, tmp_path, ("out of memory while loading", str(big_model), "as fp32 on cpu",
                                     "smaller variant", "free memory"))


def test_15b_out_of_memory_while_scoring_is_explained_too(tmp_path, tasks, models, monkeypatch):
    """Beyond loading: torch's CPU allocator failing in a forward pass (simulated here: a real
    one depends on the machine's memory) names the variant and the fix (a smaller batch)."""
    import transformers

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 268435456 bytes. Error code 12")

    monkeypatch.setattr(transformers.LlamaModel, "forward", no_memory)  # the decoder stack
    _bad(tmp_path, _tiny_args(models), "fp32: out of memory while scoring on cpu", "--batch-size")


# ------------------------------------------------------------------ issue 23: flags, files, items, order


@pytest.mark.parametrize("args,must", [
    (["--limit", "0"], ("'--limit'", "greater than or equal to 1", "qeval compare --help")),
    (["--limit", "-3"], ("'--limit'", "greater than or equal to 1")),
    (["--batch-size", "0"], ("'--batch-size'", "greater than or equal to 1")),
    (["--limit", "many"], ("'--limit'", "valid integer", "qeval compare --help")),
    (["--limt", "5"], ("--limt", "--limit")),
])
def test_16_bad_flag_values_are_one_line(tmp_path, tasks, args, must):
    """click's range and type errors are one `qeval: error:` line, not its usage block."""
    _bad(tmp_path, ["--tasks", "mini", *args], *must)


def test_17_tasks_flag_naming_no_task(tmp_path, tasks):
    _bad(tmp_path, ["--tasks", ","], "--tasks ','", "names no task", "qeval tasks")


def test_18_directories_where_a_gguf_file_is_expected(tmp_path, tasks, models):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model-q4.gguf").write_bytes(b"GGUF")
    _bad(tmp_path, _tiny_args(models, f"gguf={folder}"), "variant 'gguf=weights'", str(folder),
         "is a directory, not a GGUF file", "model-q4.gguf", "the .gguf file itself")
    named = tmp_path / "x.gguf"
    named.mkdir()
    _bad(tmp_path, ["--model", str(named), "--tasks", "mini"], str(named),
         "is a directory, not a GGUF file", "the .gguf file itself")


@pytest.mark.parametrize("override,must", [
    ({"question": ""}, ("a.yaml", "item 'm0'", "empty question")),
    ({"question": "   "}, ("a.yaml", "item 'm0'", "empty question")),
    ({"choices": [f"{PHI} metformin", " "]}, ("a.yaml", "item 'm0'", "option B is empty")),
    ({"choices": [f"{PHI} a", f"{PHI} b", f"{PHI} a "]}, ("a.yaml", "item 'm0'", "options A and C have the same text")),
])
def test_19_item_content(tmp_path, tasks, override, must):
    tasks(items=_items(**override))
    _bad(tmp_path, ["--tasks", "mini", "--candidates", "bf16", "--base", "fp32"], *must)


def _no_model_time(monkeypatch):
    """Fail the test if any model is loaded (transformers or llama.cpp)."""
    import qeval.engines.hf as hf
    import qeval.engines.llamacpp as lc

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(hf.HFBackend, "__init__", loaded)
    monkeypatch.setattr(lc.LlamaCppBackend, "__init__", loaded)


@pytest.mark.parametrize("template,must", [
    ("{question}\n{choices}\n{colour}\nAnswer:", ("mini.yaml", "unknown field {colour}", "{question}")),
    ("{question} {}", ("mini.yaml", "unknown field {}",)),
    ("{question}\n{choices\nAnswer:", ("mini.yaml", "not a valid template", "{{")),
])
def test_20_prompt_template_fields_before_model_time(tmp_path, tasks, models, monkeypatch, template, must):
    tasks(spec={"id": "mini", "kind": "multiple_choice", "prompt": {"template": template},
                "source": {"format": "qeval_items", "path": "items"}})
    _no_model_time(monkeypatch)
    _bad(tmp_path, _tiny_args(models), *must)


def _records() -> list[Path]:
    root = Path(os.environ["QEVAL_CACHE"]) / "records"
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


@pytest.mark.parametrize("last,must", [
    ("int8:treshold=4", ("variant 'int8:treshold=4'", "unknown parameter(s) treshold", "int8 takes threshold")),
    ("nf4", ("variant 'nf4' needs bitsandbytes", "not installed", "pip install")),
    ("gptq:group=100", ("variant 'gptq:group=100'", "group=100 does not divide")),
    ("gguf:q8_0,n_ctx=512", ("variant 'gguf:q8_0,n_ctx=512'", "n_ctx=512", "reference-text windows (1024 tokens)",
                             "n_ctx=1024")),
])
def test_21_last_candidate_infeasible_scores_nothing(tmp_path, tasks, models, monkeypatch, last, must):
    """Every check comes before the first model loads: a compare whose LAST candidate cannot run
    stops with one line, no model loaded, no record stored."""
    from qeval.methods import method

    if last.startswith("gptq"):
        pytest.importorskip("gptqmodel")
    if last == "nf4":  # as if bitsandbytes were not installed
        monkeypatch.setattr(method("nf4"), "package", "bitsandbytes_not_installed")
    ref = tasks().parent / "ref"  # a reference-text task beside "mini"
    (ref / "passages").mkdir(parents=True)
    (ref / "ref.yaml").write_text(json.dumps({"id": "ref", "kind": "reference_text", "source": {
        "format": "qeval_passages", "path": "passages"}}))
    (ref / "passages" / "a.yaml").write_text(json.dumps({"style": "note", "passages": [
        {"id": "p1", "title": "t", "specialty": "s", "text": f"{PHI} {CORPUS[0]}"}]}))
    before = _records()
    _no_model_time(monkeypatch)
    _bad(tmp_path, ["--model", str(models / "base"), "--base", "fp32", "--tasks", "mini,ref",
                    "--candidates", f"bf16,int8wo,{last}"], *must)
    assert _records() == before


def test_22_brought_files_have_short_names_and_the_closing_line_lists_what_was_written(tmp_path, tasks, models):
    """A brought GGUF is named by its file name (or `name=`) in tables and records, the full
    path and hash stay in results.json; with --no-efficiency no efficiency.json is listed."""
    from qeval.quantize.gguf import export_gguf

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    export_gguf(models / "base", tmp_path / "a" / "model.gguf", dtype="f32", pre="gpt-2")
    (tmp_path / "b" / "model.gguf").write_bytes((tmp_path / "a" / "model.gguf").read_bytes())
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    # the same file name twice: told apart with name=
    _bad(tmp_path, ["--model", str(models / "base"), "--base", "fp32", "--tasks", "mini",
                    "--candidates", f"gguf={a},gguf={b}"], "'gguf=model.gguf' appears twice", "name=")
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", "--out", str(out), "--n-boot", "200", "--no-efficiency", "--model",
                              str(models / "base"), "--base", "fp32", "--tasks", "mini",
                              "--candidates", f"gguf={a},gguf={b},name=mine"])
    assert res.exit_code in (0, 1, 3), res.output
    assert str(tmp_path) not in res.stdout.replace(str(out), ""), res.stdout  # no full paths in the tables
    assert "gguf=model.gguf" in res.stdout and "mine" in res.stdout
    closing = " ".join(res.stdout.split("Run directory:", 1)[1].split())  # the console wraps it
    assert "results.json" in closing and "efficiency.json" not in res.stdout, closing
    assert not (out / "efficiency.json").exists()
    results = json.loads((out / "results.json").read_text())
    assert [c["variant"] for c in results["candidates"]] == ["gguf=model.gguf", "mine"]
    assert [c["params"]["file"] for c in results["config"]["candidates"]] == [str(a), str(b)]
    assert len({c["versions"]["gguf_sha256"] for c in results["candidates"]}) == 1
