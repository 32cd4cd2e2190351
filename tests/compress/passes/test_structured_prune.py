"""structured_prune: channels physically removed, coupled layers consistent, ONNX parity kept."""

import copy

import numpy as np
import onnx
import pytest
import torch

from compress.core.errors import InputError, SelectionError
from compress.engine.context import Context
from compress.engine.metrics import count_params
from compress.engine.pipeline import run_pipeline
from compress.models.data import call_model, first_tensor, take_rows
from compress.models.evaluate import EVALUATORS
from compress.passes.structured_prune import PruneError, StructuredPruneConfig, structured_prune
from compress.recipe.schema import ParitySpec, load_recipe
from export.onnx.exporter import to_onnx
from export.onnx.runtime import make_session
from export.onnx.validate import validate
from tests.tiny_models import TINY_ARCHS, image_data, mlp, residual_cnn, vector_data
from tests.tolerances import FP32_EXPORT_ATOL


def stored_weights(path) -> int:
    """Elements of all initializers: what the ONNX file physically stores."""
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def prune(model, data, **params):
    ctx = Context(data, data.eval[0][0], copy.deepcopy(model), lambda m: 0.0)
    return structured_prune(model, StructuredPruneConfig(**params), ctx), ctx.facts


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_prunes_runs_exports_and_passes_parity(arch, tmp_path):
    factory, data_factory = TINY_ARCHS[arch]
    data = data_factory()
    # round_to 1: the tiny widths (8, 16) are not wider than a rounding multiple, so they would stay whole
    model, record = prune(factory(), data, ratio=0.5, head_ratio=0.5, round_to=1)  # head_ratio: where there are heads
    assert count_params(model) == record["params_after"] < 0.6 * record["params_before"]
    if arch == "tiny_gpt2":  # Torch-Pruning's counter skips Conv1D: no figure rather than a wrong one
        assert record["macs_before"] is None and record["macs_after"] is None
    else:
        assert record["macs_after"] < record["macs_before"]
    inputs = data.eval[0][0]
    assert first_tensor(call_model(model, inputs)).shape == first_tensor(call_model(factory(), inputs)).shape
    pruned = to_onnx(model, take_rows(inputs, 2), tmp_path / "pruned.onnx")
    dense = to_onnx(factory(), take_rows(inputs, 2), tmp_path / "dense.onnx")
    assert stored_weights(pruned.path) < 0.6 * stored_weights(dense.path)
    parity = ParitySpec(atol=FP32_EXPORT_ATOL[arch], min_cosine=0.9999)
    validate(model, make_session(pruned.path), [b[0] for b in data.eval], parity, classifier=True)


def test_kept_channels_are_sliced_exactly():
    original = mlp()
    model, record = prune(mlp(), vector_data(), ratio=0.5)
    removed = {i for name, out, idx in record["pruning_history"] if name == "fc1" and out for i in idx}
    kept = [i for i in range(32) if i not in removed]
    assert model.fc1.out_features == 16 == len(kept)
    assert torch.equal(model.fc1.weight, original.fc1.weight[kept])
    assert torch.equal(model.fc2.weight, original.fc2.weight[:, kept])


def test_output_layer_is_kept():
    model, _ = prune(mlp(), vector_data(), ratio=0.9)
    assert model.fc2.out_features == 4


def test_layer_ratios():
    model, _ = prune(mlp(), vector_data(), ratio=0.0, layer_ratios={"fc1": 0.75}, round_to=1)
    assert model.fc1.out_features == 8
    model, _ = prune(mlp(), vector_data(), ratio=0.0, layer_ratios={"fc1": 0.6}, round_to=8)
    assert model.fc1.out_features == 16  # int(32 * 0.4) = 12, rounded half up to 16


def test_macs_target_is_met():
    factory, data_factory = TINY_ARCHS["residual_cnn"]
    _, record = prune(factory(), data_factory(), macs_reduction=0.5, round_to=1)  # 8 channels: too few to round
    achieved = 1 - record["macs_after"] / record["macs_before"]
    assert 0.5 <= achieved <= 0.6


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "activation", "bn_scale", "random"])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_every_criterion_and_allocation_prunes_to_rounded_widths(importance, allocation):
    """24 channels cut by half keep 12, rounded to 16 by the default (8 or 16 alike); the rounded
    cut is re-ranked by each criterion."""
    params = dict(ratio=0.5, importance=importance, allocation=allocation)
    model, record = prune(residual_cnn(channels=24), image_data(), **params)
    assert record["params_after"] < record["params_before"]
    assert model.conv.out_channels == model.stem[0].out_channels == 16


def test_taylor_needs_labelled_batches():
    data = vector_data()
    data.calibration = [(b[0], b[0]) for b in data.eval]
    with pytest.raises(InputError, match="'taylor' needs labelled batches"):
        prune(mlp(), data, ratio=0.5, importance="taylor")


def test_iterative_steps_with_finetuning_reach_the_target_width():
    data = vector_data()
    model, record = prune(mlp(), data, ratio=0.5, steps=3, finetune_steps=4, finetune_lr=1e-3)
    assert model.fc1.out_features == 16
    assert sum(len(idx) for name, out, idx in record["pruning_history"] if name == "fc1" and out) == 16


class FixedReshape(torch.nn.Module):
    """Hard-codes a width after fc1, so pruning fc1 breaks the forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(12, 32), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.fc1(x).view(-1, 4, 8)).mean(1)


def test_layer_that_cannot_be_pruned_is_named_with_the_fix():
    with pytest.raises(PruneError, match=r"breaks 1 module\(s\): 'fc1' .*exclude: \['fc1'\]"):
        prune(FixedReshape(), vector_data(), ratio=0.5, auto_exclude=False)
    model, _ = prune(FixedReshape(), vector_data(), ratio=0.5, exclude=["fc1"], auto_exclude=False)
    assert model.fc1.out_features == 32
    model, record = prune(FixedReshape(), vector_data(), ratio=0.5)  # auto_exclude finds the same
    assert list(record["auto_excluded"]) == ["fc1"] and model.fc1.out_features == 32


def test_exclude_pattern_matching_nothing_is_an_error():
    with pytest.raises(SelectionError, match="structured_prune.exclude: pattern 'fc9'"):
        prune(mlp(), vector_data(), ratio=0.5, exclude=["fc9"])


def test_resume_replays_the_pruning(tmp_path):
    recipe = load_recipe({"passes": [{"pass": "structured_prune", "ratio": 0.5}]})
    data = vector_data()
    first = run_pipeline(mlp(), recipe, data, EVALUATORS["accuracy"], data.eval[0][0], tmp_path)
    second = run_pipeline(mlp(), recipe, data, EVALUATORS["accuracy"], data.eval[0][0], tmp_path)
    assert second.stages[-1].resumed
    assert second.model.fc1.out_features == 16
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())


def test_removed_share_grows_with_ratio_and_an_empty_group_is_refused():
    """Torch-Pruning skips a group it would empty, so 0.99 used to remove less than 0.9."""
    from compress.demo.digits import DigitsResNet

    x = torch.randn(2, 1, 8, 8)

    def params_after(ratio):  # round_to 1: exact widths, as Torch-Pruning alone would cut them
        model = DigitsResNet()
        config = StructuredPruneConfig(ratio=ratio, round_to=1)
        structured_prune(model, config, Context(None, x, copy.deepcopy(model), None))
        return count_params(model)

    assert params_after(0.5) == 121274
    assert params_after(0.9) == 4495
    assert params_after(0.9687) < 4495
    with pytest.raises(PruneError, match=r"ratio 0.97 would remove every channel of 2 group.*keeps one is 0.9687"):
        params_after(0.97)
