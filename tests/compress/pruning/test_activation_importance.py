"""Activation-aware importance (Wanda-sp): measured input RMS, and channels or heads that carry nothing go
first even where their weights are the largest, so removing them leaves the output unchanged."""

import copy

import pytest
import torch

from compress.errors import InputError
from compress.pruning.activation_importance import input_rms
from compress.pruning.attention import prune_heads
from tests.compress.passes.test_structured_prune import prune
from tests.tiny_models import mlp, tiny_bert_encoder, token_data, vector_data


def test_input_rms_is_the_root_mean_square_over_every_row_of_every_batch():
    model = mlp()
    batches = [(torch.randn(5, 12), None), (torch.randn(3, 12), None)]
    rms = input_rms(model, batches, count=2)
    rows = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(rms[model.fc1], rows.pow(2).mean(0).sqrt())
    hidden = torch.relu(model.fc1(rows))
    torch.testing.assert_close(rms[model.fc2], hidden.pow(2).mean(0).sqrt())


def test_no_batches_is_a_clear_error():
    with pytest.raises(InputError, match="'activation' found no batches"):
        input_rms(mlp(), [], count=4)


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


def test_a_head_that_writes_nothing_goes_first_despite_the_largest_output_weights():
    torch.manual_seed(0)
    model, data = tiny_bert_encoder().eval(), token_data()
    head_size = 8  # 32 hidden / 4 heads
    for layer in model.encoder.encoder.layer:
        value, output = layer.attention.self.value, layer.attention.output.dense
        with torch.no_grad():
            value.weight[:head_size] = 0.0  # head 0's context is zero, so it adds nothing to the block
            value.bias[:head_size] = 0.0
            output.weight[:, :head_size] *= 100.0  # while magnitude ranks it first
    inputs = data.eval[0][0]
    reference = model(**inputs)
    by_magnitude = prune_heads(copy.deepcopy(model), 0.25)
    rms = input_rms(model, data.eval, count=2)
    by_activation = prune_heads(model, 0.25, rms=rms)
    assert all(heads == [0] for heads in by_activation.values()) and len(by_activation) == 2
    assert all(heads != [0] for heads in by_magnitude.values())
    torch.testing.assert_close(model(**inputs), reference, rtol=0, atol=1e-5)
