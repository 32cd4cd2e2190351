"""Per-head tensors (bias tables, bucket embeddings) found by structure and cut with their heads."""

import copy

import pytest
import torch

from compress.engine.context import Context
from compress.models.data import TaskData
from compress.passes.structured_prune import StructuredPruneConfig, restore, structured_prune
from compress.pruning.attention import attention_modules, prune_heads
from compress.pruning.head_tensors import cut_head_tensors, find_head_tensors, tied_groups

DIM, HEADS, TOKENS = 16, 4, 6


class Attention(torch.nn.Module):
    """Heads read by shape (``-1``), as transformers 5 does; an optional own table like Swin's."""

    def __init__(self, own_table_rows: int = 0):
        super().__init__()
        self.num_attention_heads, self.head_dim = HEADS, DIM // HEADS
        self.q_proj, self.k_proj = torch.nn.Linear(DIM, DIM), torch.nn.Linear(DIM, DIM)
        self.v_proj, self.o_proj = torch.nn.Linear(DIM, DIM), torch.nn.Linear(DIM, DIM)
        self.table = torch.nn.Parameter(torch.randn(own_table_rows, HEADS)) if own_table_rows else None
        index = torch.arange(TOKENS)[:, None] - torch.arange(TOKENS)[None, :] + TOKENS - 1
        self.register_buffer("index", index % max(own_table_rows, 1), persistent=False)

    def forward(self, x, position_bias=None):
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, -1, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5
        if self.table is not None:
            scores = scores + self.table[self.index].permute(2, 0, 1)
        if position_bias is not None:
            scores = scores + position_bias
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, -1)
        return x + self.o_proj(out)


class OwnTables(torch.nn.Module):
    """Each block its own (rows, heads) table; a 4-wide classifier that is not per head."""

    def __init__(self, rows=2 * TOKENS - 1):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Attention(rows) for _ in range(2))
        self.classifier = torch.nn.Linear(DIM, HEADS)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.classifier(x)


class SharedBuckets(torch.nn.Module):
    """One (buckets, heads) embedding on the encoder, its bias given to every block (MPNet, T5)."""

    def __init__(self, buckets=8):
        super().__init__()
        self.buckets = torch.nn.Embedding(buckets, HEADS)
        self.blocks = torch.nn.ModuleList(Attention() for _ in range(2))
        relative = torch.arange(TOKENS)[None, :] - torch.arange(TOKENS)[:, None]
        self.register_buffer("bucket", relative.clamp(-buckets // 2, buckets // 2 - 1) + buckets // 2, persistent=False)

    def forward(self, x):
        bias = self.buckets(self.bucket).permute(2, 0, 1).unsqueeze(0)  # [1, heads, q, k]
        for block in self.blocks:
            x = block(x, position_bias=bias)
        return x


def inputs():
    return torch.randn(2, TOKENS, DIM, generator=torch.Generator().manual_seed(1))


def model_of(cls, **kwargs):
    torch.manual_seed(0)
    return cls(**kwargs).eval()


def prune(model, head_ratio=0.25):
    per_head = find_head_tensors(model, inputs())
    removed = prune_heads(model, head_ratio, tied=tied_groups(per_head))
    return removed, cut_head_tensors(model, per_head, removed)


def with_heads_silenced(model, removed):
    """The unpruned model with the removed heads' output-projection columns zeroed: what pruning must equal."""
    silenced = copy.deepcopy(model)
    for name, heads in removed.items():
        o_proj = silenced.get_submodule(name).o_proj
        for h in heads:
            o_proj.weight.data[:, h * (DIM // HEADS) : (h + 1) * (DIM // HEADS)] = 0
    return silenced


def test_own_tables_are_found_per_block_and_not_the_classifier():
    found = find_head_tensors(model_of(OwnTables), inputs())
    assert [(t.name, t.dim, t.users) for t in found] == [
        ("blocks.0.table", 1, ("blocks.0",)),
        ("blocks.1.table", 1, ("blocks.1",)),
    ]
    assert tied_groups(found) == []


def test_shared_embedding_ties_the_blocks_reading_it():
    found = find_head_tensors(model_of(SharedBuckets), inputs())
    assert [(t.name, t.dim, t.users) for t in found] == [("buckets.weight", 1, ("blocks.0", "blocks.1"))]
    assert tied_groups(found) == [{"blocks.0", "blocks.1"}]


def test_head_dimension_is_told_apart_when_both_dimensions_are_head_wide():
    found = find_head_tensors(model_of(SharedBuckets, buckets=HEADS), inputs())
    assert [(t.name, t.dim) for t in found] == [("buckets.weight", 1)]
    found = find_head_tensors(model_of(OwnTables, rows=HEADS), inputs())
    assert {(t.name, t.dim) for t in found} == {("blocks.0.table", 1), ("blocks.1.table", 1)}


@pytest.mark.parametrize("cls", [OwnTables, SharedBuckets])
def test_pruned_model_equals_the_original_with_those_heads_silenced(cls):
    model = model_of(cls)
    original = copy.deepcopy(model)
    removed, record = prune(model)
    assert all(len(heads) == 1 for heads in removed.values()) and len(removed) == 2
    assert {block.num_attention_heads for block in model.blocks} == {HEADS - 1}
    for name, entry in record.items():
        assert model.get_parameter(name).shape[entry["dim"]] == HEADS - 1
    with torch.no_grad():
        torch.testing.assert_close(model(inputs()), with_heads_silenced(original, removed)(inputs()), atol=1e-6, rtol=0)


def test_shared_embedding_is_cut_once_with_the_same_heads_in_every_block():
    model = model_of(SharedBuckets)
    removed, record = prune(model, head_ratio=0.5)
    assert removed["blocks.0"] == removed["blocks.1"] and len(removed["blocks.0"]) == 2
    assert model.buckets.weight.shape == (8, 2) and model.buckets.embedding_dim == 2
    assert record == {"buckets.weight": {"dim": 1, "heads": removed["blocks.0"], "shared_by": ["blocks.0", "blocks.1"]}}


def test_tied_heads_are_ranked_by_scores_summed_over_the_blocks():
    model = model_of(SharedBuckets)
    for block, weakest in zip(model.blocks, (1, 2)):
        for p in (block.q_proj, block.k_proj, block.v_proj):
            p.weight.data[weakest * 4 : weakest * 4 + 4] *= 0.01  # one weak head per block...
    for p in (model.blocks[0].q_proj, model.blocks[0].k_proj, model.blocks[0].v_proj):
        p.weight.data[8:12] *= 0.01  # ...and head 2 weak in block 0 too: the lowest summed over both
    removed, _ = prune(model)
    assert removed == {"blocks.0": [2], "blocks.1": [2]}


def test_structured_prune_records_the_cut_and_restore_replays_it():
    model, x = model_of(SharedBuckets), inputs()
    ctx = Context(TaskData(eval=[(x, None)]), x, copy.deepcopy(model), None)
    pruned = structured_prune(model, StructuredPruneConfig(ratio=0.0, head_ratio=0.25), ctx)
    assert ctx.facts["head_tensors"]["buckets.weight"]["shared_by"] == ["blocks.0", "blocks.1"]
    fresh = restore(model_of(SharedBuckets), ctx.facts, x)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x), atol=0, rtol=0)
    assert set(attention_modules(fresh)) == {"blocks.0", "blocks.1"}
