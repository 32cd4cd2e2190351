"""plan_check through structured_prune: every layer whose cut breaks the model found in one go."""

import ast
import copy
import re

import pytest
import torch

from compress.engine.context import Context
from compress.models.data import TaskData
from compress.passes.structured_prune import PruneError, StructuredPruneConfig, structured_prune
from tests.tiny_models import TINY_ARCHS, mlp, vector_data


class PatchMerging(torch.nn.Module):
    """Swin's downsampling: four strided neighbours concatenated to 4C, LayerNorm(4C), Linear(4C -> 2C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(4 * channels)
        self.reduction = torch.nn.Linear(4 * channels, 2 * channels)

    def forward(self, x):  # (batch, height, width, channels)
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class Block(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(channels, 2 * channels), torch.nn.Linear(2 * channels, channels)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Hierarchical(torch.nn.Module):
    """Two stages, each a residual block followed by patch merging, like a tiny Swin."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(3, 8)
        self.stage1, self.merge1 = Block(8), PatchMerging(8)
        self.stage2, self.merge2 = Block(16), PatchMerging(16)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x):
        x = self.merge1(self.stage1(self.embed(x)))
        return self.head(self.merge2(self.stage2(x)).mean((1, 2)))


def hierarchical():
    torch.manual_seed(0)
    return Hierarchical()


def prune(model, **params):
    inputs = torch.randn(2, 8, 8, 3)
    ctx = Context(TaskData(eval=[(inputs, None)]), inputs, copy.deepcopy(model), None)
    params.setdefault("round_to", 1)  # exact widths: both stages are cut
    return structured_prune(model, StructuredPruneConfig(ratio=0.5, **params), ctx), ctx.facts


def exclude_from(error: PruneError) -> list[str]:
    return ast.literal_eval(re.search(r"exclude: (\[.*?\])", str(error)).group(1))  # as the user copies it


def test_the_plan_is_tried_with_the_real_rounding():
    """round_to 8 keeps the 8-wide first stage whole, so only the second patch merging breaks."""
    with pytest.raises(PruneError, match=r"breaks 1 module\(s\): 'merge2.norm' in PatchMerging") as error:
        prune(hierarchical(), round_to=8, auto_exclude=False)
    assert exclude_from(error.value) == ["merge1.reduction"]
    model, record = prune(hierarchical(), round_to=8)
    assert list(record["auto_excluded"]) == ["merge1.reduction"]
    assert model(torch.randn(2, 8, 8, 3)).shape == (2, 4)


def test_every_breaking_layer_is_listed_once_and_the_list_works():
    with pytest.raises(
        PruneError, match=r"breaks 2 module\(s\): 'merge1.norm' in PatchMerging .*'merge2.norm'"
    ) as info:
        prune(hierarchical(), auto_exclude=False)
    exclude = exclude_from(info.value)
    assert exclude == ["embed", "merge1.reduction"]  # the two residual streams feeding the merges
    model, record = prune(hierarchical(), auto_exclude=False, exclude=exclude)
    assert record["auto_excluded"] == {}
    assert model.stage1.fc1.out_features == 8 and model.stage2.fc1.out_features == 16  # blocks' inner widths still cut


def test_auto_exclude_passes_and_records_why(capsys):
    with pytest.raises(PruneError) as info:
        prune(hierarchical(), auto_exclude=False)
    model, record = prune(hierarchical())
    assert sorted(record["auto_excluded"]) == sorted(exclude_from(info.value))
    assert all("breaks 'merge" in reason and "PatchMerging" in reason for reason in record["auto_excluded"].values())
    assert "not pruning" in capsys.readouterr().err
    assert model(torch.randn(2, 8, 8, 3)).shape == (2, 4)
    assert record["params_after"] < record["params_before"]


@pytest.mark.parametrize("arch", ["mlp", "residual_cnn"])
def test_models_that_prune_cleanly_are_cut_as_before(arch):
    factory, data_factory = (mlp, vector_data) if arch == "mlp" else TINY_ARCHS[arch]
    data = data_factory()
    records = []
    for auto_exclude in (True, False):
        ctx = Context(data, data.eval[0][0], factory(), None)
        structured_prune(factory(), StructuredPruneConfig(ratio=0.5, round_to=1, auto_exclude=auto_exclude), ctx)
        records.append(ctx.facts)
    assert records[0]["auto_excluded"] == records[1]["auto_excluded"] == {}
    assert records[0]["widths"] == records[1]["widths"]
    assert records[0]["pruning_history"] == records[1]["pruning_history"]
    assert records[0]["params_after"] < records[0]["params_before"]  # a real cut, not two no-ops


def test_exclude_takes_a_norm_or_a_whole_block():
    for exclude in (["merge1.norm", "merge2.norm"], ["merge1", "merge2"]):
        model, _ = prune(hierarchical(), auto_exclude=False, exclude=exclude)
        assert model.merge1.norm.normalized_shape == (32,) and model.stage1.fc1.out_features == 8
