"""A tiny seeded Llama wide enough for MatMulNBits (hidden 64, so every K >= the block size 32),
its prompts and text batches; nothing is downloaded."""

import torch

# Two layers, hidden 64, four heads of 16, two key/value heads; ids 0-2 are pad, bos, eos.
SIZES = {
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
# A wider initialisation than the default 0.02: the default gives near-uniform logits whose
# argmax any rounding flips, which would measure noise rather than the quantizer.
INITIALIZER_RANGE = 0.1


def wide_llama(seed: int = 0, tie: bool = False) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(**SIZES, initializer_range=INITIALIZER_RANGE, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def prompts(rows: int = 4, length: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` prompts of real ids; every other row left-padded by two pads."""
    ids = torch.randint(3, SIZES["vocab_size"], (rows, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    ids[1::2, :2], mask[1::2, :2] = 0, 0
    return ids, mask


def text_batches(
    batches: int = 2, rows: int = 4, length: int = 24, seed: int = 2
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of "text": the model's own sampled continuations would be ideal; random ids with right
    padding (the last row shortened by 5) exercise the same code."""
    out = []
    for b in range(batches):
        ids, _ = prompts(rows, length, seed + b)
        mask = torch.ones_like(ids)
        ids[-1, -5:], mask[-1, -5:] = 0, 0
        out.append((ids, mask))
    return out
