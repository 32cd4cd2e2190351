"""layerwise: blocks found by structure, the layer map, and the relation loss's arithmetic."""

import math

import pytest
import torch
import torch.nn.functional as F

from compress.core.errors import InputError
from compress.training.layerwise import choose, find_blocks, layer_map, plan, relation_loss
from tests.tiny_models import residual_cnn, tiny_bert, tiny_gpt2, tiny_transformer


def test_blocks_are_the_largest_module_list_of_one_class():
    assert find_blocks(tiny_bert()) == "encoder.encoder.layer"
    assert find_blocks(tiny_gpt2()) == "transformer.h"
    assert find_blocks(tiny_transformer()) == "blocks"
    assert find_blocks(residual_cnn()) is None


def test_map_is_one_to_one_for_equal_depth_and_uniform_when_depth_differs():
    assert layer_map(2, 2, []) == ([0, 1], "one_to_one")
    assert layer_map(2, 4, []) == ([1, 3], "uniform")
    assert layer_map(3, 12, []) == ([3, 7, 11], "uniform")
    assert layer_map(4, 6, []) == ([1, 2, 4, 5], "uniform")  # halves round up, not to even


def test_kept_layers_of_the_latest_record_are_the_map():
    history = [{"kept_layers": [0, 1]}, {"removed_heads": {}}, {"kept_layers": [0, 2]}, {"steps": 4}]
    assert layer_map(2, 4, history) == ([0, 2], "kept_layers")
    with pytest.raises(InputError, match=r"recorded kept_layers \[0, 2\], but the student has 3 blocks"):
        layer_map(3, 4, history)
    with pytest.raises(InputError, match="the teacher 2"):
        layer_map(2, 2, history)


def test_kept_layers_of_another_block_list_or_teacher_are_not_the_map():
    """layer_drop on a decoder, or from a deeper model than this teacher: its indices do not apply here."""
    history = [{"kept_layers": [0, 2], "blocks": "decoder.block", "teacher_depth": 4}]
    assert layer_map(2, 4, history, "encoder.block") == ([1, 3], "uniform")
    assert layer_map(2, 4, history, "decoder.block") == ([0, 2], "kept_layers")
    deeper = [{"kept_layers": [0, 2], "blocks": "layers", "teacher_depth": 12}]
    assert layer_map(2, 4, deeper, "layers") == ([1, 3], "uniform")


def test_plan_taps_qkv_of_mapped_blocks_and_weighs_hidden_states_as_a_mean():
    layers = plan(tiny_bert(), tiny_bert(), [], hidden_weight=1.0, relation_weight=0.1)
    assert layers.layer_map == [0, 1] and layers.blocks == "encoder.encoder.layer"
    assert [(m.student, m.teacher, m.weight) for m in layers.hidden] == [
        ("encoder.encoder.layer.0", "encoder.encoder.layer.0", 0.5),
        ("encoder.encoder.layer.1", "encoder.encoder.layer.1", 0.5),
    ]
    assert layers.attention[1].teacher == [
        f"encoder.encoder.layer.1.attention.self.{p}" for p in ("query", "key", "value")
    ]
    assert layers.relation_heads == 4
    fused = plan(tiny_gpt2(), tiny_gpt2(), [], 1.0, 0.1)
    assert fused.attention[0].student == ["transformer.h.0.attn.c_attn"]


def test_no_blocks_in_both_models_is_an_input_error_when_asked_for_and_off_in_auto():
    with pytest.raises(InputError, match="no repeated blocks"):
        choose("on", residual_cnn(), residual_cnn(), [], (1.0, 0.1), False)
    assert choose("auto", residual_cnn(), residual_cnn(), [], (1.0, 0.1), False) == (
        None,
        "no repeated blocks found in both models",
    )
    assert choose("auto", tiny_bert(), tiny_bert(), [], (1.0, 0.1), False)[0] is None  # unpruned
    assert choose("auto", tiny_bert(), tiny_bert(), [], (1.0, 0.1), True) == (None, "features are named by hand")


def test_relation_loss_is_kl_of_scaled_dot_product_softmax_over_relation_heads():
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(2, 5, 12, generator=g) for _ in range(3)]
    student = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]  # fewer heads: narrower

    def relations(x, heads):
        x = x.view(2, 5, heads, -1).transpose(1, 2)
        return F.softmax(x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1]), -1)

    expected = (
        sum(
            (relations(t, 4) * (relations(t, 4).log() - relations(s, 4).log())).sum(-1).mean()
            for s, t in zip(student, teacher)
        )
        / 3
    )
    torch.testing.assert_close(relation_loss(student, teacher, 4, None), expected)
    assert float(relation_loss(teacher, teacher, 4, None)) == pytest.approx(0.0, abs=1e-6)


def test_padded_tokens_neither_attend_nor_count():
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(1, 4, 8, generator=g) for _ in range(3)]
    student = [torch.randn(1, 4, 8, generator=g) for _ in range(3)]
    mask = torch.tensor([[True, True, True, False]])
    changed = [s.clone() for s in student]
    for s in changed:
        s[:, -1] = 100.0  # the padded token's features cannot matter
    masked = relation_loss(student, teacher, 2, mask)
    torch.testing.assert_close(relation_loss(changed, teacher, 2, mask), masked)
    unpadded = relation_loss([s[:, :3] for s in student], [t[:, :3] for t in teacher], 2, None)
    torch.testing.assert_close(masked, unpadded)
