"""A cut that fails inside Torch-Pruning is named by the root layer of the group being cut, never '?'."""

from types import SimpleNamespace

import pytest
import torch

from compress.pruning import steps


class FailingGroup(list):
    def prune(self):
        raise AssertionError("boom")


def test_a_group_that_fails_to_cut_names_its_root_layer(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    group = FailingGroup([SimpleNamespace(dep=SimpleNamespace(target=SimpleNamespace(module=model[0])))])
    pruner = SimpleNamespace(step=lambda interactive: iter([group]))
    monkeypatch.setattr(steps, "round_group", lambda pruner, group, multiple: group)
    with pytest.raises(steps.PruneError, match=r"cannot prune module '0' \(AssertionError: boom\).*exclude: \['0'\]"):
        steps.cut_step(pruner, model, round_to=1)
