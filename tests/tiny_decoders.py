"""Tiny seeded causal LMs, one per family, built from each family's default config (use_cache=True)
with only the sizes shrunk: nothing is downloaded."""

import torch

# Sizes every family shares; per-family keys below only where the config spells them differently.
COMMON = {"vocab_size": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
# Two layers, four heads of 8, two key/value heads where the family has GQA.
GQA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
GQA_KV = {**GQA, "num_key_value_heads": 2}

# family -> (transformers config class name, size overrides)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", GQA_KV),
    "qwen2": ("Qwen2Config", GQA_KV),
    "mistral": ("MistralConfig", GQA_KV),
    "gemma2": ("Gemma2Config", {**GQA_KV, "head_dim": 8}),  # default head_dim is 256
    "phi3": ("Phi3Config", GQA_KV),
    "opt": (
        "OPTConfig",
        {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "word_embed_proj_dim": 32},
    ),  # fmt: skip
    "gpt_neox": ("GPTNeoXConfig", GQA),
    "falcon": ("FalconConfig", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}),  # multi-query
    "bloom": ("BloomConfig", {"hidden_size": 32, "n_layer": 2, "n_head": 4}),
}


def tiny_decoder(family: str, seed: int = 0) -> torch.nn.Module:
    import transformers

    config_class, sizes = FAMILIES[family]
    config = getattr(transformers, config_class)(**COMMON, **sizes)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def word_level_tokenizer(vocab_size: int = 128):
    """A whitespace word-level tokenizer over the tiny vocabulary: ids 0-2 are pad, bos, eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>"
    )


def og_greedy(folder, prompt, new_tokens: int) -> list[int]:
    """The tokens onnxruntime-genai generates greedily from ``folder`` after ``prompt`` (prompt included)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(list(prompt))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)]
