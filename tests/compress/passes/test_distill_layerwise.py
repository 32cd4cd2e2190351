"""Layer-wise distillation through the distill pass on tiny BERT encoders: the map, the record, the
structure kept, hidden states pulled closer than by the output loss alone, and resume."""

import copy

import pytest
import torch
import torch.nn.functional as F

from compress.core.errors import InputError
from compress.engine.context import Context
from compress.passes.distill import DistillConfig, distill
from tests.compress.passes.test_distill import run_distill


def bert_encoder(layers=2, seed=0, hidden=32):
    """A tiny BERT sentence encoder without dropout, so runs compare exactly."""
    from transformers import BertConfig, BertModel

    from compress.models.hf import SentenceEncoder

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()


def head_pruned(model, keep_layers=None, noise=0.1):
    """``model`` with one head of four removed in every block (and only ``keep_layers`` kept), perturbed."""
    from compress.pruning.attention import remove_heads

    student = copy.deepcopy(model)
    blocks = student.encoder.encoder.layer
    if keep_layers is not None:
        student.encoder.encoder.layer = blocks = torch.nn.ModuleList(blocks[i] for i in keep_layers)
        student.encoder.config.num_hidden_layers = len(keep_layers)
    for i in range(len(blocks)):
        remove_heads(student, f"encoder.encoder.layer.{i}.attention.self", [1])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise)
    return student


def block_distance(student, teacher, mapping, data):
    """Mean MSE between each student block's output and its mapped teacher block's, over the eval batches."""
    from compress.training.feature_distill import taps

    names = [f"encoder.encoder.layer.{i}" for i in range(len(mapping))]
    teacher_names = [f"encoder.encoder.layer.{t}" for t in mapping]
    total = 0.0
    with torch.no_grad():
        for inputs, _ in data.eval:
            with taps(student, names, "s") as s, taps(teacher, teacher_names, "t") as t:
                student(**inputs), teacher(**inputs)
            total += sum(F.mse_loss(s[a], t[b]).item() for a, b in zip(names, teacher_names)) / len(names)
    return total / len(data.eval)


LAYERWISE_RUN = {"loss": "embedding_mse", "epochs": 15, "lr": 3e-3, "warmup_ratio": 0.0}


def test_head_pruned_bert_gets_the_one_to_one_map_recorded_and_keeps_its_structure():
    from tests.tiny_models import token_data

    teacher, data = bert_encoder(), token_data()
    student = head_pruned(teacher)
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    student, record = run_distill(student, teacher, data, lambda m, split="eval": 0.0, epochs=1)
    assert record["layer_map"] == [0, 1]
    assert record["layerwise"] == {
        "blocks": "encoder.encoder.layer",
        "map_source": "one_to_one",
        "hidden_weight": 1.0,
        "relation_weight": 0.1,
        "relation_heads": 2,  # at most the student's 3 heads, dividing its 24-wide q/k/v and the teacher's 32
        "relation_blocks": 2,
    }
    assert {k: v.shape for k, v in student.state_dict().items()} == shapes
    assert not any(m._forward_hooks for m in student.modules())


@pytest.mark.parametrize(("history", "expected"), [([], [1, 3]), ([{"kept_layers": [0, 2]}], [0, 2])])
def test_a_student_of_half_the_depth_is_mapped_uniformly_or_by_the_kept_layers(history, expected):
    from tests.tiny_models import token_data

    teacher, data = bert_encoder(layers=4), token_data()
    student = head_pruned(teacher, keep_layers=[1, 3])
    ctx = Context(data, data.eval[0][0], teacher, lambda m, split="eval": 0.0)
    ctx.history = history
    distill(student, DistillConfig(epochs=1, loss="embedding_mse"), ctx)
    assert ctx.facts["layer_map"] == expected
    assert ctx.facts["layerwise"]["map_source"] == ("kept_layers" if history else "uniform")


def test_layerwise_loss_trains_and_brings_hidden_states_closer_than_the_output_loss_alone():
    from tests.tiny_models import token_data

    teacher, data = bert_encoder(layers=4), token_data()
    student = head_pruned(teacher, keep_layers=[1, 3])
    before = block_distance(student, teacher, [1, 3], data)
    runs = {}
    for mode in ("on", "off"):
        torch.manual_seed(0)
        trained, record = run_distill(
            copy.deepcopy(student), teacher, data, lambda m, split="eval": 0.0, layerwise=mode, **LAYERWISE_RUN
        )
        runs[mode] = (block_distance(trained, teacher, [1, 3], data), record)
    layerwise, output_only = runs["on"][0], runs["off"][0]
    losses = [e["loss"] for e in runs["on"][1]["epochs"]]
    assert runs["on"][1]["steps"] == 45 and losses[-1] < 0.5 * losses[0]
    assert layerwise < 0.5 * before
    assert layerwise < 0.5 * output_only


def test_off_is_the_output_loss_alone():
    """``off`` runs exactly what a pass without layer-wise losses ran: the same weights as zero weights."""
    from tests.tiny_models import token_data

    teacher, data = bert_encoder(), token_data()
    student = head_pruned(teacher)
    trained = {}
    for name, params in {"off": {"layerwise": "off"}, "zero": {"hidden_weight": 0.0, "relation_weight": 0.0}}.items():
        torch.manual_seed(0)
        model, record = run_distill(
            copy.deepcopy(student), teacher, data, lambda m, split="eval": 0.0, **params, **LAYERWISE_RUN
        )
        trained[name] = model.state_dict()
    assert record["layerwise"]["relation_blocks"] == 0 and record["layerwise"]["hidden_weight"] == 0.0
    assert all(torch.equal(v, trained["zero"][k]) for k, v in trained["off"].items())


def test_cnns_keep_the_output_loss_only():
    from tests.tiny_models import image_data, residual_cnn

    data, teacher = image_data(), residual_cnn()
    trained = {}
    for mode in ("auto", "off"):
        student = residual_cnn()
        with torch.no_grad():
            student.conv.weight.mul_(-1)
        torch.manual_seed(0)
        model, record = run_distill(
            student, teacher, data, lambda m, split="eval": 0.0, layerwise=mode, epochs=3, loss="embedding_mse"
        )
        trained[mode] = model.state_dict()
    assert record["layer_map"] is None
    assert all(torch.equal(v, trained["off"][k]) for k, v in trained["auto"].items())
    with pytest.raises(InputError, match="no repeated blocks"):
        run_distill(residual_cnn(), teacher, data, layerwise="on", epochs=1, loss="embedding_mse")


def test_interrupted_layerwise_distillation_continues_where_it_stopped(tmp_path):
    from tests.tiny_models import token_data

    teacher, data = bert_encoder(layers=4), token_data()
    student = head_pruned(teacher, keep_layers=[1, 3])
    params = DistillConfig(epochs=3, loss="embedding_mse", lr=3e-3, warmup_ratio=0.0)

    def run(scratch, evaluate):
        ctx = Context(data, data.eval[0][0], teacher, evaluate, scratch_dir=scratch)
        return distill(copy.deepcopy(student), params, ctx)

    calls = []

    def interrupt_in_epoch_two(model, split="eval"):
        calls.append(split)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "scratch", interrupt_in_epoch_two)
    resumed = run(tmp_path / "scratch", lambda m, split="eval": 0.0)
    uninterrupted = run(None, lambda m, split="eval": 0.0)
    assert all(torch.equal(v, uninterrupted.state_dict()[k]) for k, v in resumed.state_dict().items())
