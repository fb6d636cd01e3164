"""Tiny random decoder checkpoints built in a test (no download), with a small BPE tokenizer
trained on clinical-looking text: for engine and quantizer round trips that must be fast."""

from __future__ import annotations

CORPUS = ["The patient was given 500 mg of metformin twice daily.",
          "Blood pressure 142/88 mmHg; review in 2 weeks.",
          "Chest pain radiating to the left arm, sweating and nausea.",
          "Renal function: eGFR 42, creatinine 130 umol/L.\n\n1. Stop NSAIDs\n2. Recheck in 48 hours"]


def tiny_checkpoint(path, arch: str = "llama", *, hidden: int = 64, intermediate: int = 128,
                    layers: int = 2, **config):
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(path)
    common = dict(vocab_size=len(fast), hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=(arch == "llama"),
                  eos_token_id=0, bos_token_id=0, **config)
    torch.manual_seed(0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
        with torch.no_grad():  # non-zero Q/K/V biases, so a dropped bias would show
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model.save_pretrained(path)
    return fast, model.eval()


def naive_loglikelihood(model, context, continuation) -> float:
    """The reference for scoring tests: context + continuation alone through the model, unpadded,
    no cache, the continuation's log-probs summed."""
    import torch

    ids = torch.tensor([list(context) + list(continuation)])
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    n = len(context)
    return sum(logp[n - 1 + k, t].item() for k, t in enumerate(continuation))
