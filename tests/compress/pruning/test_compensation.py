"""Bias compensation: a removed channel or head whose output is constant on the data leaves the model's
output unchanged once its mean is folded into the next layer's bias; without it, the output moves."""

import copy

import pytest
import torch

from compress.pruning.activation_importance import input_stats
from compress.pruning.attention import prune_heads
from tests.compress.passes.test_structured_prune import prune
from tests.tiny_models import mlp, tiny_bert_encoder, token_data, vector_data


def constant_neurons(model, neurons: list[int]):
    """fc1 neurons ``neurons`` output ReLU(3) = 3 whatever the input; their fc2 weights are the smallest."""
    with torch.no_grad():
        model.fc1.weight[neurons] = 0.0
        model.fc1.bias[neurons] = 3.0
        model.fc2.weight[:, neurons] *= 0.1
    return model


@pytest.mark.parametrize("compensate", [True, False])
def test_cut_neurons_with_a_constant_output_leave_the_model_unchanged_when_compensated(compensate):
    data, neurons = vector_data(), list(range(1, 32, 2))
    original = constant_neurons(mlp(), neurons)
    model, record = prune(copy.deepcopy(original), data, ratio=0.5, round_to=1, compensate=compensate)
    removed = sorted(i for name, out, idx in record["pruning_history"] if name == "fc1" and out for i in idx)
    assert removed == neurons
    inputs = data.eval[0][0]
    gap = (model(inputs) - original(inputs)).abs().max().item()
    assert gap < 1e-5 if compensate else gap > 1e-2


def constant_head_bert():
    """Head 0 of every layer attends to values that are its bias alone: its context is the same everywhere."""
    torch.manual_seed(0)
    model = tiny_bert_encoder().eval()
    for layer in model.encoder.encoder.layer:
        with torch.no_grad():
            layer.attention.self.value.weight[:8] = 0.0
            layer.attention.self.value.bias[:8] = torch.linspace(-1.0, 1.0, 8)
    return model


@pytest.mark.parametrize("compensate", [True, False])
def test_a_removed_head_with_a_constant_context_is_kept_as_bias(compensate):
    model, data = constant_head_bert(), token_data()
    inputs = data.eval[0][0]
    reference = model(**inputs)
    stats = input_stats(model, data.eval, count=3)
    rms = {layer: value.clone() for layer, value in stats.rms.items()}
    for layer in model.encoder.encoder.layer:
        rms[layer.attention.output.dense][:8] = 0.0  # rank head 0 last, to cut it
    removed = prune_heads(model, 0.25, rms=rms, mean=stats.mean if compensate else None)
    assert all(heads == [0] for heads in removed.values()) and len(removed) == 2
    gap = (model(**inputs) - reference).abs().max().item()
    assert gap < 1e-5 if compensate else gap > 1e-2
