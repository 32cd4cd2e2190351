"""Activation-aware importance (Wanda-sp): measured input RMS, and channels or heads that carry nothing go
first even where their weights are the largest, so removing them leaves the output unchanged."""

import copy

import pytest
import torch

from compress.core.errors import InputError
from compress.models.data import TaskData, call_model, first_tensor
from compress.pruning.activation_importance import input_stats
from compress.pruning.attention import prune_heads
from compress.pruning.conv1d import is_conv1d
from tests.compress.passes.test_structured_prune import prune
from tests.tiny_models import TINY_ARCHS, mlp, tiny_bert_encoder, token_data, vector_data


def test_input_rms_and_mean_are_over_every_row_of_every_batch():
    model = mlp()
    batches = [(torch.randn(5, 12), None), (torch.randn(3, 12), None)]
    stats = input_stats(model, batches, count=2)
    rows = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(stats.rms[model.fc1], rows.pow(2).mean(0).sqrt())
    torch.testing.assert_close(stats.mean[model.fc1], rows.mean(0))
    hidden = torch.relu(model.fc1(rows))
    torch.testing.assert_close(stats.rms[model.fc2], hidden.pow(2).mean(0).sqrt())


def test_conv_input_rms_is_per_channel_over_batch_and_positions():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1, groups=2))
    x = torch.randn(2, 3, 6, 6)
    rms = input_stats(model, [(x, None)], count=1).rms
    torch.testing.assert_close(rms[model[0]], x.pow(2).mean((0, 2, 3)).sqrt())
    assert model[2] not in rms  # grouped: its input channels are not one group's consumers


def test_no_batches_is_a_clear_error():
    with pytest.raises(InputError, match="need calibration batches and found none"):
        input_stats(mlp(), [], count=4)


def dead_but_heavy(model, dead: list[int]):
    """fc1 neurons ``dead`` never fire (ReLU of a large negative bias) yet have the largest fc2 weights."""
    with torch.no_grad():
        model.fc1.bias[dead] = -1e3
        model.fc2.weight[:, dead] *= 100.0
    return model


@pytest.mark.parametrize("importance, loses_dead", [("activation", True), ("l2", False)])
def test_neurons_that_never_fire_go_first_and_the_output_is_unchanged(importance, loses_dead):
    data, dead = vector_data(), list(range(0, 32, 2))
    original = dead_but_heavy(mlp(), dead)
    model, record = prune(copy.deepcopy(original), data, ratio=0.5, round_to=1, importance=importance)
    removed = sorted(i for name, out, idx in record["pruning_history"] if name == "fc1" and out for i in idx)
    assert (removed == dead) is loses_dead
    if loses_dead:
        inputs = data.eval[0][0]
        torch.testing.assert_close(model(inputs), original(inputs), rtol=0, atol=1e-5)


def silent_head_bert():
    """A tiny BERT whose head 0 writes nothing in every layer but has the largest output weights."""
    torch.manual_seed(0)
    model = tiny_bert_encoder().eval()
    head_size = 8  # 32 hidden / 4 heads
    for layer in model.encoder.encoder.layer:
        value, output = layer.attention.self.value, layer.attention.output.dense
        with torch.no_grad():
            value.weight[:head_size] = 0.0  # head 0's context is zero, so it adds nothing to the block
            value.bias[:head_size] = 0.0
            output.weight[:, :head_size] *= 100.0  # while magnitude ranks it first
    return model


def test_a_head_that_writes_nothing_goes_first_despite_the_largest_output_weights():
    model, data = silent_head_bert(), token_data()
    inputs = data.eval[0][0]
    reference = model(**inputs)
    by_magnitude = prune_heads(copy.deepcopy(model), 0.25)
    rms = input_stats(model, data.eval, count=2).rms
    by_activation = prune_heads(model, 0.25, rms=rms)
    assert all(heads == [0] for heads in by_activation.values()) and len(by_activation) == 2
    assert all(heads != [0] for heads in by_magnitude.values())
    torch.testing.assert_close(model(**inputs), reference, rtol=0, atol=1e-5)


def test_flattened_consumer_and_the_pass_path_score_every_channel_of_the_root():
    """Conv -> flatten -> Linear: the Linear reads each conv channel at 4 positions; the scores must still
    be one per channel (a consumer-sized vector would point the cut past the conv's width)."""

    class FlattenHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.Linear(16 * 4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    model = FlattenHead()
    with torch.no_grad():
        model.conv.bias[:8] = -1e3  # channels 0-7 never fire
    batches = [(torch.randn(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    data = TaskData(eval=batches, calibration=batches)
    pruned, record = prune(model, data, ratio=0.5, round_to=1, importance="activation")
    removed = sorted(i for name, out, idx in record["pruning_history"] if name == "conv" and out for i in idx)
    assert removed == list(range(8)) and pruned.conv.out_channels == 8


def test_the_pass_removes_the_silent_head_of_every_layer():
    model, data = silent_head_bert(), token_data()
    _, record = prune(model, data, ratio=0.0, head_ratio=0.25, importance="activation")
    assert record["removed_heads"] and all(heads == [0] for heads in record["removed_heads"].values())


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_every_tiny_architecture_prunes_by_activation_and_still_runs(arch):
    factory, data_factory = TINY_ARCHS[arch]
    data = data_factory()
    model, record = prune(factory(), data, ratio=0.5, head_ratio=0.5, round_to=1, importance="activation")
    assert record["params_after"] < record["params_before"]
    inputs = data.eval[0][0]
    assert first_tensor(call_model(model, inputs)).shape == first_tensor(call_model(factory(), inputs)).shape
    if arch == "tiny_gpt2":  # GPT-2's Conv1D layers are measured like Linear ones
        assert any(is_conv1d(m) for m in input_stats(factory(), data.eval, count=1).rms)
