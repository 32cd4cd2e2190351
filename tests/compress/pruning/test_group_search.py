"""group_search: every Torch-Pruning group search is counted and bounded by the graph's size, so a
structured_prune on any model cuts or refuses; the work is in the pass record."""

import copy

import pytest
import torch
import torch_pruning as tp

from compress.engine.context import Context
from compress.models.data import TaskData
from compress.passes.structured_prune import PruneError, StructuredPruneConfig, structured_prune
from compress.pruning import group_search
from tests.tiny_decoders import tiny_decoder


def decoder_data():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (2, 8), generator=generator)
    batch = ({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids)
    return TaskData(eval=[batch], train=[batch], validation=[batch])


def prune(model, **params):
    data = decoder_data()
    ctx = Context(data, data.eval[0][0], copy.deepcopy(model), lambda m: 0.0)
    return structured_prune(model, StructuredPruneConfig(**params), ctx), ctx.facts


def test_a_decoder_prune_records_its_group_searches_within_the_bound():
    model, facts = prune(tiny_decoder("llama").eval(), ratio=0.3, head_ratio=0.25)
    work = facts["group_search"]
    assert work["searches"] > 10 and work["steps"] >= work["searches"]  # the plan check's copies and the cut
    assert 0 < work["worst_steps_per_node"] <= group_search.STEPS_PER_NODE == work["bound"]
    assert tp.DependencyGraph.get_pruning_group.__name__ == "get_pruning_group"  # the patch is undone
    assert tp.DependencyGraph.get_pruning_group.__qualname__.startswith("DependencyGraph")


def test_a_search_past_its_bound_stops_naming_its_root_and_the_slow_step(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    monkeypatch.setattr(group_search, "STEPS_PER_NODE", 0.01)  # under one step: every search passes it
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(2, 8))
    with pytest.raises(group_search.GroupSearchTooLong) as raised, group_search.bounded():
        list(graph.get_all_groups(root_module_types=[torch.nn.Linear]))  # a generator: searches as it yields
    assert isinstance(raised.value.module, torch.nn.Linear)
    assert "Torch-Pruning's group search (DependencyGraph.get_pruning_group) took over" in str(raised.value)


def test_the_pass_refuses_in_one_line_with_the_slow_step_when_searches_pass_the_bound(monkeypatch):
    monkeypatch.setattr(group_search, "STEPS_PER_NODE", 0.01)
    with pytest.raises(PruneError) as raised:
        prune(tiny_decoder("llama").eval(), ratio=0.3)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("structured_prune: ")
    assert "DependencyGraph.get_pruning_group" in message and "model.layers." in message
