"""The transformers backend on a tiny random Llama built here (no download): batched scoring equals
naive per-choice scoring, and INT8 / NF4 variants really load quantized kernels."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from qeval.engines.base import LoglikelihoodRequest
from qeval.engines.hf import HFBackend, HFFactory, choose_dtype
from qeval.errors import QevalInputError
from qeval.model_source import resolve_model
from qeval.types import Method, VariantSpec
from tiny_models import naive_loglikelihood

CORPUS = [
    "The patient was given paracetamol for fever and reviewed after four hours.",
    "Serum potassium above 6.5 mmol/L with ECG changes needs urgent treatment.",
    "Question: Which drug is first line? Answer: A B C D E",
] * 20


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _requests(backend) -> list[LoglikelihoodRequest]:
    reqs = []
    for i, text in enumerate(CORPUS[:3]):
        ctx = backend.tokenize(text)
        for j, cont in enumerate([" A", " B", " potassium above", " four hours later"]):
            reqs.append(LoglikelihoodRequest(tuple(ctx), tuple(backend.tokenize(cont)), f"s{i}", j))
    return reqs


def _naive(model, req: LoglikelihoodRequest) -> float:
    return naive_loglikelihood(model, req.context, req.continuation)


def test_batched_scoring_equals_naive_per_choice_scoring(tiny_model_dir):
    model = resolve_model(str(tiny_model_dir))
    backend = HFBackend(model, VariantSpec(name="fp32", method=Method.fp32), device="cpu", batch_size=3)
    reqs = _requests(backend)
    assert any(len(r.continuation) == 1 for r in reqs) and any(len(r.continuation) > 1 for r in reqs)
    got = backend.loglikelihood(reqs)
    want = [_naive(backend.model, r) for r in reqs]
    assert max(abs(g - w) for g, w in zip(got, want)) <= 1e-4
    assert backend.info.compute_dtype == "float32" and backend.info.kernel.startswith("torch.Linear")


def test_fp16_on_cpu_is_labelled_not_pretended():
    c = choose_dtype(Method.fp16, "cpu", strict=False, baseline_compute=None)
    assert (c.requested, c.compute) == ("float16", "float32") and "float32" in c.notes[0]
    strict = choose_dtype(Method.fp16, "cpu", strict=True, baseline_compute=None)
    assert strict.compute == "float16" and not strict.notes
    assert choose_dtype(Method.int8, "cuda", False, "bfloat16").compute == "bfloat16"


@pytest.mark.parametrize("method,marker", [
    (Method.int8, "bitsandbytes.Linear8bitLt"),
    (Method.nf4, "bitsandbytes.Linear4bit"),
    (Method.int8wo, "Int8Tensor"),
])
def test_quantized_variants_load_real_kernels_and_stay_close(tiny_model_dir, method, marker):
    pytest.importorskip("bitsandbytes" if method != Method.int8wo else "torchao")
    model = resolve_model(str(tiny_model_dir))
    factory = HFFactory(model, device="cpu", batch_size=4)
    base = factory.open(VariantSpec(name="fp32", method=Method.fp32), None)
    cand = factory.open(VariantSpec(name=method.value, method=method), base.info.compute_dtype)
    assert marker in cand.info.kernel
    assert cand.info.weight_bytes < base.info.weight_bytes
    reqs = _requests(base)
    b, c = base.loglikelihood(reqs), cand.loglikelihood(reqs)
    diffs = [abs(x - y) for x, y in zip(b, c)]
    assert max(diffs) > 0  # quantization changed something ...
    assert max(diffs) < 2.0  # ... but the model is still the same model


def test_unknown_variant_parameter_is_rejected(tiny_model_dir):
    model = resolve_model(str(tiny_model_dir))
    with pytest.raises(QevalInputError, match="threshhold"):
        HFBackend(model, VariantSpec(name="int8", method=Method.int8, params={"threshhold": 5}), device="cpu")


def test_gpu_only_device_on_cpu_machine_is_bad_input(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(QevalInputError, match="no CUDA GPU"):
        HFFactory(resolve_model(str(tiny_model_dir)), device="cuda")


def test_nan_log_probs_are_refused_with_the_item_id(tiny_model_dir):
    from qeval.engines.base import NonFiniteScores

    backend = HFBackend(resolve_model(str(tiny_model_dir)), VariantSpec(name="fp32", method=Method.fp32), device="cpu")
    with torch.no_grad():
        backend.model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteScores, match=r"non-finite log-prob for item s\d choice \d"):
        backend.loglikelihood(_requests(backend))
