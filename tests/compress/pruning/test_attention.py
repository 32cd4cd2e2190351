"""Head removal on grouped-query, fused-interleaved and structure-found attention, and unmappable attention.

The exact criterion for removing heads: the pruned model computes what the unpruned one
computes with those heads' output-projection columns zeroed.
"""

import copy

import pytest
import torch
from torch import nn

from compress.pruning.attention import AttentionMapError, attention_modules, prune_heads

IDS = torch.randint(2, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def tiny_llama(heads=4, kv_heads=2):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=64, max_position_embeddings=32, use_cache=False,
    )  # fmt: skip
    return LlamaModel(config).eval()


def tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXModel

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, use_cache=False,
    )  # fmt: skip
    return GPTNeoXModel(config).eval()


def zero_heads(model, removed: dict[str, list[int]]):
    """A copy of ``model`` whose output projections ignore the ``removed`` heads."""
    model = copy.deepcopy(model)
    found = attention_modules(model)
    with torch.no_grad():
        for name, heads in removed.items():
            module, layout = found[name]
            layout.output_layer(model, name).weight[:, layout.columns(module, heads)] = 0
    return model


def assert_same_output(pruned, reference, inputs):
    with torch.no_grad():
        out, ref = pruned(inputs), reference(inputs)
    out, ref = (getattr(o, "last_hidden_state", o) for o in (out, ref))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_grouped_query_attention_loses_the_same_query_heads_per_group_and_keeps_kv():
    model = tiny_llama(heads=4, kv_heads=2)
    reference = copy.deepcopy(model)
    removed = prune_heads(model, 0.25)
    # round(0.25 * 4) = 1 query head, rounded up to one per key/value group
    assert list(removed) == ["layers.0.self_attn", "layers.1.self_attn"]
    for name, heads in removed.items():
        assert len(heads) == 2 and heads[0] in (0, 1) and heads[1] in (2, 3)
        attn = model.get_submodule(name)
        assert attn.q_proj.weight.shape == (16, 32) and attn.o_proj.weight.shape == (32, 16)
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (16, 32)  # kv heads kept
        assert attn.num_key_value_groups == 1 and attn.head_dim == 8  # rotary sees the same head size
    assert_same_output(model, zero_heads(reference, removed), IDS)


def test_grouped_query_attention_with_larger_groups():
    model = tiny_llama(heads=8, kv_heads=2)
    reference = copy.deepcopy(model)
    removed = prune_heads(model, 0.5)
    for name, heads in removed.items():
        assert len([h for h in heads if h < 4]) == len([h for h in heads if h >= 4]) == 2
        attn = model.get_submodule(name)
        assert attn.q_proj.weight.shape == (16, 32) and attn.k_proj.weight.shape == (8, 32)
        assert attn.num_key_value_groups == 2
    assert_same_output(model, zero_heads(reference, removed), IDS)


def test_fused_interleaved_qkv_is_cut_per_head():
    model = tiny_neox()
    reference = copy.deepcopy(model)
    removed = prune_heads(model, 0.25)
    assert {len(h) for h in removed.values()} == {1}
    for name, heads in removed.items():
        attn, before = model.get_submodule(name), reference.get_submodule(name)
        assert attn.query_key_value.weight.shape == (72, 32) and attn.dense.weight.shape == (32, 24)
        kept = [h for h in range(4) if h not in heads]
        rows = [h * 24 + i for h in kept for i in range(24)]  # rows are [head, q|k|v, size]
        assert torch.equal(attn.query_key_value.weight, before.query_key_value.weight[rows])
    assert_same_output(model, zero_heads(reference, removed), IDS)


class RenamedAttention(nn.Module):
    """Attention under names no layout knows; its count and width live in its own attributes."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads, self.inner_dim = heads, dim
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, self.heads, -1).transpose(1, 2) for lin in (self.to_q, self.to_k, self.to_v))
        mixed = torch.softmax(q @ k.transpose(-1, -2) / 2, dim=-1) @ v
        return x + self.proj_out(mixed.transpose(1, 2).reshape(b, t, self.inner_dim))


def test_attention_with_unknown_names_is_found_by_structure():
    torch.manual_seed(0)
    model = nn.Sequential(RenamedAttention(), RenamedAttention())
    reference = copy.deepcopy(model)
    (module, layout), _ = attention_modules(model).values()
    assert (layout.family, layout.projections, layout.output) == ("structure", ("to_q", "to_k", "to_v"), "proj_out")
    removed = prune_heads(model, 0.5)
    assert {len(h) for h in removed.values()} == {2}
    assert model[0].heads == 2 and model[0].inner_dim == 8 and model[0].to_k.weight.shape == (8, 16)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    assert_same_output(model, zero_heads(reference, removed), x)


class FusedUnknown(nn.Module):
    """Attention-like (a head count, two Linear layers) with q/k/v fused under an unknown layout."""

    def __init__(self, dim=16):
        super().__init__()
        self.num_heads = 4
        self.mix, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.mix(x).chunk(3, dim=-1)
        return self.out(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


def test_unmappable_attention_is_named_in_one_line_before_anything_is_cut():
    model = nn.Sequential(nn.Linear(16, 16), FusedUnknown())
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(AttentionMapError) as error:
        prune_heads(model, 0.25)
    message = str(error.value)
    assert "\n" not in message and "module '1' (FusedUnknown)" in message and "head_ratio: 0" in message
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
