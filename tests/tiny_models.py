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
    if arch == "phi3":  # as Phi-4 (a Phi3ForCausalLM) ships it: a GPT-2 byte-level BPE tokenizer
        import json
        from pathlib import Path

        cfg_file = Path(path) / "tokenizer_config.json"
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "tokenizer_class": "GPT2Tokenizer"}))
    common = dict(vocab_size=len(fast), hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=arch in TIED,
                  eos_token_id=0, bos_token_id=0)
    if arch == "gemma3":
        # Gemma-3's own parts: Q/K norms, sandwich norms, (1 + w) norm weights, sliding-window
        # layers (every 6th global), embeddings scaled by sqrt(hidden). llama.cpp
        # scales queries by 1/sqrt(head_dim) (Gemma-3 27B aside), so query_pre_attn_scalar = head_dim.
        common.update(head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4, sliding_window=64, pad_token_id=0,
                      rms_norm_eps=1e-6)
    if arch == "phi3":
        common.update(pad_token_id=0)
    common.update(config)
    torch.manual_seed(0)
    model = getattr(transformers, CLASSES[arch][0])(getattr(transformers, CLASSES[arch][1])(**common))
    with torch.no_grad():
        if arch == "qwen2":  # non-zero Q/K/V biases, so a dropped bias would show
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
        # Norm weights away from their init (ones, or zeros for Gemma's 1 + w), so a norm read
        # with the wrong convention would show (llama and qwen2 as before: other tests' numbers).
        for name, param in model.named_parameters():
            if "norm" in name and arch not in ("llama", "qwen2"):
                param.normal_(0.0 if arch == "gemma3" else 1.0, 0.2)
    model.save_pretrained(path)
    return fast, model.eval()


CLASSES = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
           "qwen3": ("Qwen3ForCausalLM", "Qwen3Config"), "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig"),
           "phi3": ("Phi3ForCausalLM", "Phi3Config")}
TIED = ("llama", "gemma3")


def naive_loglikelihood(model, context, continuation) -> float:
    """The reference for scoring tests: context + continuation alone through the model, unpadded,
    no cache, the continuation's log-probs summed."""
    import torch

    ids = torch.tensor([list(context) + list(continuation)])
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    n = len(context)
    return sum(logp[n - 1 + k, t].item() for k, t in enumerate(continuation))
