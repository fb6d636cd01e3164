"""`qeval plan`: the VRAM arithmetic, checked against real model objects and the 70B example."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from qeval.cli import app
from qeval.errors import QevalInputError
from qeval.vram import GPUS, PRESETS, GiB, bits_per_weight, kv_bytes_per_token, load_shape, plan, shape_from_config

runner = CliRunner()


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_split_matches_a_real_model(tmp_path, tied):
    """Linear + other parameters from config.json equal what transformers builds from it, and the
    linear part equals the sum over nn.Linear layers (what weight quantizers quantize)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160,
                                      num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                                      tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(config)
    config.save_pretrained(tmp_path)
    shape = load_shape(str(tmp_path))
    assert shape.total_params() == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "lm_head")
    assert shape.linear_params() == linear
    # fp32 weights predicted = the bytes the model actually holds
    p = plan(shape, fmt="fp32", context=16, gpu="T4")
    assert p.lines[0].bytes == sum(t.numel() * t.element_size() for t in model.parameters())


def test_the_70b_fp16_worked_example():
    shape = PRESETS["llama-2-70b"]
    p = plan(shape, fmt="fp16", context=4096, sequences=16, kv_dtype="fp16", gpu="H100-80GB")
    lines = {line.item: line.bytes for line in p.lines}
    assert lines["weights"] == pytest.approx(shape.total_params() * 2, rel=1e-6)  # ~138 GB
    # KV: 2 × layers × KV heads × head dim × 2 bytes per token, GQA's 8 KV heads, not 64
    assert p.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert lines["KV cache"] == p.kv_bytes_per_token * 4096 * 16
    assert kv_bytes_per_token(shape, "fp16", with_gqa=False) == 8 * p.kv_bytes_per_token
    assert p.total_bytes == sum(b for k, b in lines.items() if k != "total") == lines["total"]
    assert lines["headroom"] == int(0.15 * (lines["weights"] + lines["KV cache"] + lines["CUDA + activations"]))
    # Weights alone would fit two H100s; the full budget needs three, and TP must divide 64 heads.
    assert math.ceil(lines["weights"] / GPUS["H100-80GB"]) == 2
    assert p.gpus_needed == math.ceil(p.total_bytes / GPUS["H100-80GB"]) == 3
    assert p.tensor_parallel == 4 and shape.heads % p.tensor_parallel == 0
    assert p.gpu_memory_utilization == 0.85 and p.sequences_that_fit >= 16
    assert any("8× too much" in n for n in p.notes) and any("weights only" in n for n in p.notes)


def test_formats_order_and_kv_grows_with_load():
    shape = PRESETS["llama-3-8b"]
    weights = {f: plan(shape, fmt=f, gpu="L4").lines[0].bytes
               for f in ("fp16", "int8", "gptq:group=128", "gguf:q4_k_m", "gguf:q2_k")}
    four_bit = (weights["gguf:q4_k_m"], weights["gptq:group=128"])
    assert weights["fp16"] > weights["int8"] > max(four_bit) >= min(four_bit) > weights["gguf:q2_k"]
    # GGUF quantizes the embeddings and head too; GPTQ keeps them 16-bit (Llama-3's 128k vocab)
    shape_other = shape.other_params()
    assert weights["gptq:group=128"] - shape.linear_params() * bits_per_weight("gptq:group=128")[0] / 8 \
        == pytest.approx(shape_other * 2, rel=1e-6)
    assert bits_per_weight("gptq:group=32")[0] > bits_per_weight("gptq:group=128")[0] > 4
    assert bits_per_weight("nf4")[0] > bits_per_weight("nf4:double_quant=true")[0] > 4
    one = plan(shape, context=8192, sequences=1, gpu="L4").lines[1].bytes
    assert plan(shape, context=8192, sequences=4, gpu="L4").lines[1].bytes == 4 * one
    assert plan(shape, context=8192, sequences=1, kv_dtype="fp8", gpu="L4").lines[1].bytes == one // 2


def test_a_model_too_big_for_eight_gpus_says_so():
    p = plan(PRESETS["llama-3-70b"], fmt="fp16", context=4096, sequences=4, gpu="T4")
    assert p.tensor_parallel is None and p.sequences_that_fit == 0
    assert any("more than 8-way" in n for n in p.notes)


def test_utilization_rises_when_the_kv_budget_needs_it():
    shape = PRESETS["llama-3-8b"]
    # Find a load that needs more than 85% of one A10G but less than 95%.
    for seqs in range(1, 64):
        p = plan(shape, fmt="gptq:group=128", context=8192, sequences=seqs, gpu="A10G")
        if p.gpu_memory_utilization > 0.85:
            assert p.gpu_memory_utilization <= 0.95 and p.sequences_that_fit >= seqs
            return
    pytest.fail("no load raised the utilization")


@pytest.mark.parametrize("args,match", [
    (["--model", "llama-2-70b", "--format", "gguf:q9_k"], "unknown GGUF type"),
    (["--model", "llama-2-70b", "--format", "int3"], "choose fp16"),
    (["--model", "llama-2-70b", "--gpu", "V100"], "--gpu 'V100'"),
    (["--model", "llama-2-70b", "--kv-dtype", "fp4"], "--kv-dtype 'fp4'"),
    (["--layers", "2", "--hidden", "64"], "missing --heads, --vocab, --intermediate"),
    (["--model", "/no/such/config.json"], "not a preset"),
])
def test_bad_plan_input_is_one_line(args, match):
    res = runner.invoke(app, ["plan", *args])
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and match in lines[0], res.output


def test_plan_cli_json_and_explicit_shape():
    res = runner.invoke(app, ["plan", "--layers", "32", "--hidden", "4096", "--heads", "32", "--kv-heads", "8",
                              "--vocab", "128256", "--intermediate", "14336", "--gpu-memory", "24",
                              "--context", "8192", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    want = plan(PRESETS["llama-3-8b"].model_copy(update={"params": None, "name": "custom"}), context=8192,
                gpu="custom 24 GiB", gpu_bytes=24 * GiB)
    assert got["total_bytes"] == want.total_bytes and got["gpu_bytes"] == 24 * GiB


def test_config_without_required_fields_is_bad_input():
    with pytest.raises(QevalInputError, match="no 'vocab_size'"):
        shape_from_config({"num_attention_heads": 4, "hidden_size": 64, "num_hidden_layers": 2,
                           "intermediate_size": 128})
