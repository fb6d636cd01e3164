"""Issue 22, item 1: the fp8 (W8A8) and fp8wo (weight-only) candidates on the transformers engine.

On a CPU torchao has no FP8 matmul, so fp8 is emulated: the test checks the emulated model against
a reference rounding written here independently (per-output-row and per-token absmax/448 scales,
torch.float8_e4m3fn casts), the record's words, that the three variants score differently, the
rules that choose real or emulated, a bad parameter, and a compare end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tiny_models import CORPUS, tiny_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from qeval.cli import app  # noqa: E402
from qeval.engines.base import LoglikelihoodRequest  # noqa: E402
from qeval.engines.hf import HFFactory  # noqa: E402
from qeval.model_source import resolve_model  # noqa: E402
from qeval.types import Method, VariantSpec  # noqa: E402

E4M3_MAX = 448.0


def reference_qdq(t: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize along the last dimension: one scale per row (a weight's output row,
    an activation's token), absmax / 448, values rounded to e4m3 (round to nearest even)."""
    scale = t.abs().amax(dim=-1, keepdim=True) / E4M3_MAX
    q = (t / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.to(t.dtype) * scale


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp8-tiny") / "llama"
    tiny_checkpoint(path)  # widths 64, 128 and K/V 32: every layer a multiple of 16
    return path


@pytest.fixture(scope="module")
def opened(tiny):
    factory = HFFactory(resolve_model(str(tiny)), device="cpu", batch_size=4)
    base = factory.open(VariantSpec(name="fp32", method=Method.fp32), None)
    return base, {m: factory.open(VariantSpec(name=m, method=m), base.info.compute_dtype)
                  for m in ("fp8", "fp8wo")}


def _reference_model(path, activations: bool):
    """The tiny model with the reference rounding: every nn.Linear but lm_head gets rounded
    weights, and (W8A8) its input rounded per token at every call."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    head = model.get_output_embeddings()
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod is not head:
                mod.weight.copy_(reference_qdq(mod.weight))
                if activations:
                    mod.register_forward_pre_hook(lambda m, args: (reference_qdq(args[0]),))
                n += 1
    return model, n


@pytest.mark.parametrize("name,activations", [("fp8", True), ("fp8wo", False)])
def test_fp8_equals_the_reference_rounding(tiny, opened, name, activations):
    base, cands = opened
    cand = cands[name]
    ref, n = _reference_model(tiny, activations)
    assert n == 14  # 2 layers x (q, k, v, o, gate, up, down); lm_head (tied to the embeddings) kept
    # Each quantized layer's weights: exactly the reference's e4m3 values times their row scales.
    ref_layers = {k: m for k, m in ref.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = 0
    for layer_name, mod in cand.model.named_modules():
        w = getattr(mod, "weight", None)
        if type(w).__name__ == "Float8Tensor":
            assert torch.equal(w.dequantize(), ref_layers[layer_name].weight), layer_name
            quantized += 1
    assert quantized == n
    assert type(cand.model.lm_head.weight).__name__ != "Float8Tensor"
    # The whole model: the same logits as the reference (float tolerance: matmul order only).
    ids = torch.tensor([cand.tokenize(CORPUS[3])])
    with torch.inference_mode():
        got, want = cand.model(ids).logits, ref(ids).logits
        plain = base.model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # and the rounding did change the logits


def test_emulated_layer_rounds_each_token_like_the_reference(opened):
    from qeval.variants.fp8_layers import Fp8EmulatedLinear

    layer = opened[1]["fp8"].model.model.layers[0].mlp.down_proj
    assert isinstance(layer, Fp8EmulatedLinear)
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(0))
    x[0, 0] *= 1000  # one token far larger: per-token scales keep the others' precision
    want = torch.nn.functional.linear(reference_qdq(x), layer.weight.dequantize())
    torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)
    per_tensor = (x / (x.abs().max() / E4M3_MAX)).to(torch.float8_e4m3fn).float() * (x.abs().max() / E4M3_MAX)
    assert not torch.allclose(reference_qdq(x), per_tensor)  # the test can tell the granularity
    # An all-zero token (left padding in batched generation) stays zero: no NaN from a zero scale.
    x[1, 2] = 0
    out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, 2], torch.nn.functional.linear(torch.zeros(layer.in_features), layer.weight.dequantize()))
    torch.testing.assert_close(out[0], want[0], rtol=1e-6, atol=1e-6)


def test_the_record_says_what_ran_and_the_scores_differ(opened):
    base, cands = opened
    fp8, fp8wo = cands["fp8"].info, cands["fp8wo"].info
    assert "Fp8EmulatedLinear[Float8Tensor] x14" in fp8.kernel and "FP8 emulated" in fp8.kernel
    assert any("a CPU has no FP8 matmul" in n for n in fp8.notes)
    assert "torch.Linear[Float8Tensor] x14" in fp8wo.kernel and "FP8 weight-only" in fp8wo.kernel
    assert "emulated" not in fp8wo.kernel  # torchao's own weight-only path, the same on every device
    assert all(any("lm_head" in n for n in info.notes) for info in (fp8, fp8wo))
    assert fp8.weight_bytes == fp8wo.weight_bytes < base.info.weight_bytes
    reqs = []
    for i, text in enumerate(CORPUS[:3]):
        ctx = base.tokenize(text)
        reqs += [LoglikelihoodRequest(tuple(ctx), tuple(base.tokenize(c)), f"s{i}", j)
                 for j, c in enumerate([" A", " potassium above"])]
    scores = {name: b.loglikelihood(reqs) for name, b in (("fp32", base), *cands.items())}
    for a, b in (("fp32", "fp8"), ("fp32", "fp8wo"), ("fp8", "fp8wo")):
        diff = max(abs(x - y) for x, y in zip(scores[a], scores[b]))
        assert 0 < diff < 2.0, (a, b, diff)


def test_real_fp8_kernels_only_where_torchao_runs_them(monkeypatch):
    from qeval.variants import fp8_layers

    assert "a CPU has no FP8 matmul" in fp8_layers._real_fp8_refusal("cpu", torch.bfloat16)
    monkeypatch.setattr(fp8_layers, "cuda_capability", lambda device: (8, 0))  # A100
    assert "compute capability 8.0" in fp8_layers._real_fp8_refusal("cuda", torch.bfloat16)
    monkeypatch.setattr(fp8_layers, "cuda_capability", lambda device: (9, 0))  # H100/H200
    assert "--base bf16" in fp8_layers._real_fp8_refusal("cuda", torch.float16)
    assert fp8_layers._real_fp8_refusal("cuda:0", torch.bfloat16) is None


def test_a_bad_fp8_parameter_is_one_line_before_any_model_time(tiny, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["compare", "--model", str(tiny), "--base", "fp32", "--tasks", "clinical_core",
                                   "--candidates", "fp8wo,fp8:granularity=tensor", "--limit", "4",
                                   "--out", str(out), "--no-efficiency"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qeval: error:"), res.stderr
    assert "variant 'fp8:granularity=tensor'" in lines[0] and "unknown parameter(s) granularity" in lines[0]
    assert "fp8 takes none" in lines[0]
    assert not out.exists()


def test_compare_fp8_and_fp8wo_end_to_end(tiny, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["compare", "--model", str(tiny), "--base", "fp32", "--tasks", "clinical_core",
                                   "--candidates", "fp8,fp8wo", "--limit", "6", "--n-boot", "200",
                                   "--out", str(out), "--no-efficiency"])
    assert res.exit_code in (0, 1), res.output  # a verdict (6 items: INCONCLUSIVE or NO_GO)
    results = json.loads((out / "results.json").read_text())
    kernels = {c["variant"]: c["kernel"] for c in results["candidates"]}
    assert "FP8 emulated" in kernels["fp8"] and "FP8 weight-only" in kernels["fp8wo"]
    assert {c["candidate"] for c in results["comparisons"]} == {"fp8", "fp8wo"}
    assert set(results["per_candidate"]) == {"fp8", "fp8wo"}
